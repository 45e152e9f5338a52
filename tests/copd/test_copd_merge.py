"""Tests of copd.merge: the math by hand, the streaming checkpoint merge, its refusals, atomic output and the CLI."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, Qwen3Config

from copd import merge as M
from copd.merge import merge_checkpoints, merge_state_dicts, merge_tensors

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8)  # fmt: skip


def make_ckpt(path: Path, seed: int, dtype=torch.float32, shard="20KB", **config) -> Path:
    """A tiny random Qwen3 saved with save_pretrained (20KB shards: 6 files in fp32)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(Qwen3Config(**(TINY | config))).to(dtype)
    model.save_pretrained(path, max_shard_size=shard)
    return path


def load_folder(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Two fp32 sharded checkpoints and a third one used as a base."""
    root = tmp_path_factory.mktemp("ckpts")
    return make_ckpt(root / "a", 0), make_ckpt(root / "b", 1), make_ckpt(root / "base", 2)


# ---------------------------------------------------------------- tensor math by hand
def test_average_and_weighted_by_hand():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 6.0, -1.0])
    assert torch.equal(merge_tensors("average", [a, b]), torch.tensor([2.0, 4.0, 1.0]))
    # weights [3, 1] normalise to [0.75, 0.25]: 0.75 a + 0.25 b = [1.5, 3.0, 2.0]
    assert torch.equal(merge_tensors("weighted", [a, b], [3, 1]), torch.tensor([1.5, 3.0, 2.0]))


def test_task_arithmetic_by_hand():
    base, t1, t2 = torch.tensor([1.0, 1.0]), torch.tensor([3.0, 0.0]), torch.tensor([1.0, 5.0])
    # tau1 = [2, -1], tau2 = [0, 4]; uniform weights: mean tau = [1, 1.5]; scale 2: base + 2 * [1, 1.5] = [3, 4]
    assert torch.equal(
        merge_tensors("task_arithmetic", [t1, t2], base_tensor=base, scale=2.0), torch.tensor([3.0, 4.0])
    )
    # one input, scale 1: base + (t1 - base) = t1
    assert torch.equal(merge_tensors("task_arithmetic", [t1], base_tensor=base), t1)


def test_ties_by_hand():
    base = torch.ones(5)
    tau1, tau2 = torch.tensor([3.0, -1.0, 0.5, 2.0, -2.5]), torch.tensor([-1.0, -4.0, 0.25, 4.0, 1.5])
    # density 0.6: keep ceil(0.6 * 5) = 3 entries per task vector
    #   trim(tau1) = [3, 0, 0, 2, -2.5]     (|3|, |-2.5|, |2|)
    #   trim(tau2) = [0, -4, 0, 4, 1.5]     (|-4|, |4|, |1.5|)
    # elected sign of the summed mass [3, -4, 0, 6, -1] -> [+, -, 0, +, -]
    # disjoint mean of the agreeing entries: [3, -4, 0, (2 + 4) / 2, -2.5] (tau2's 1.5 disagrees in the last entry)
    merged = merge_tensors("ties", [base + tau1, base + tau2], base_tensor=base, density=0.6)
    assert torch.equal(merged, base + torch.tensor([3.0, -4.0, 0.0, 3.0, -2.5]))
    # scale 0.5 halves the merged task vector
    merged = merge_tensors("ties", [base + tau1, base + tau2], base_tensor=base, density=0.6, scale=0.5)
    assert torch.equal(merged, base + torch.tensor([1.5, -2.0, 0.0, 1.5, -1.25]))
    # weights [3, 1] -> [0.75, 0.25]: mass [2.25, -1, 0, 2.5, -1.5] has the same signs; the shared entry 3 becomes
    # (0.75 * 2 + 0.25 * 4) / (0.75 + 0.25) = 2.5; the others keep their single agreeing value
    merged = merge_tensors("ties", [base + tau1, base + tau2], [3, 1], base, density=0.6)
    assert torch.equal(merged, base + torch.tensor([3.0, -4.0, 0.0, 2.5, -2.5]))


def test_ties_threshold_keeps_ceil_density():
    tau = torch.tensor([0.1, -0.4, 0.3, -0.2])
    assert M.ties_threshold(tau, 0.5) == pytest.approx(0.3)  # keep 2: |-0.4|, |0.3|
    assert M.ties_threshold(tau, 0.2) == pytest.approx(0.4)  # ceil(0.8) = 1
    assert M.ties_threshold(tau, 1.0) == pytest.approx(0.1)  # keep all


def test_merge_tensors_keeps_dtype_and_merge_state_dicts_copies_ints():
    a, b = torch.tensor([1.0, 2.0], dtype=torch.bfloat16), torch.tensor([2.0, 3.0], dtype=torch.bfloat16)
    assert merge_tensors("average", [a, b]).dtype == torch.bfloat16
    merged = merge_state_dicts([{"w": a, "i": torch.tensor([1, 2])}, {"w": b, "i": torch.tensor([5, 6])}])
    assert torch.equal(merged["w"], torch.tensor([1.5, 2.5], dtype=torch.bfloat16))
    assert torch.equal(merged["i"], torch.tensor([1, 2]))


@pytest.mark.parametrize(
    ("weights", "message"),
    [([1.0], "got 1 weights for 2 models"), ([1.0, -1.0], "finite and >= 0"), ([0.0, 0.0], "sum to 0")],
)
def test_normalize_weights_refuses(weights, message):
    with pytest.raises(ValueError, match=message):
        M.normalize_weights(weights, 2)


def test_parse_size():
    assert M.parse_size("5GB") == 5 * 10**9 and M.parse_size("2GiB") == 2 * 2**30
    assert M.parse_size("500MB") == 5 * 10**8 and M.parse_size("123") == 123
    with pytest.raises(ValueError, match="cannot parse size"):
        M.parse_size("5 potatoes")


# ---------------------------------------------------------------- checkpoints
def test_identical_checkpoints_merge_to_themselves(ckpts, tmp_path):
    a = ckpts[0]
    shutil.copytree(a, tmp_path / "a2")
    merge_checkpoints([a, tmp_path / "a2"], tmp_path / "out", progress=False)  # fp32, K = 2: bitwise
    expected = load_folder(a)
    assert all(torch.equal(v, expected[k]) for k, v in load_folder(tmp_path / "out").items())
    bf = make_ckpt(tmp_path / "bf", 0, torch.bfloat16)  # bf16, K = 3: fp32 rounding is far below bf16's
    merge_checkpoints([bf, bf, bf], tmp_path / "out_bf", progress=False)
    expected = load_folder(bf)
    assert all(torch.equal(v, expected[k]) for k, v in load_folder(tmp_path / "out_bf").items())


def test_sharded_average_with_index_and_side_files(ckpts, tmp_path):
    a, b, _ = ckpts
    merge_checkpoints([a, b], tmp_path / "out", max_shard_bytes=30_000, progress=False)
    out = tmp_path / "out"
    index = json.loads((out / M.INDEX_NAME).read_text())
    sa, sb, merged = load_folder(a), load_folder(b), load_folder(out)
    assert set(index["weight_map"]) == set(merged) == set(sa)
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in merged.values())
    for file in set(index["weight_map"].values()):
        shard = load_file(out / file)
        assert all(index["weight_map"][k] == file for k in shard)
        assert sum(v.numel() * 4 for v in shard.values()) <= 30_000 or len(shard) == 1
    # a / 2 + b / 2 and (a + b) / 2 are one rounding of the same real number: equal bitwise
    assert all(torch.equal(merged[k], (sa[k] + sb[k]) / 2) for k in sa)
    assert {"config.json", "generation_config.json"} <= {p.name for p in out.iterdir()}


def test_weighted_and_task_arithmetic_checkpoints(ckpts, tmp_path):
    a, b, base = ckpts
    sa, sb, sbase = load_folder(a), load_folder(b), load_folder(base)
    merge_checkpoints([a, b], tmp_path / "w", "weighted", [3, 1], progress=False)
    merged = load_folder(tmp_path / "w")
    assert all(torch.allclose(merged[k], 0.75 * sa[k] + 0.25 * sb[k], rtol=1e-6, atol=1e-7) for k in sa)
    merge_checkpoints([a], tmp_path / "ta1", "task_arithmetic", base=base, progress=False)
    assert all(torch.equal(v, sa[k]) for k, v in load_folder(tmp_path / "ta1").items())
    merge_checkpoints([a], tmp_path / "ta2", "task_arithmetic", base=base, scale=0.5, progress=False)
    merged = load_folder(tmp_path / "ta2")
    assert all(torch.allclose(merged[k], (sa[k] + sbase[k]) / 2, rtol=1e-6, atol=1e-7) for k in sa)


@pytest.mark.parametrize("method", M.METHODS)
def test_chunked_stream_equals_in_memory_merge(ckpts, tmp_path, monkeypatch, method):
    """Slow reference: merge_state_dicts on whole tensors; the stream cuts every tensor into 7-element chunks."""
    monkeypatch.setattr(M, "CHUNK_NUMEL", 7)
    a, b, base = ckpts
    kwargs = dict(weights=[2, 1] if method == "weighted" else None, density=0.3, scale=1.5)
    kwargs["base"] = base if method in M.BASE_METHODS else None
    merge_checkpoints([a, b], tmp_path / "out", method, progress=False, **kwargs)
    kwargs["base_state_dict"] = load_folder(base) if method in M.BASE_METHODS else None
    del kwargs["base"]
    expected = merge_state_dicts([load_folder(a), load_folder(b)], method, **kwargs)
    merged = load_folder(tmp_path / "out")
    assert all(torch.allclose(merged[k], expected[k], rtol=1e-6, atol=1e-7) for k in expected)


@pytest.mark.parametrize("method", ["average", "ties"])
def test_odd_tensors_stream_like_in_memory(tmp_path, method):
    """0-d, empty and integer tensors: floats are merged, integers come from the first input."""
    sds = []
    for i, folder in enumerate(["a", "b", "base"]):
        torch.manual_seed(i)
        sd = {"w": torch.randn(5, 3), "empty": torch.zeros(0, 4), "scalar": torch.randn(()), "ids": torch.arange(6) + i}
        (tmp_path / folder).mkdir()
        save_file(sd, tmp_path / folder / "model.safetensors")
        sds.append(sd)
    base = tmp_path / "base" if method == "ties" else None
    merge_checkpoints([tmp_path / "a", tmp_path / "b"], tmp_path / "out", method, base=base, progress=False)
    expected = merge_state_dicts(sds[:2], method, base_state_dict=sds[2] if base else None)
    merged = load_folder(tmp_path / "out")
    assert merged.keys() == expected.keys() and torch.equal(merged["ids"], sds[0]["ids"])
    assert all(merged[k].shape == v.shape and torch.allclose(merged[k], v, atol=1e-7) for k, v in expected.items())


def test_thread_count_does_not_change_the_bytes(ckpts, tmp_path):
    for threads in (1, 3):
        merge_checkpoints(ckpts[:2], tmp_path / f"t{threads}", max_shard_bytes=30_000, progress=False, threads=threads)
    files = sorted(p.name for p in (tmp_path / "t1").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "t3").iterdir())
    assert all((tmp_path / "t1" / f).read_bytes() == (tmp_path / "t3" / f).read_bytes() for f in files)


def test_single_file_bf16_and_dtype_override(tmp_path):
    a = make_ckpt(tmp_path / "a", 0, torch.bfloat16, shard="10MB", tie_word_embeddings=True)
    b = make_ckpt(tmp_path / "b", 1, torch.bfloat16, shard="10MB", tie_word_embeddings=True)
    merge_checkpoints([a, b], tmp_path / "out", progress=False)
    assert sorted(p.name for p in (tmp_path / "out").glob("model*")) == ["model.safetensors"]
    sa, sb, merged = load_folder(a), load_folder(b), load_folder(tmp_path / "out")
    assert "lm_head.weight" not in merged  # tied embeddings: absent everywhere, nothing special to do
    assert all(torch.equal(merged[k], ((sa[k].float() + sb[k].float()) / 2).bfloat16()) for k in sa)
    merge_checkpoints([a, b], tmp_path / "out32", dtype="fp32", progress=False)
    merged32 = load_folder(tmp_path / "out32")
    assert all(torch.equal(merged32[k], (sa[k].float() + sb[k].float()) / 2) for k in sa)
    assert json.loads((tmp_path / "out32" / "config.json").read_text())["dtype"] == "float32"


def test_merged_folder_loads_and_matches_averaged_state_dict(ckpts, tmp_path):
    a, b, _ = ckpts
    (a / "tokenizer.json").write_text("{}")  # side files come from the first input; weights never do
    (a / "pytorch_model.bin").write_bytes(b"x")
    try:
        merge_checkpoints([a, b], tmp_path / "out", progress=False)
    finally:
        (a / "tokenizer.json").unlink()
        (a / "pytorch_model.bin").unlink()
    assert (tmp_path / "out" / "tokenizer.json").exists() and not (tmp_path / "out" / "pytorch_model.bin").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    reference = AutoModelForCausalLM.from_config(Qwen3Config(**TINY)).eval()
    reference.load_state_dict(merge_state_dicts([load_folder(a), load_folder(b)]))
    ids_B_T = torch.tensor([[1, 5, 9, 3], [2, 2, 7, 60]])
    with torch.no_grad():
        assert torch.equal(loaded(ids_B_T).logits, reference(ids_B_T).logits)


# ---------------------------------------------------------------- refusals and atomic output
def _variant(tmp_path: Path, name: str, edit) -> Path:
    """A checkpoint made by make_ckpt with config overrides, or a copy of `a` whose config.json is edited."""
    if isinstance(edit, dict):
        return make_ckpt(tmp_path / name, 3, **edit)
    shutil.copytree(edit[0], tmp_path / name)
    config = json.loads((tmp_path / name / "config.json").read_text()) | edit[1]
    (tmp_path / name / "config.json").write_text(json.dumps(config))
    return tmp_path / name


REFUSALS = {
    "one input": (lambda a, b, t: dict(inputs=[a]), "at least 2 inputs"),
    "missing folder": (lambda a, b, t: dict(inputs=[a, t / "nope"]), "does not exist"),
    "no safetensors": (lambda a, b, t: dict(inputs=[a, t]), "has no model.safetensors"),
    "keys": (
        lambda a, b, t: dict(inputs=[a, _variant(t, "v", {"num_hidden_layers": 3})]),
        r"only in .*model\.layers\.2",
    ),
    "shapes": (lambda a, b, t: dict(inputs=[a, _variant(t, "v", {"intermediate_size": 32})]), r"shape of .*mlp"),
    "dtypes": (lambda a, b, t: dict(inputs=[a, make_ckpt(t / "v", 3, torch.bfloat16)]), "dtype of .* differs"),
    "arch": (lambda a, b, t: dict(inputs=[a, _variant(t, "v", (b, {"model_type": "llama"}))]), "architectures differ"),
    "weights count": (lambda a, b, t: dict(method="weighted", weights=[1, 2, 3]), "got 3 weights for 2"),
    "negative weight": (lambda a, b, t: dict(method="weighted", weights=[1, -1]), "finite and >= 0"),
    "zero weights": (lambda a, b, t: dict(method="weighted", weights=[0, 0]), "sum to 0"),
    "needs base": (lambda a, b, t: dict(method="ties"), "needs a base"),
    "unused base": (lambda a, b, t: dict(base=b), "does not use a base"),
    "density": (lambda a, b, t: dict(method="ties", base=b, density=0.0), r"density must be in \(0, 1\]"),
    "method": (lambda a, b, t: dict(method="slerp"), "unknown merge method"),
    "dtype": (lambda a, b, t: dict(dtype="int8"), "unsupported output dtype"),
    "threads": (lambda a, b, t: dict(threads=0), "threads must be positive"),
    "output inside input": (lambda a, b, t: dict(output=a / "merged"), "overlaps input"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_write_nothing(ckpts, tmp_path, case):
    a, b, _ = ckpts
    make_kwargs, message = REFUSALS[case]
    kwargs = dict(inputs=[a, b], output=tmp_path / "out", progress=False) | make_kwargs(a, b, tmp_path)
    with pytest.raises(ValueError, match=message):
        merge_checkpoints(**kwargs)
    assert not Path(kwargs["output"]).exists() and not leftovers(Path(kwargs["output"]).parent)


def test_existing_output_needs_overwrite(ckpts, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(ValueError, match="exists and is not empty"):
        merge_checkpoints(ckpts[:2], out, progress=False)
    merge_checkpoints(ckpts[:2], out, progress=False, overwrite=True)
    assert not (out / "old.txt").exists() and (out / "config.json").exists() and not leftovers(tmp_path)


def test_failure_mid_merge_leaves_no_output(ckpts, tmp_path, monkeypatch):
    real_write, calls = M.write_shard, []

    def write_then_fail(*args):
        if calls:
            raise RuntimeError("disk full")
        calls.append(real_write(*args))

    monkeypatch.setattr(M, "write_shard", write_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        merge_checkpoints(ckpts[:2], tmp_path / "out", max_shard_bytes=30_000, progress=False)
    assert calls and not (tmp_path / "out").exists() and not leftovers(tmp_path)


# ---------------------------------------------------------------- CLI
def _cli(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "copd.merge", *args], capture_output=True, text=True, env=env)


def test_cli_success_and_one_line_errors(ckpts, tmp_path, capsys):
    a, b, _ = ckpts
    done = _cli("--method", "weighted", "--weights", "1,3", "--shard-size", "30KB", "--output", str(tmp_path / "o"),
                "--no-progress", str(a), str(b))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o" / M.INDEX_NAME).exists()
    failed = _cli("--method", "ties", "--output", str(tmp_path / "o2"), str(a), str(b))
    assert failed.returncode == 2 and "needs a base" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1 and "Traceback" not in failed.stderr
    with pytest.raises(SystemExit) as exit_info:  # argparse's own errors: one line too (in-process, to save a start)
        M.main(["--method", "slerp", "--output", str(tmp_path / "o2"), str(a), str(b)])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2 and "invalid choice" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o2").exists()
