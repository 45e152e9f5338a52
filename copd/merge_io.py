"""Safetensors I/O for `copd.merge`: header parsing, positioned reads and writes, shard planning, output folders.

No tensor math here: `copd.merge` plans the merge and feeds `write_shard` the merged chunks.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from threading import Event

import torch
from torch import Tensor

SINGLE_NAME, INDEX_NAME = "model.safetensors", "model.safetensors.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".index.json")
ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}  # fmt: skip
FLOAT_CODES = ("F64", "F32", "F16", "BF16")
CONFIG_DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes live."""

    path: Path  # the .safetensors file
    dtype: str  # safetensors dtype code, e.g. "BF16"
    shape: tuple[int, ...]  # tensor shape
    offset: int  # absolute byte offset of the tensor's data in the file


def read_header(path: Path) -> dict[str, TensorEntry]:
    """Tensors of one safetensors file, in on-disk order (parses the 8-byte length + JSON header only)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    items = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    start, end = 8 + header_len, 8 + header_len + max((v["data_offsets"][1] for v in header.values()), default=0)
    if end > path.stat().st_size:
        raise ValueError(f"{path} is truncated ({path.stat().st_size} bytes, its header needs {end}): re-save it")
    if unknown := {v["dtype"] for v in header.values()} - set(ST_DTYPES):
        raise ValueError(f"{path} has dtypes {sorted(unknown)} that copd.merge does not support")
    return {k: TensorEntry(path, v["dtype"], tuple(v["shape"]), start + v["data_offsets"][0]) for k, v in items}


def scan_checkpoint(folder: Path) -> dict[str, TensorEntry]:
    """All tensors of a HF checkpoint folder (sharded with an index, or one model.safetensors), in on-disk order."""
    if not folder.is_dir():
        raise ValueError(f"input folder {folder} does not exist")
    if (folder / INDEX_NAME).is_file():
        files = sorted(set(json.loads((folder / INDEX_NAME).read_text())["weight_map"].values()))
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


def pread(fd: int, entry: TensorEntry, start: int, out: Tensor) -> Tensor:
    """Fill `out` (flat, entry's dtype) with elements [start, start + len(out)) of entry's tensor, using os.preadv."""
    view, done = memoryview(out.view(torch.uint8).numpy()), 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], entry.offset + start * out.element_size() + done)
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


def write_shard(path: Path, specs: Sequence[tuple[str, str, tuple[int, ...], int]], make_source: Callable,
                threads: int = 1) -> None:  # fmt: skip
    """Write one safetensors file: the header from (name, dtype, shape, nbytes), then each tensor's bytes at its
    offset. `threads` workers take contiguous runs of tensors of about equal size; each calls make_source() for its
    own name -> chunks function (so buffers are never shared) and pwrites the chunks."""
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
        chunks_of = make_source()
        for (name, _, _, nbytes), pos in run:
            end = pos + nbytes
            for chunk in chunks_of(name):
                if stop.is_set():  # another worker failed or the caller was interrupted
                    return
                pos += pwrite(fd, chunk.reshape(-1).view(torch.uint8).numpy(), pos)
            if pos != end:
                raise RuntimeError(f"wrote {nbytes - end + pos} bytes of {name} to {path}, expected {nbytes}")

    fd, stop, pool = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), Event(), ThreadPoolExecutor(threads)
    try:
        pwrite(fd, struct.pack("<Q", len(blob)) + blob, 0)
        done, _ = wait([pool.submit(write_run, run) for run in runs], return_when=FIRST_EXCEPTION)
        for future in done:
            future.result()  # re-raises a worker's error
    finally:
        stop.set()  # the other workers stop at their next chunk, not at the end of their run
        pool.shutdown()
        os.close(fd)


def pwrite(fd: int, data, pos: int) -> int:
    view, done = memoryview(data).cast("B"), 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], pos + done)
    return done


# ---------------------------------------------------------------- checkpoint merge
def copy_side_files(src: Path, dst: Path, out_code: str | None) -> None:
    """Copy config, generation config, tokenizer and processor files (every non-weight file) from src."""
    for path in sorted(src.iterdir()):
        if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(path, dst / path.name)
    if out_code is not None and (dst / "config.json").is_file():  # record the new dtype where the config has one
        config = json.loads((dst / "config.json").read_text())
        for key in ("dtype", "torch_dtype"):
            if key in config:
                config[key] = CONFIG_DTYPE_NAMES[out_code]
        (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def replace_folder(tmp: Path, out: Path) -> None:
    """Move tmp to out; an existing out (allowed: empty, or --overwrite) is moved aside first, then deleted."""
    if not (out.exists() or out.is_symlink()):
        os.replace(tmp, out)
        return
    old = out.parent / f"{out.name}.old-{os.getpid()}"
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
