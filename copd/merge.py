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
in fp32 by the numpy kernels of `copd.merge_np` (bitwise what the torch math of `copd.merge_torch` gives; no torch
import, so the command starts fast), cast to the output dtype and pwritten at its place in the output shard, whose
header is written first (offsets follow from the known shapes); `threads` workers each take a contiguous run of a
shard's tensors and start the write-back of what they wrote as they go. Peak memory is a few chunks per worker
whatever the model size (TIES also loads one whole tensor per input for its threshold).
Output goes to OUT.tmp-<pid>; every file is fdatasync'ed, then the folder is renamed to OUT and the rename made
durable: OUT is complete and on disk, or absent (a killed run leaves only OUT.tmp-<pid>, removed by the next run).
CLI: python -m copd.merge --method average --output OUT IN1 IN2 ... (see main()). File I/O lives in `copd.merge_io`;
`merge_tensors`, `merge_state_dicts`, `merge_flat` and `ties_threshold` (torch, in memory) in `copd.merge_torch`.
"""

from __future__ import annotations

import argparse
import errno
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

import numpy as np

from copd.merge_io import (
    FLOAT_CODES,
    INDEX_NAME,
    ITEMSIZE,
    SINGLE_NAME,
    TensorEntry,
    copy_side_files,
    plan_shards,
    pread,
    remove_stale,
    replace_folder,
    scan_checkpoint,
    write_durably,
    write_shard,
)
from copd.merge_np import RAW_DTYPES, Scratch, merge_chunk, narrow, widen
from copd.merge_np import ties_threshold as np_ties_threshold

METHODS = ("average", "weighted", "task_arithmetic", "ties")
BASE_METHODS = ("task_arithmetic", "ties")
CHUNK_NUMEL = 1 << 18  # elements merged at once (~5.8 MB of buffers a worker): fastest of 2^16..2^20 here (LOG)
OUT_DTYPES = {"auto": None, "fp32": "F32", "bf16": "BF16", "fp16": "F16",
              "torch.float32": "F32", "torch.bfloat16": "BF16", "torch.float16": "F16"}  # fmt: skip
_TORCH_API = ("merge_tensors", "merge_state_dicts", "merge_flat", "ties_threshold")


def __getattr__(name: str):  # the in-memory torch API, imported (with torch) on first use only
    if name in _TORCH_API:
        from copd import merge_torch

        return getattr(merge_torch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
            try:
                config = json.loads((folder / "config.json").read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ValueError(f"{folder / 'config.json'} is not valid JSON ({err}): re-download or fix it") from None
            if not isinstance(config, dict):
                raise ValueError(f"{folder / 'config.json'} is not a JSON object: re-download or fix it")
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


class _NoBar:
    def update(self, n: int) -> None:
        pass


def _tensor_merger(job: _Job, fds: Mapping[Path, int], sources: Mapping[str, list], bar) -> Callable:
    """A name -> chunks function: reads each chunk of the tensor from every source (inputs, then the base), merges
    and casts it in reused buffers (valid until the next chunk); non-float tensors come from the first input."""
    scr, k = Scratch(CHUNK_NUMEL), len(job.weights_K)

    def tensor_chunks(key: str) -> Iterator[np.ndarray]:
        srcs, numel = sources[key], math.prod(sources[key][0].shape)
        code, raw = srcs[0].dtype, RAW_DTYPES[srcs[0].dtype]
        if code == "F64":
            yield from _f64_chunks(job, fds, srcs, numel)
            bar.update(1)
            return
        thresholds_K = None
        if job.method == "ties" and code in FLOAT_CODES:  # the threshold is per whole tensor
            whole = lambda e: widen(pread(fds[e.path], e, 0, np.empty(numel, raw)), code, Scratch(0), "whole")
            base_N = whole(srcs[k])
            with np.errstate(all="ignore"):
                thresholds_K = [np_ties_threshold(whole(e) - base_N, job.density) for e in srcs[:k]]
        for start in range(0, numel, CHUNK_NUMEL):
            count = min(CHUNK_NUMEL, numel - start)
            chunks = [pread(fds[e.path], e, start, scr.get(("raw", j), raw, count)) for j, e in enumerate(srcs)]
            if code not in FLOAT_CODES:
                yield chunks[0]
                continue
            xs = [widen(c, code, scr, ("wide", j)) for j, c in enumerate(chunks)]
            base = xs[k] if job.needs_base else None
            acc = merge_chunk(job.method, xs[:k], job.weights_K, base, job.scale, thresholds_K, scr, code)
            yield narrow(acc, job.out_code or code, scr)
        bar.update(1)

    return tensor_chunks


def _f64_chunks(job: _Job, fds: Mapping[Path, int], srcs: Sequence[TensorEntry], numel: int) -> Iterator[np.ndarray]:
    """fp64 tensors (rare) go through the torch math: numpy has no fp64 fused multiply-add to match it with."""
    import torch

    from copd.merge_torch import merge_flat, ties_threshold

    k, read = len(job.weights_K), lambda e, start, n: torch.from_numpy(pread(fds[e.path], e, start, np.empty(n)))
    thresholds_K = None
    if job.method == "ties":
        base_N = read(srcs[k], 0, numel)
        thresholds_K = [ties_threshold(read(e, 0, numel) - base_N, job.density) for e in srcs[:k]]
    out_dtype = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}.get(job.out_code)
    for start in range(0, numel, CHUNK_NUMEL):
        count = min(CHUNK_NUMEL, numel - start)
        chunks = [read(e, start, count) for e in srcs]
        base = chunks[k] if job.needs_base else None
        acc = merge_flat(job.method, chunks[:k], job.weights_K, base, job.scale, thresholds_K)
        yield (acc if out_dtype is None else acc.to(out_dtype)).view(torch.uint8).numpy()


def _out_nbytes(first: Mapping[str, TensorEntry], job: _Job) -> dict[str, tuple[str, int]]:
    """Output dtype code and byte size of every tensor, in the first input's order."""
    codes = {key: job.out_code if job.out_code and e.dtype in FLOAT_CODES else e.dtype for key, e in first.items()}
    return {key: (codes[key], math.prod(e.shape) * ITEMSIZE[codes[key]]) for key, e in first.items()}


def _write_merged(tmp: Path, scans: Sequence[dict[str, TensorEntry]], job: _Job, max_shard_bytes: int, progress: bool,
                  threads: int) -> None:  # fmt: skip
    """Write the merged shards (and the index when there are several) into tmp, in the first input's tensor order."""
    first, k = scans[0], len(job.weights_K)
    used = scans[: k + job.needs_base]
    sources = {key: [s[key] for s in used] if e.dtype in FLOAT_CODES else [e] for key, e in first.items()}
    out = _out_nbytes(first, job)
    shards = plan_shards([(key, nbytes) for key, (_, nbytes) in out.items()], max_shard_bytes)
    n = len(shards)
    files = [SINGLE_NAME] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    fds = {path: os.open(path, os.O_RDONLY) for path in {e.path for srcs in sources.values() for e in srcs}}
    if progress:
        from tqdm import tqdm
    bar = tqdm(total=len(first), unit="tensor", desc="merge") if progress else _NoBar()
    try:
        for file, names in zip(files, shards, strict=True):
            specs = [(key, out[key][0], first[key].shape, out[key][1]) for key in names]
            write_shard(tmp / file, specs, lambda: _tensor_merger(job, fds, sources, bar), threads)
    finally:
        for fd in fds.values():
            os.close(fd)
        if progress:
            bar.close()
    if n > 1:
        weight_map = {key: file for file, names in zip(files, shards, strict=True) for key in names}
        index = {"metadata": {"total_size": sum(nbytes for _, nbytes in out.values())}, "weight_map": weight_map}
        write_durably(tmp / INDEX_NAME, (json.dumps(index, indent=2) + "\n").encode())


def merge_checkpoints(inputs: Sequence[str | Path], output: str | Path, method: str = "average",
                      weights: Sequence[float] | None = None, base: str | Path | None = None, density: float = 0.2,
                      scale: float = 1.0, max_shard_bytes: int = 5 * 10**9, dtype=None,
                      progress: bool = True, overwrite: bool = False, threads: int = 2) -> Path:  # fmt: skip
    """Merge K checkpoint folders into `output` (see the module docstring); all checks run before anything is written.

    dtype: None/"auto" keeps the inputs' float dtype, else "fp32"/"bf16"/"fp16" (or the torch dtype). threads: workers
    per shard, each reading, merging and writing its own contiguous run of tensors (no buffer crosses a core).
    Returns when the output is complete and durable; temp folders of killed runs (their pid gone) are removed.
    """
    folders, out = [Path(p) for p in inputs], Path(output)
    _check_method_args(method, len(folders), base is not None, weights, density, scale)
    if dtype is not None and str(dtype) not in OUT_DTYPES:
        raise ValueError(f"unsupported output dtype {dtype!r}: use auto, fp32, bf16 or fp16")
    if max_shard_bytes <= 0 or threads < 1:
        raise ValueError(f"max shard size and threads must be positive, got {max_shard_bytes} and {threads}")
    job = _Job(method, normalize_weights(weights, len(folders)), density, scale, OUT_DTYPES.get(str(dtype)))
    all_folders = folders + ([Path(base)] if base is not None else [])
    scans = [scan_checkpoint(f) for f in all_folders]
    _check_same_layout([{k: (e.dtype, e.shape) for k, e in s.items()} for s in scans], [str(f) for f in all_folders])
    _check_same_arch(all_folders)
    _check_output(out, all_folders, overwrite)
    remove_stale(out)
    need = sum(nbytes for _, nbytes in _out_nbytes(scans[0], job).values())
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if (free := shutil.disk_usage(tmp).free) < need:
            raise ValueError(f"{out.parent} has {_size(free)} free, the merge needs {_size(need)}: "
                             "free space or pass another --output")  # fmt: skip
        _write_merged(tmp, scans, job, max_shard_bytes, progress, threads)
        copy_side_files(folders[0], tmp, job.out_code)
        replace_folder(tmp, out)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"no space left on the device of {out.parent} while writing the "
                          f"{_size(need)} merge: free space or pass another --output") from err  # fmt: skip
        raise
    except BaseException:  # never leave a half-written output behind, then re-raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 10**9 else f"{nbytes / 1e6:.1f} MB"


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
    """CLI entry: 0 on success; else one line on stderr, nothing at the output: 2 on invalid input (checked before
    any work), 1 when writing fails (disk full, no permission), 130 on Ctrl-C."""
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
    try:
        merge_checkpoints(args.inputs, args.output, args.method, _parse_weights(args.weights), args.base,
                          args.ties_density, args.task_scale, parse_size(args.shard_size), args.dtype,
                          progress=not args.no_progress, overwrite=args.overwrite, threads=args.threads)  # fmt: skip
    except ValueError as err:
        print(f"{p.prog}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the disk filled, a folder is not writable, ...: the temp folder is already gone
        where = f": {err.filename}" if err.filename else ""
        print(f"{p.prog}: error: {err.strerror or err}{where}; nothing written at {args.output}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the temp folder is already gone
        print(f"{p.prog}: interrupted, nothing written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
