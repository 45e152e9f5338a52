"""`python -m copd.merge` under faults: corrupt inputs, a full disk, a SIGKILL. Each gives one clear line (or, when
killed, nothing), a non-zero exit, no traceback and nothing at the output path; a rerun after a kill merges."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
ENV = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 2279372040\n"
)
# the CLI in a subprocess; SLOW merges in 1K-element chunks so that a test can act while the merge runs
SLOW = "import sys, copd.merge as M; M.CHUNK_NUMEL = 1024; sys.exit(M.main(sys.argv[1:]))"


def make_input(folder: Path, seed: int, numel: int = 1 << 20, shards: int = 2) -> Path:
    """A bf16 checkpoint of `shards` files with an index and a config, `numel` parameters per shard."""
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {f"layer{i}.w{j}": torch.randn(numel // 4, generator=g).bfloat16() for j in range(4)}
        save_file(tensors, folder / name, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(tensors, name)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"architectures": ["Toy"], "model_type": "toy"}))
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("inputs")
    return make_input(root / "a", 0), make_input(root / "b", 1)


def cli(*args: str, code: str | None = None, **popen) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "copd.merge", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120, **popen)


def assert_clean_failure(done: subprocess.CompletedProcess, out: Path, rc: int, *words: str) -> None:
    """Exit code rc, one line on stderr naming the words, no traceback, nothing at (or beside) the output."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == rc, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert not out.exists() and not [p.name for p in out.parent.iterdir() if p.name.startswith(out.name + ".")]


# ---------------------------------------------------------------- corrupt inputs: exit 2, one line, nothing written
def _garbage_header(a: Path) -> Path:
    (a / "model-00001-of-00002.safetensors").write_bytes(os.urandom(4096))
    return a / "model-00001-of-00002.safetensors"


def _not_json_header(a: Path) -> Path:
    (a / "model-00002-of-00002.safetensors").write_bytes((64).to_bytes(8, "little") + b"\xff" * 64 + b"\0" * 64)
    return a / "model-00002-of-00002.safetensors"


def _lfs_single(a: Path) -> Path:
    for p in a.glob("model*"):
        p.unlink()
    (a / "model.safetensors").write_text(LFS_POINTER)
    return a / "model.safetensors"


def _lfs_shard(a: Path) -> Path:
    (a / "model-00001-of-00002.safetensors").write_text(LFS_POINTER)
    return a / "model-00001-of-00002.safetensors"


def _index_not_json(a: Path) -> Path:
    (a / "model.safetensors.index.json").write_text('{"weight_map": {"layer0.w0": "model-00001-of-0')
    return a / "model.safetensors.index.json"


def _index_without_map(a: Path) -> Path:
    (a / "model.safetensors.index.json").write_text('{"metadata": {}}')
    return a / "model.safetensors.index.json"


def _truncated(a: Path) -> Path:
    path = a / "model-00002-of-00002.safetensors"
    os.truncate(path, path.stat().st_size // 2)
    return path


def _empty_file(a: Path) -> Path:
    (a / "model-00002-of-00002.safetensors").write_bytes(b"")
    return a / "model-00002-of-00002.safetensors"


def _bad_offsets(a: Path) -> Path:
    path = a / "model-00001-of-00002.safetensors"
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    header["layer0.w1"]["data_offsets"][1] += 2  # one element too many for its shape
    blob = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    assert len(blob) == n
    path.write_bytes(raw[:8] + blob + raw[8 + n :])
    return path


def _config_not_json(a: Path) -> Path:
    (a / "config.json").write_text("{'architectures': ['Toy']")
    return a / "config.json"


BAD_INPUTS = {
    "garbage header": (_garbage_header, "re-save or re-download"),
    "header not JSON": (_not_json_header, "not JSON"),
    "LFS pointer as model.safetensors": (_lfs_single, "git lfs pull"),
    "LFS pointer as a shard": (_lfs_shard, "git lfs pull"),
    "index not JSON": (_index_not_json, "is not valid JSON"),
    "index without weight_map": (_index_without_map, "has no weight_map"),
    "truncated shard": (_truncated, "is truncated"),
    "empty shard": (_empty_file, "shorter than the 8-byte header length"),
    "offsets do not match the shape": (_bad_offsets, "data_offsets"),
    "config not JSON": (_config_not_json, "is not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_corrupt_input_gives_one_line_and_exit_2(inputs, tmp_path, case):
    a, b = inputs
    shutil.copytree(b, tmp_path / "bad")
    corrupt, fix = BAD_INPUTS[case]
    path = corrupt(tmp_path / "bad")
    out = tmp_path / "out"
    done = cli("--no-progress", "--output", str(out), str(a), str(tmp_path / "bad"))
    assert_clean_failure(done, out, 2, str(path), fix)


# ---------------------------------------------------------------- a full disk: exit 1, one line, temp folder removed
INJECT = """
import errno, os, sys
import copd.merge as M
calls, real = [0], getattr(os, {target!r})
def failing(*args):
    calls[0] += 1
    if calls[0] > {after}:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(*args)
setattr(os, {target!r}, failing)
M.CHUNK_NUMEL = 1 << 14
sys.exit(M.main(sys.argv[1:]))
"""


@pytest.mark.parametrize(("target", "after"), [("pwrite", 0), ("pwrite", 100), ("fdatasync", 0), ("fdatasync", 1)],
                         ids=["first write", "mid-shard write", "fdatasync of a shard", "fdatasync later"])  # fmt: skip
def test_enospc_injected_gives_one_line_and_no_output(inputs, tmp_path, target, after):
    out = tmp_path / "out"
    code = INJECT.format(target=target, after=after)
    done = cli("--no-progress", "--shard-size", "1MB", "--output", str(out), *map(str, inputs), code=code)
    assert_clean_failure(done, out, 1, "no space left on the device", "nothing written")


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MB tmpfs (root only; skipped where mounting is not allowed)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill_disk(path: Path) -> None:
    """Take every byte left on path's file system. Unbuffered: a buffered writer keeps the bytes that did not fit and
    its close() raises ENOSPC again."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        while True:
            try:
                if os.write(fd, b"\0" * (1 << 16)) == 0:
                    break
            except OSError:
                break
    finally:
        os.close(fd)


def test_disk_too_small_is_refused_before_writing(inputs, small_disk):
    out = small_disk / "out"  # the merge needs 4.2 MB of 6; fill 3 first
    (small_disk / "other.bin").write_bytes(b"\0" * (3 << 20))
    done = cli("--no-progress", "--output", str(out), *map(str, inputs))
    assert_clean_failure(done, out, 2, "MB free, the merge needs", "free space or pass another --output")


def test_disk_filling_during_the_merge(inputs, small_disk):
    """Another writer takes the free space while the (slowed) merge runs: a real ENOSPC from the kernel."""
    out = small_disk / "out"
    proc = subprocess.Popen([sys.executable, "-c", SLOW, "--no-progress", "--threads", "1", "--output", str(out),
                             *map(str, inputs)], stderr=subprocess.PIPE, text=True, env=ENV)  # fmt: skip
    shard = small_disk / f"out.tmp-{proc.pid}" / "model.safetensors"
    deadline = time.time() + 60
    while not (shard.exists() and shard.stat().st_size > 1 << 16) and time.time() < deadline:
        time.sleep(0.005)
    fill_disk(small_disk / "filler.bin")
    _, stderr = proc.communicate(timeout=120)
    (small_disk / "filler.bin").unlink()
    assert_clean_failure(subprocess.CompletedProcess([], proc.returncode, "", stderr), out, 1, "no space left")


# ---------------------------------------------------------------- SIGKILL: never a half-written output; reruns merge
def _wait_for(check, timeout: float = 60.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return True
        time.sleep(0.002)
    return False


@pytest.mark.parametrize("when", ["temp folder made", "shard half written", "shard written"])
def test_sigkill_mid_merge_then_rerun(inputs, tmp_path, when):
    out = tmp_path / "out"
    args = ["--no-progress", "--threads", "1", "--shard-size", "3MB", "--output", str(out), *map(str, inputs)]
    reference = tmp_path / "reference"
    assert cli(*args[:-3], str(reference), *args[-2:]).returncode == 0
    final = (reference / "model-00001-of-00002.safetensors").stat().st_size
    proc = subprocess.Popen([sys.executable, "-c", SLOW, *args], stderr=subprocess.DEVNULL, env=ENV)
    shard = tmp_path / f"out.tmp-{proc.pid}" / "model-00001-of-00002.safetensors"
    size = {"temp folder made": -1, "shard half written": final // 2, "shard written": final - 1}[when]
    assert _wait_for(lambda: shard.parent.exists() and (shard.exists() and shard.stat().st_size > size or size < 0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists(), "a killed merge left something at the output path"
    assert (tmp_path / f"out.tmp-{proc.pid}").exists()  # the killed run's temp folder, for the rerun to clear
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "reference"]  # stale temp folder removed
    files = sorted(p.name for p in reference.iterdir())
    assert files == sorted(p.name for p in out.iterdir())
    assert all((out / f).read_bytes() == (reference / f).read_bytes() for f in files)
