"""Merge K Hugging Face checkpoints into one, streaming: the last line of CoPD's Algorithm 1 (theta* = Merge(...)).

Methods (weights w_k are always normalised to sum to 1; uniform when not given):
- average:         theta = mean_k theta_k                       (the paper's merge: plain parameter averaging)
- weighted:        theta = sum_k w_k theta_k
- task_arithmetic: theta = base + scale * sum_k w_k (theta_k - base)   (scale=K gives the classic sum of task vectors)
- ties:            theta = base + scale * disjoint_mean(trim(theta_k - base))   (TIES-Merging, Yadav et al. 2023):
  keep the ceil(density * n) largest |tau_k| of each task vector tensor, elect each entry's sign from the summed
  (weighted) mass, average the (weighted) entries that agree with it.
One input is allowed only with task_arithmetic/ties (base + scale * tau extrapolates one fine-tune); average and
weighted need >= 2. Non-float tensors (int/bool buffers) are copied from the first input.

Streaming: all safetensors headers are parsed and checked before anything is written. Each tensor is then merged in
flat chunks of CHUNK_NUMEL elements: the chunk's raw bytes are pread from every input into reused buffers, merged
in fp32, cast to the output dtype and pwritten at its place in the output shard, whose header is written first
(offsets follow from the known shapes); `threads` workers each take a contiguous run of a shard's tensors. Peak
memory is a few chunks per worker whatever the model size (TIES also loads one whole tensor per input for its
threshold). Output goes to OUT.tmp-<pid>, renamed to OUT at the end; the temp folder is removed on failure.
CLI: python -m copd.merge --method average --output OUT IN1 IN2 ... (see main()). File I/O lives in `copd.merge_io`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from copd.merge_io import (
    FLOAT_CODES,
    INDEX_NAME,
    SINGLE_NAME,
    ST_DTYPES,
    TensorEntry,
    copy_side_files,
    plan_shards,
    pread,
    replace_folder,
    scan_checkpoint,
    write_shard,
)

METHODS = ("average", "weighted", "task_arithmetic", "ties")
BASE_METHODS = ("task_arithmetic", "ties")
CHUNK_NUMEL = 1 << 18  # elements merged at once: buffers stay in cache (halves the copy cost vs 1 << 20)
OUT_DTYPES = {"auto": None, "fp32": "F32", "bf16": "BF16", "fp16": "F16",
              torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}  # fmt: skip


# ---------------------------------------------------------------- tensor math (pure)
def normalize_weights(weights: Sequence[float] | None, num_models: int) -> list[float]:
    """Weights as floats summing to 1 (uniform when None); raises on a wrong count, negative values or a zero sum."""
    if weights is None:
        return [1.0 / num_models] * num_models
    w_K = [float(x) for x in weights]
    if len(w_K) != num_models:
        raise ValueError(f"got {len(w_K)} weights for {num_models} models: pass exactly one weight per input")
    if any(not math.isfinite(x) or x < 0 for x in w_K):
        raise ValueError(f"weights must be finite and >= 0, got {w_K}")
    if sum(w_K) <= 0:
        raise ValueError("weights sum to 0: give at least one input a positive weight")
    return [x / sum(w_K) for x in w_K]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def ties_threshold(tau: Tensor, density: float) -> float:
    """Magnitude of the ceil(density * n)-th largest entry of one task vector; TIES keeps entries with |tau| >= it.

    Shape: (*S) -> scalar. Entries tied with the threshold are all kept.
    """
    abs_N = tau.reshape(-1).abs()
    n = abs_N.numel()
    k = min(n, max(1, math.ceil(density * n)))
    return abs_N.kthvalue(n - k + 1).values.item() if n else 0.0


def merge_flat(method: str, tensors_K: Sequence[Tensor], weights_K: Sequence[float], base: Tensor | None = None,
               scale: float = 1.0, thresholds_K: Sequence[float] | None = None,
               out: Tensor | None = None) -> Tensor:  # fmt: skip
    """Elementwise core of every method, on whole tensors or chunks; weights normalised, TIES thresholds given.

    Shape: K x (*S) -> (*S), in fp32 (fp64 for fp64 inputs), written into `out` when given (not for TIES).
    """
    acc_dtype = _acc_dtype(tensors_K[0].dtype)
    if method == "ties":
        return _ties_flat(tensors_K, weights_K, base, scale, thresholds_K, acc_dtype)
    acc = torch.empty(tensors_K[0].shape, dtype=acc_dtype) if out is None else out
    acc.copy_(tensors_K[0]).mul_(weights_K[0])
    for t, w in zip(tensors_K[1:], weights_K[1:], strict=True):
        acc.add_(t, alpha=w)  # promotes t to acc_dtype: no fp32 copy of the input
    if method == "task_arithmetic" and scale != 1.0:
        # base + s * sum_k w_k (theta_k - base) = (1 - s) base + s sum_k w_k theta_k, as sum_k w_k = 1
        acc.mul_(scale).add_(base, alpha=1.0 - scale)
    return acc


def _ties_flat(tensors_K, weights_K, base, scale, thresholds_K, acc_dtype) -> Tensor:
    base_f = base.to(acc_dtype, copy=True)
    trimmed_K = []
    for t, thr in zip(tensors_K, thresholds_K, strict=True):
        tau = t.to(acc_dtype) - base_f
        trimmed_K.append(tau.masked_fill_(tau.abs() < thr, 0.0))  # trim: keep the top-density magnitudes
    sign = sum(w * tau for w, tau in zip(weights_K, trimmed_K, strict=True)).sign_()  # elect: sign of the summed mass
    num, den = torch.zeros_like(base_f), torch.zeros_like(base_f)
    for w, tau in zip(weights_K, trimmed_K, strict=True):
        agree = (tau.sign() == sign) & (tau != 0)
        num.add_(tau * agree, alpha=w)
        den.add_(agree.to(acc_dtype), alpha=w)
    disjoint_mean = num.div_(den.clamp_min_(torch.finfo(acc_dtype).tiny))  # 0 where no task vector agrees
    return base_f.add_(disjoint_mean, alpha=scale)


def merge_tensors(method: str, tensors: Sequence[Tensor], weights: Sequence[float] | None = None,
                  base_tensor: Tensor | None = None, density: float = 0.2, scale: float = 1.0,
                  out_dtype: torch.dtype | None = None) -> Tensor:  # fmt: skip
    """Merge K same-shape float tensors in fp32 (fp64 for fp64) and cast to out_dtype (default: the inputs' dtype).

    Shape: K x (*S) -> (*S).
    """
    _check_method_args(method, len(tensors), base_tensor is not None, weights, density, scale)
    thresholds_K = None
    if method == "ties":
        acc_dtype = _acc_dtype(tensors[0].dtype)
        thresholds_K = [ties_threshold(t.to(acc_dtype) - base_tensor.to(acc_dtype), density) for t in tensors]
    merged = merge_flat(method, tensors, normalize_weights(weights, len(tensors)), base_tensor, scale, thresholds_K)
    return merged.to(out_dtype or tensors[0].dtype)


def merge_state_dicts(state_dicts: Sequence[Mapping[str, Tensor]], method: str = "average",
                      weights: Sequence[float] | None = None, base_state_dict: Mapping[str, Tensor] | None = None,
                      density: float = 0.2, scale: float = 1.0) -> dict[str, Tensor]:  # fmt: skip
    """Merge K in-memory state dicts key by key with merge_tensors; non-float tensors are taken from the first."""
    all_sds = list(state_dicts) + ([base_state_dict] if base_state_dict is not None else [])
    layouts = [{k: (str(v.dtype), tuple(v.shape)) for k, v in sd.items()} for sd in all_sds]
    _check_same_layout(layouts, [f"state dict {i}" for i in range(len(all_sds))])
    merged = {}
    for key, first in state_dicts[0].items():
        if not first.is_floating_point():
            merged[key] = first.clone()
            continue
        base = base_state_dict[key] if base_state_dict is not None else None
        merged[key] = merge_tensors(method, [sd[key] for sd in state_dicts], weights, base, density, scale)
    return merged


# ---------------------------------------------------------------- validation
def _check_method_args(method, num_models, has_base, weights, density, scale) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown merge method {method!r}: use one of {', '.join(METHODS)}")
    if method in BASE_METHODS and not has_base:
        raise ValueError(f"method {method} needs a base checkpoint (--base): task vectors are theta_k - base")
    if method not in BASE_METHODS and has_base:
        raise ValueError(f"method {method} does not use a base: drop --base or use task_arithmetic/ties")
    if num_models < (1 if method in BASE_METHODS else 2):
        raise ValueError(f"{method} needs at least 2 inputs, got {num_models} (1 is allowed for task_arithmetic/ties)")
    if method == "average" and weights is not None:
        raise ValueError("average takes no weights: use method weighted to pass --weights")
    if method == "weighted" and weights is None:
        raise ValueError("method weighted needs --weights (one per input); use average for uniform weights")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"ties density must be in (0, 1], got {density}")
    if not math.isfinite(scale):
        raise ValueError(f"task scale must be finite, got {scale}")


def _check_same_layout(layouts: Sequence[Mapping[str, tuple]], names: Sequence[str]) -> None:
    """Same keys, and per key the same (dtype, shape), in every layout; the error names a few offending keys."""
    ref, ref_name = layouts[0], names[0]
    for layout, name in zip(layouts[1:], names[1:], strict=True):
        only_ref, only_other = sorted(set(ref) - set(layout)), sorted(set(layout) - set(ref))
        if only_ref or only_other:
            raise ValueError(
                f"tensor names differ: only in {ref_name}: {only_ref[:3]}, only in {name}: "
                f"{only_other[:3]} ({len(only_ref)}, {len(only_other)} in all); use one architecture"
            )
        for key, (dtype, shape) in ref.items():
            if layout[key][1] != shape:
                raise ValueError(f"shape of {key} differs: {shape} in {ref_name}, {layout[key][1]} in {name}")
            if layout[key][0] != dtype:
                raise ValueError(
                    f"dtype of {key} differs: {dtype} in {ref_name}, {layout[key][0]} in {name}; "
                    "convert the checkpoints to one dtype first"
                )


def _check_same_arch(folders: Sequence[Path]) -> None:
    seen = None
    for folder in folders:
        if (folder / "config.json").is_file():
            config = json.loads((folder / "config.json").read_text())
            arch = (config.get("architectures"), config.get("model_type"))
            if seen is not None and arch != seen[1]:
                raise ValueError(f"architectures differ: {seen[0]} is {seen[1]}, {folder} is {arch}")
            seen = seen or (folder, arch)


def _check_output(out: Path, folders: Sequence[Path], overwrite: bool) -> None:
    resolved = out.resolve()
    for folder in folders:
        src = folder.resolve()
        if resolved.is_relative_to(src) or src.is_relative_to(resolved):
            raise ValueError(f"output {out} overlaps input {folder}: write the merge to a separate folder")
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"output {out} exists and is not empty: remove it or pass --overwrite")


# ---------------------------------------------------------------- streaming merge (I/O in copd.merge_io)
def _scratch(buffers: dict, role: object, dtype: torch.dtype, count: int) -> Tensor:
    """A flat buffer reused across chunks by role: fresh big allocations would page-fault on every chunk."""
    if role not in buffers or buffers[role].numel() < count or buffers[role].dtype != dtype:
        buffers[role] = torch.empty(max(count, CHUNK_NUMEL), dtype=dtype)
    return buffers[role][:count]


@dataclass(frozen=True)
class _Job:
    """What to do with every tensor."""

    method: str  # one of METHODS
    weights_K: list[float]  # normalised weights, one per input
    density: float  # TIES: fraction of each task vector kept
    scale: float  # task_arithmetic/ties: scale of the merged task vector
    out_code: str | None  # output float dtype code; None keeps the inputs'

    @property
    def needs_base(self) -> bool:  # task arithmetic with scale 1 reduces to sum_k w_k theta_k: no base to read
        return self.method == "ties" or (self.method == "task_arithmetic" and self.scale != 1.0)


def _tensor_merger(job: _Job, fds: Mapping[Path, int], sources: Mapping[str, list], bar: tqdm) -> Callable:
    """A name -> chunks function: reads each chunk of the tensor from every source (inputs, then the base), merges
    and casts it in reused buffers (valid until the next chunk); non-float tensors come from the first input."""
    buffers, k = {}, len(job.weights_K)

    def tensor_chunks(key: str) -> Iterator[Tensor]:
        srcs, numel = sources[key], math.prod(sources[key][0].shape)
        dtype = ST_DTYPES[srcs[0].dtype]
        acc_dtype, out_dtype = _acc_dtype(dtype), ST_DTYPES[job.out_code or srcs[0].dtype]
        thresholds_K = None
        if job.method == "ties" and srcs[0].dtype in FLOAT_CODES:  # the threshold is per whole tensor
            whole = lambda e: pread(fds[e.path], e, 0, torch.empty(numel, dtype=dtype)).to(acc_dtype)
            base_N = whole(srcs[k])
            thresholds_K = [ties_threshold(whole(e) - base_N, job.density) for e in srcs[:k]]
        for start in range(0, numel, CHUNK_NUMEL):
            count = min(CHUNK_NUMEL, numel - start)
            chunks = [pread(fds[e.path], e, start, _scratch(buffers, j, dtype, count)) for j, e in enumerate(srcs)]
            if srcs[0].dtype not in FLOAT_CODES:
                yield chunks[0]
                continue
            base = chunks[k] if job.needs_base else None
            acc = _scratch(buffers, "acc", acc_dtype, count)
            acc = merge_flat(job.method, chunks[:k], job.weights_K, base, job.scale, thresholds_K, out=acc)
            yield acc if out_dtype == acc_dtype else _scratch(buffers, "out", out_dtype, count).copy_(acc)
        bar.update(1)

    return tensor_chunks


def _write_merged(tmp: Path, scans: Sequence[dict[str, TensorEntry]], job: _Job, max_shard_bytes: int, progress: bool,
                  threads: int) -> None:  # fmt: skip
    """Write the merged shards (and the index when there are several) into tmp, in the first input's tensor order."""
    first, k = scans[0], len(job.weights_K)
    floats = {key for key, e in first.items() if e.dtype in FLOAT_CODES}
    sources = {key: [s[key] for s in scans[: k + job.needs_base]] if key in floats else [e] for key, e in first.items()}
    codes = {key: job.out_code if job.out_code and key in floats else e.dtype for key, e in first.items()}
    nbytes = {key: math.prod(e.shape) * ST_DTYPES[codes[key]].itemsize for key, e in first.items()}
    shards = plan_shards(list(nbytes.items()), max_shard_bytes)
    n = len(shards)
    files = [SINGLE_NAME] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    fds = {path: os.open(path, os.O_RDONLY) for path in {e.path for srcs in sources.values() for e in srcs}}
    try:
        with tqdm(total=len(first), unit="tensor", desc="merge", disable=not progress) as bar:
            for file, names in zip(files, shards, strict=True):
                specs = [(key, codes[key], first[key].shape, nbytes[key]) for key in names]
                write_shard(tmp / file, specs, lambda: _tensor_merger(job, fds, sources, bar), threads)
    finally:
        for fd in fds.values():
            os.close(fd)
    if n > 1:
        weight_map = {key: file for file, names in zip(files, shards, strict=True) for key in names}
        index = {"metadata": {"total_size": sum(nbytes.values())}, "weight_map": weight_map}
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def merge_checkpoints(inputs: Sequence[str | Path], output: str | Path, method: str = "average",
                      weights: Sequence[float] | None = None, base: str | Path | None = None, density: float = 0.2,
                      scale: float = 1.0, max_shard_bytes: int = 5 * 10**9, dtype: str | torch.dtype | None = None,
                      progress: bool = True, overwrite: bool = False, threads: int = 2) -> Path:  # fmt: skip
    """Merge K checkpoint folders into `output` (see the module docstring); all checks run before anything is written.

    dtype: None/"auto" keeps the inputs' float dtype, else "fp32"/"bf16"/"fp16" (or the torch dtype). threads: workers
    per shard, each reading, merging and writing its own contiguous run of tensors (no buffer crosses a core).
    """
    folders, out = [Path(p) for p in inputs], Path(output)
    _check_method_args(method, len(folders), base is not None, weights, density, scale)
    if dtype not in OUT_DTYPES and dtype is not None:
        raise ValueError(f"unsupported output dtype {dtype!r}: use auto, fp32, bf16 or fp16")
    if max_shard_bytes <= 0 or threads < 1:
        raise ValueError(f"max shard size and threads must be positive, got {max_shard_bytes} and {threads}")
    job = _Job(method, normalize_weights(weights, len(folders)), density, scale, OUT_DTYPES.get(dtype))
    all_folders = folders + ([Path(base)] if base is not None else [])
    scans = [scan_checkpoint(f) for f in all_folders]
    _check_same_layout([{k: (e.dtype, e.shape) for k, e in s.items()} for s in scans], [str(f) for f in all_folders])
    _check_same_arch(all_folders)
    _check_output(out, all_folders, overwrite)
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_merged(tmp, scans, job, max_shard_bytes, progress, threads)
        copy_side_files(folders[0], tmp, job.out_code)
        replace_folder(tmp, out)
    except BaseException:  # never leave a half-written output behind, then re-raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---------------------------------------------------------------- CLI
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like our ValueErrors (argparse adds the usage)
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_size(text: str) -> int:
    """Bytes from '5GB' (10^9), '2GiB' (2^30), '500MB', or a plain integer."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
             "GIB": 2**30, "TIB": 2**40}  # fmt: skip
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in units:
        raise ValueError(f"cannot parse size {text!r}: use e.g. 5GB, 500MB or 2GiB")
    return int(float(match.group(1)) * units[match.group(2).upper()])


def _parse_weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"cannot parse --weights {text!r}: use comma-separated numbers, e.g. 0.7,0.3") from None


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: returns 0 on success, 2 (one-line message on stderr, nothing written) on invalid input."""
    p = _Parser(prog="python -m copd.merge", description="Merge Hugging Face safetensors checkpoints, streaming.")
    p.add_argument("inputs", nargs="+", help="checkpoint folders to merge")
    p.add_argument("--output", required=True, help="folder to create (must not exist or be empty)")
    p.add_argument("--method", choices=METHODS, default="average", help="merge method")
    p.add_argument("--weights", help="one weight per input, comma-separated; normalised to sum 1")
    p.add_argument("--base", help="base checkpoint for task_arithmetic/ties")
    p.add_argument("--ties-density", type=float, default=0.2, help="TIES: fraction of each task vector kept")
    p.add_argument("--task-scale", type=float, default=1.0, help="task_arithmetic/ties: task vector scale")
    p.add_argument("--shard-size", default="5GB", help="max output shard size, e.g. 5GB, 500MB, 2GiB")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto", help="output float dtype")
    p.add_argument("--threads", type=int, default=2, help="worker threads, each merging its own run of tensors")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind (and remove the temp folder) on kill too
    # memory-bound work on ~1 MB chunks, parallel over --threads workers: OpenMP threads inside each op would only
    # add barrier waits (dire on a loaded machine)
    torch.set_num_threads(1)
    try:
        merge_checkpoints(args.inputs, args.output, args.method, _parse_weights(args.weights), args.base,
                          args.ties_density, args.task_scale, parse_size(args.shard_size), args.dtype,
                          progress=not args.no_progress, overwrite=args.overwrite, threads=args.threads)  # fmt: skip
    except ValueError as err:
        print(f"{p.prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the temp folder is already gone
        print(f"{p.prog}: interrupted, nothing written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
