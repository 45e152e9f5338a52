"""The numpy streaming kernels of copd.merge give bitwise what the torch math (copd.merge_torch) gives, and the CLI
merges without importing torch."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from copd import merge as M
from copd import merge_np as K

torch.set_num_threads(1)


def bits(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view({2: torch.int16, 4: torch.int32}[t.element_size()]).numpy()


def torch_fma(acc: np.ndarray, w: float, x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(acc.copy()).add_(torch.from_numpy(x), alpha=w).numpy()


def hard_operands() -> tuple[np.ndarray, np.ndarray]:
    """acc, x pairs where a plain fp32 multiply-add, or an fp64 sum rounded to fp32, gets the last bit wrong."""
    f = np.float32
    one_ulp = f(1 + 2**-23)  # odd last bit: the halfway point above it rounds (ties to even) up in a double rounding
    acc = [one_ulp, f(-one_ulp), f(2**-130), f(3 * 2**-149), f(0.0), f(-0.0), f(1e30), f(1.0)]
    x = [f(2**-24 * (1 - 2**-23)), f(-(2**-24) * (1 - 2**-23)), f(2**-131), f(2**-149), f(-0.0), f(0.0), f(3e29), f(0)]
    rng = np.random.default_rng(0)
    scales = np.exp2(rng.integers(-140, 100, 4000)).astype(np.float32)  # mixed exponents, subnormals included
    acc = np.concatenate([np.array(acc, f), rng.standard_normal(4000, f) * scales])
    x = np.concatenate([np.array(x, f), rng.standard_normal(4000, f) * scales[::-1]])
    return acc, x


@pytest.mark.parametrize("w", [1 + 2**-23, 0.5, 1 / 3, 0.2, 2.0, -1.5, 0.0, 1 - 1.3])
def test_fma_is_torch_fused_add(w):
    acc, x = hard_operands()
    expected = torch_fma(acc, w, x)
    got = K.fma_(acc.copy(), w, x, K.Scratch(0))
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_fma_needs_the_exact_fix():
    """The crafted first entry: fp64 lands exactly halfway, the true sum is just below; plain numpy errs both ways."""
    acc, x = hard_operands()
    w = np.float32(1 + 2**-23)
    expected = torch_fma(acc[:1], float(w), x[:1])
    assert expected[0] == np.float32(1 + 2**-23)  # the real fused result keeps acc
    assert np.float32(np.float64(acc[0]) + np.float64(w) * np.float64(x[0])) != expected[0]
    assert K.fma_(acc[:1].copy(), float(w), x[:1], K.Scratch(0))[0] == expected[0]


def test_narrow_rounds_as_torch():
    rng = np.random.default_rng(1)
    u = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    u[:65536] = (np.arange(65536, dtype=np.uint32) << 16) | 0x8000  # every bf16 value + exactly halfway above it
    f32 = u.view(np.float32)
    f32 = f32[~np.isnan(f32)]  # NaN payloads differ between torch's own scalar and vector paths
    t = torch.from_numpy(f32.copy())
    assert np.array_equal(K.narrow(f32, "BF16", K.Scratch(0)).view(np.int16), bits(t.bfloat16()))
    assert np.array_equal(K.narrow(f32, "F16", K.Scratch(0)).view(np.int16), bits(t.half()))
    assert K.narrow(np.array([np.nan, -np.inf], np.float32), "BF16", K.Scratch(0)).tolist() == [0x7FC0, 0xFF80]


def make_sd(seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {
        "w": torch.randn(37, 11, generator=g) * 0.02,
        "tiny": torch.randn(40, generator=g) * 1e-39,  # fp32 subnormals (flush to zero in fp16, stay in bf16)
        "wide": torch.randn(64, generator=g) * torch.exp2(torch.randint(-30, 30, (64,), generator=g).float()),
        "scalar": torch.randn((), generator=g),
        "empty": torch.zeros(0, 3),
    }
    return {k: v.to(dtype) for k, v in sd.items()} | {"ids": torch.arange(5) + seed}


CASES = [
    ("average", 2, {}),
    ("average", 3, {}),
    ("weighted", 3, dict(weights=[3.0, 1.0, 1.7])),
    ("task_arithmetic", 3, dict(scale=1.0)),
    ("task_arithmetic", 2, dict(weights=[0.3, 0.7], scale=1.7)),
    ("ties", 3, dict(density=0.3, scale=1.0)),
    ("ties", 2, dict(weights=[2.0, 1.0], density=0.5, scale=0.7)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize(("method", "k", "kwargs"), CASES, ids=[f"{m}-K{k}-{i}" for i, (m, k, _) in enumerate(CASES)])
@pytest.mark.parametrize("chunk", [7, 1 << 18], ids=["chunk7", "chunk256k"])
def test_stream_is_bitwise_the_torch_merge(tmp_path, monkeypatch, dtype, method, k, kwargs, chunk):
    monkeypatch.setattr(M, "CHUNK_NUMEL", chunk)
    sds = [make_sd(i, dtype) for i in range(k + 1)]
    folders = []
    for i, sd in enumerate(sds):
        (tmp_path / f"m{i}").mkdir()
        save_file(sd, tmp_path / f"m{i}" / "model.safetensors")
        folders.append(tmp_path / f"m{i}")
    base = folders[k] if method in M.BASE_METHODS else None
    M.merge_checkpoints(folders[:k], tmp_path / "out", method, base=base, progress=False, **kwargs)
    got = load_file(tmp_path / "out" / "model.safetensors")
    expected = M.merge_state_dicts(sds[:k], method, base_state_dict=sds[k] if base else None, **kwargs)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        assert np.array_equal(bits(got[key].reshape(-1)), bits(value.reshape(-1))) if value.is_floating_point() else \
            torch.equal(got[key], value), key  # fmt: skip


@pytest.mark.parametrize("out", ["fp32", "bf16", "fp16"])
def test_dtype_override_is_bitwise_the_torch_cast(tmp_path, out):
    sds = [make_sd(i, torch.float32 if out != "fp32" else torch.bfloat16) for i in range(3)]
    for i, sd in enumerate(sds):
        (tmp_path / f"m{i}").mkdir()
        save_file(sd, tmp_path / f"m{i}" / "model.safetensors")
    M.merge_checkpoints([tmp_path / f"m{i}" for i in range(3)], tmp_path / "out", dtype=out, progress=False)
    got = load_file(tmp_path / "out" / "model.safetensors")
    target = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[out]
    for key in ("w", "tiny", "wide", "scalar"):
        expected = M.merge_tensors("average", [sd[key] for sd in sds], out_dtype=target)
        assert np.array_equal(bits(got[key].reshape(-1)), bits(expected.reshape(-1))), key


def test_fp64_checkpoints_go_through_torch(tmp_path):
    sds = [make_sd(i, torch.float64) for i in range(3)]
    for i, sd in enumerate(sds):
        (tmp_path / f"m{i}").mkdir()
        save_file(sd, tmp_path / f"m{i}" / "model.safetensors")
    folders = [tmp_path / f"m{i}" for i in range(3)]
    M.merge_checkpoints(folders[:2], tmp_path / "out", "ties", base=folders[2], density=0.4, progress=False)
    got = load_file(tmp_path / "out" / "model.safetensors")
    expected = M.merge_state_dicts(sds[:2], "ties", base_state_dict=sds[2], density=0.4)
    assert all(torch.equal(got[key], value) for key, value in expected.items())


def test_cli_merges_without_importing_torch(tmp_path):
    for i in range(2):
        (tmp_path / f"m{i}").mkdir()
        save_file(make_sd(i, torch.bfloat16), tmp_path / f"m{i}" / "model.safetensors")
    code = (
        "import sys; from copd.merge import main; rc = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    args = ["--no-progress", "--output", str(tmp_path / "out"), str(tmp_path / "m0"), str(tmp_path / "m1")]
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("k", [2, 4])
def test_equal_power_of_two_weights_shortcut_and_its_fallback(dtype, k):
    """Sum then scale (the fast path) against torch, on values at the ends of the range: bf16 subnormals, sums that
    overflow fp32 unless scaled first (the fallback), an inf and a NaN."""
    g = torch.Generator().manual_seed(k)
    lo, hi = (-140, 128) if dtype == torch.bfloat16 else (-30, 16)
    xs = [torch.randn(5000, generator=g) * torch.exp2(torch.randint(lo, hi, (5000,), generator=g).float())
          for _ in range(k)]  # fmt: skip
    xs = [x.clamp(-3e38, 3e38).to(dtype) for x in xs]
    if dtype == torch.bfloat16:
        xs[0][:3], xs[1][:3] = torch.tensor([3e38, 3e38, 1e-40]), torch.tensor([3e38, float("inf"), 1e-40])
        xs[1][3] = float("nan")
    code = {torch.bfloat16: "BF16", torch.float16: "F16"}[dtype]

    def merged(xs):
        scr, raws = K.Scratch(0), [x.view(torch.int16).numpy().view(K.RAW_DTYPES[code]) for x in xs]
        wide = [K.widen(r, code, scr, i) for i, r in enumerate(raws)]
        return K.narrow(K.merge_chunk("average", wide, [1 / k] * k, None, 1.0, None, scr, code), code, scr).copy()

    expected = M.merge_tensors("average", xs)
    same = merged(xs).view(np.int16) == bits(expected)
    assert same.all() or (dtype == torch.bfloat16 and np.flatnonzero(~same).tolist() == [3])  # NaN payloads only
    special = dtype == torch.bfloat16
    assert torch.isnan(expected[3]) == special and torch.isinf(expected[1]) == special
    tail = [x[4:] for x in xs]  # finite sums: the shortcut itself
    assert np.array_equal(merged(tail).view(np.int16), bits(M.merge_tensors("average", tail)))
