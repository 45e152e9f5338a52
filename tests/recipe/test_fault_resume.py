"""Faults in a running job, survived: a branch's Ray worker SIGKILLed mid-run, and a final merge that never finished.

1. Once checkpoint 2 is complete, one branch's rollout server (`ray::HFServer`) is SIGKILLed: the driver stops
   within seconds with one line naming the branch and the role, exits non-zero, leaves no process behind, and
   `trainer.resume_mode=auto` ends with merged weights bitwise equal to an uninterrupted run's.
2. A finished run whose merge output is gone (a kill during the final export + merge): resuming it exports and
   merges again from the final checkpoint, without training, to the same weights.

Same standard as test_kill_resume.py (full_determinism, CPU). Slow: four recipe runs.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

RUN = [
    "copd.n_cycles=1",
    "copd.s_rl=2",
    "copd.s_opd=2",  # steps 1-2 Phase I, 3-4 Phase II
    "trainer.save_freq=1",
    "actor_rollout_ref.rollout.full_determinism=true",
    "copd.run.validate_merged=false",
]
KILL_AFTER_CHECKPOINT = 2


def _cmd(workdir: Path, tiny: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "recipe.copd.main", f"copd.run.toy.workdir={workdir}", *tiny, *RUN, *extra]


def _env(workdir: Path, tag: str) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", VERL_FILE_LOGGER_ROOT=str(workdir / "tracking"), COPD_TEST_RUN=tag)


def _tagged(tag: str, needle: str = "") -> list[int]:
    """Live processes whose environment carries ``COPD_TEST_RUN=tag`` (and whose command line has ``needle``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"COPD_TEST_RUN={tag}".encode() in (entry / "environ").read_bytes():
                if needle.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _merged(workdir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(workdir / "run" / "merged" / "model.safetensors"))


def _assert_same(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"merged weights differ after {what}: {differ[:3]}"


def _resume(workdir: Path, tiny: list[str]) -> subprocess.CompletedProcess:
    tag = uuid.uuid4().hex
    return subprocess.run(
        _cmd(workdir, tiny, "trainer.resume_mode=auto"),
        cwd=ROOT, env=_env(workdir, tag), capture_output=True, text=True, timeout=900,
    )  # fmt: skip


@pytest.fixture(scope="module")
def straight(tmp_path_factory, toy_cache, tiny_overrides) -> Path:
    work = tmp_path_factory.mktemp("straight") / "w"
    shutil.copytree(toy_cache, work)
    proc = subprocess.run(
        _cmd(work, tiny_overrides), cwd=ROOT, env=_env(work, uuid.uuid4().hex),
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


def test_worker_sigkill_stops_with_one_line_then_resume_is_bitwise(straight, tmp_path, toy_workdir, tiny_overrides):
    work, tag = toy_workdir(tmp_path / "killed"), uuid.uuid4().hex
    tracker = work / "run" / "latest_checkpointed_iteration.txt"
    log = tmp_path / "killed.err"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            _cmd(work, tiny_overrides), cwd=ROOT, env=_env(work, tag), stdout=subprocess.DEVNULL, stderr=err,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.time() + 900
            while time.time() < deadline and proc.poll() is None:
                if tracker.exists() and tracker.read_text().strip() == str(KILL_AFTER_CHECKPOINT):
                    break
                time.sleep(0.05)
            assert proc.poll() is None, f"the run ended before checkpoint {KILL_AFTER_CHECKPOINT}: {log}"
            servers = _tagged(tag, "ray::HFServer")
            assert len(servers) == 2, f"expected one rollout server per branch, found {servers}"
            os.kill(servers[-1], signal.SIGKILL)
            killed_at = time.time()
            rc = proc.wait(timeout=300)
            stopped_s = time.time() - killed_at
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    lines = log.read_text().strip().splitlines()
    assert rc != 0
    assert lines[-1].startswith("copd: error: branch ") and "rollout server died" in lines[-1], lines[-5:]
    assert "Traceback" not in "\n".join(lines[-3:])
    assert stopped_s < 60, f"the driver took {stopped_s:.0f}s to stop after the kill"
    time.sleep(2)
    assert not _tagged(tag), "processes of the failed run outlived it"
    assert not (work / "run" / "copd.lock").exists()
    print(f"driver stopped {stopped_s:.1f}s after the kill: {lines[-1]}")

    proc = _resume(work, tiny_overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"[copd] step {KILL_AFTER_CHECKPOINT + 1}/4" in proc.stdout
    assert f"[copd] step {KILL_AFTER_CHECKPOINT}/" not in proc.stdout
    _assert_same(_merged(straight), _merged(work), "a worker kill + resume")


def test_resume_after_a_killed_final_merge_merges_again(straight, tmp_path, tiny_overrides):
    work = tmp_path / "merge_killed"
    shutil.copytree(straight, work, symlinks=True)
    for gone in ("merged", "hf"):  # what the final export + merge writes; killed before it was there
        shutil.rmtree(work / "run" / gone)
    (work / "run" / "copd_result.json").unlink()
    proc = _resume(work, tiny_overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[copd] step " not in proc.stdout, "the final step was trained again"
    assert (work / "run" / "copd_result.json").exists()
    _assert_same(_merged(straight), _merged(work), "a resume of the final step")
