"""Safetensors I/O for `copd.merge`: checked header parsing, positioned reads and writes, shard planning, durable
output folders. No torch and no tensor math here: `copd.merge` plans the merge and feeds `write_shard` the chunks.

Durability: each worker starts the write-back of what it wrote every FLUSH_BYTES (Linux `sync_file_range`, so the
disk works while the next chunks are merged and dirty pages stay bounded), every file is fdatasync'ed when complete,
the temp folder is fsync'ed before its rename and the parent after it: when the merge returns, the output is on disk.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from threading import Event

import numpy as np

from copd.merge_np import RAW_DTYPES

SINGLE_NAME, INDEX_NAME = "model.safetensors", "model.safetensors.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".index.json")
FLOAT_CODES = ("F64", "F32", "F16", "BF16")
ITEMSIZE = {code: np.dtype(dt).itemsize for code, dt in RAW_DTYPES.items()}
CONFIG_DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
MAX_HEADER_BYTES = 100_000_000  # what the safetensors library accepts
FLUSH_BYTES = 32 << 20  # a worker starts write-back after this many bytes written
LFS_MAGIC = b"version https://git-lfs"


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes live."""

    path: Path  # the .safetensors file
    dtype: str  # safetensors dtype code, e.g. "BF16"
    shape: tuple[int, ...]  # tensor shape
    offset: int  # absolute byte offset of the tensor's data in the file


def _corrupt(path: Path, why: str) -> ValueError:
    return ValueError(f"{path} is not a valid safetensors file ({why}): re-save or re-download it")


def read_header(path: Path) -> dict[str, TensorEntry]:
    """Tensors of one safetensors file, in on-disk order (reads the 8-byte length + JSON header only, checked)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if head.startswith(LFS_MAGIC[:8]) and (head + f.read(64)).startswith(LFS_MAGIC):
            raise ValueError(f"{path} looks like a Git LFS pointer, not the weights: run `git lfs pull` in its repo")
        if len(head) < 8:
            raise _corrupt(path, f"{size} bytes, shorter than the 8-byte header length")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(size - 8, MAX_HEADER_BYTES):
            raise _corrupt(path, f"header length {header_len} does not fit in its {size} bytes")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise _corrupt(path, f"its header is not JSON: {err}") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a JSON object")
    header.pop("__metadata__", None)
    start, entries, end = 8 + header_len, [], 0
    for name, v in header.items():
        try:
            dtype, shape, (lo, hi) = v["dtype"], tuple(int(d) for d in v["shape"]), v["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise _corrupt(path, f"entry {name!r} lacks a dtype, shape or data_offsets") from None
        if dtype not in RAW_DTYPES:
            raise ValueError(f"{path} has dtype {dtype} (tensor {name}) that copd.merge does not support")
        if not (isinstance(lo, int) and isinstance(hi, int)) or hi - lo != math.prod(shape) * ITEMSIZE[dtype]:
            raise _corrupt(path, f"tensor {name} has data_offsets {[lo, hi]} for shape {list(shape)} {dtype}")
        entries.append((lo, name, TensorEntry(path, dtype, shape, start + lo)))
        end = max(end, hi)
    if start + end > size:
        raise ValueError(f"{path} is truncated ({size} bytes, its header needs {start + end}): re-save it")
    return {name: entry for _, name, entry in sorted(entries, key=lambda e: e[0])}


def scan_checkpoint(folder: Path) -> dict[str, TensorEntry]:
    """All tensors of a HF checkpoint folder (sharded with an index, or one model.safetensors), in on-disk order."""
    if not folder.is_dir():
        raise ValueError(f"input folder {folder} does not exist")
    if (folder / INDEX_NAME).is_file():
        files = sorted(set(_read_index(folder / INDEX_NAME).values()))
    elif (folder / SINGLE_NAME).is_file():
        files = [SINGLE_NAME]
    else:
        raise ValueError(f"{folder} has no {SINGLE_NAME} nor {INDEX_NAME}: pass a safetensors checkpoint folder")
    entries = {}
    for name in files:
        if not (folder / name).is_file():
            raise ValueError(f"{folder / name} is listed in {INDEX_NAME} but missing")
        entries.update(read_header(folder / name))
    return entries


def _read_index(path: Path) -> dict[str, str]:
    """The weight_map of a model.safetensors.index.json, checked."""
    fix = "re-download or regenerate it"
    raw = path.read_bytes()
    if raw.startswith(LFS_MAGIC):
        raise ValueError(f"{path} looks like a Git LFS pointer, not the index: run `git lfs pull` in its repo")
    try:
        weight_map = json.loads(raw)["weight_map"]
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}): {fix}") from None
    except (KeyError, TypeError):
        raise ValueError(f"{path} has no weight_map: {fix}") from None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise ValueError(f"{path} has a malformed weight_map (tensor name -> file name expected): {fix}")
    return weight_map


def pread(fd: int, entry: TensorEntry, start: int, out: np.ndarray) -> np.ndarray:
    """Fill `out` (flat, entry's raw dtype) with elements [start, start + len(out)) of entry's tensor (os.preadv)."""
    view, done = memoryview(out.view(np.uint8)), 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], entry.offset + start * out.itemsize + done)
        if got == 0:
            raise ValueError(f"{entry.path} is truncated: re-save the checkpoint")
        done += got
    return out


def plan_shards(sizes: Sequence[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
    """Greedy split of (name, nbytes), in order, into shards of at most max_shard_bytes (a bigger tensor: alone)."""
    shards, current, used = [], [], 0
    for name, nbytes in sizes:
        if current and used + nbytes > max_shard_bytes:
            shards.append(current)
            current, used = [], 0
        current.append(name)
        used += nbytes
    return shards + [current] if current or not shards else shards


def _writeback_starter() -> Callable[[int, int, int], None]:
    """fd, offset, nbytes -> start writing that range to disk without waiting (sync_file_range); no-op elsewhere."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return lambda fd, offset, nbytes: None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint], ctypes.c_int
    return lambda fd, offset, nbytes: fn(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE


start_writeback = _writeback_starter()


def write_shard(path: Path, specs: Sequence[tuple[str, str, tuple[int, ...], int]], make_source: Callable,
                threads: int = 1) -> None:  # fmt: skip
    """Write one safetensors file durably: the header from (name, dtype, shape, nbytes), then each tensor's bytes at
    its offset. `threads` workers take contiguous runs of tensors of about equal size; each calls make_source() for
    its own name -> chunks function (so buffers are never shared), pwrites the chunks and starts their write-back."""
    header, offsets, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, dtype, shape, nbytes in specs:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offsets.append(offset)
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # safetensors aligns the data to 8 bytes
    data_start, total = 8 + len(blob), max(offset, 1)
    runs = [[] for _ in range(threads)]
    for spec, start in zip(specs, offsets, strict=True):
        runs[start * threads // total].append((spec, data_start + start))

    def write_run(run: list) -> None:
        chunks_of, flushed = make_source(), run[0][1] if run else 0
        for (name, _, _, nbytes), pos in run:
            end = pos + nbytes
            for chunk in chunks_of(name):
                if stop.is_set():  # another worker failed or the caller was interrupted
                    return
                pos += pwrite(fd, chunk.reshape(-1).view(np.uint8), pos)
                if pos - flushed >= FLUSH_BYTES:
                    start_writeback(fd, flushed, pos - flushed)
                    flushed = pos
            if pos != end:
                raise RuntimeError(f"wrote {nbytes - end + pos} bytes of {name} to {path}, expected {nbytes}")

    fd, stop, pool = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), Event(), ThreadPoolExecutor(threads)
    try:
        pwrite(fd, struct.pack("<Q", len(blob)) + blob, 0)
        done, _ = wait([pool.submit(write_run, run) for run in runs], return_when=FIRST_EXCEPTION)
        for future in done:
            future.result()  # re-raises a worker's error
        os.fdatasync(fd)
    finally:
        stop.set()  # the other workers stop at their next chunk, not at the end of their run
        pool.shutdown()
        os.close(fd)


def pwrite(fd: int, data, pos: int) -> int:
    view, done = memoryview(data).cast("B"), 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], pos + done)
    return done


# ---------------------------------------------------------------- output folder
def write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fdatasync(f.fileno())


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_side_files(src: Path, dst: Path, out_code: str | None) -> None:
    """Copy config, generation config, tokenizer and processor files (every non-weight file) from src, durably."""
    for path in sorted(src.iterdir()):
        if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES):
            data = path.read_bytes()
            if path.name == "config.json" and out_code is not None:  # record the new dtype where the config has one
                config = json.loads(data)
                for key in ("dtype", "torch_dtype"):
                    if key in config:
                        config[key] = CONFIG_DTYPE_NAMES[out_code]
                data = (json.dumps(config, indent=2) + "\n").encode()
            write_durably(dst / path.name, data)
            shutil.copystat(path, dst / path.name)


def replace_folder(tmp: Path, out: Path) -> None:
    """Move the complete tmp to out; an existing out (allowed: empty, or --overwrite) is moved aside first, then
    deleted. tmp is fsync'ed before and the parent after, so the new name is durable when this returns."""
    fsync_dir(tmp)
    if not (out.exists() or out.is_symlink()):
        os.replace(tmp, out)
    else:
        old = out.parent / f"{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    fsync_dir(out.parent)


def remove_stale(out: Path) -> list[Path]:
    """Remove OUT.tmp-<pid> / OUT.old-<pid> left by killed merges (their pid is no longer running); returns them."""
    if not out.parent.is_dir():
        return []
    stale = []
    for path in out.parent.iterdir():
        prefix, _, pid = path.name.rpartition("-")
        if prefix in (f"{out.name}.tmp", f"{out.name}.old") and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            stale.append(path)
    return stale


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours from an earlier call in this process: not running any more
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
