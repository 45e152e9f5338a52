"""``python -m recipe.copd.data NAME --input PATH --output DIR``: a public data set's local copy -> verl parquet.

Writes ``DIR/<data_source>_<split>.parquet`` (``--name`` overrides the file name; a file that would mix video
files and frame folders, as MVBench does, gets its videos decoded into ``<file>_frames/``): e.g. ``dapo_math`` writes
``text_train.parquet``, the file the presets read from ``$COPD_DATA``; ``math500`` writes ``math500_test.parquet``.
Bad input (a missing field, an unreadable image, a missing video, an unknown NAME) prints one line naming the row
and the field and exits 2, before anything is written.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys

from recipe.copd.data.common import DataError, find_files, read_rows, uniform_videos, write_parquet
from recipe.copd.data.registry import DATASETS


def load(name: str, path: str, split: str | None) -> list[dict]:
    """The input rows; MVBench's per-task files (``json/<task>.json``) keep their task name as ``__task__``."""
    if name == "mvbench" and os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "json", "*.json"))) or find_files(path, None)
        rows = []
        for f in files:
            task = os.path.splitext(os.path.basename(f))[0]
            rows += [dict(r, __task__=task) for r in read_rows([f])]
        return rows
    return read_rows(find_files(path, split))


def convert(
    name: str,
    input_path: str,
    output_dir: str,
    split: str | None = None,
    data_source: str | None = None,
    file_name: str | None = None,
    limit: int | None = None,
    media_root: str | None = None,
) -> tuple[str, int]:
    """Convert and write; returns (the parquet path, its row count). Raises ``DataError`` on bad input."""
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}: use one of {', '.join(DATASETS)}")
    spec = DATASETS[name]
    split = split or spec.split
    rows = load(name, input_path, split)
    if limit is not None:
        rows = rows[:limit]
    root = media_root or (input_path if os.path.isdir(input_path) else os.path.dirname(os.path.abspath(input_path)))
    source = data_source or spec.data_source
    out_rows = spec.convert(rows, source, split, root=root)
    path = os.path.join(output_dir, f"{file_name or f'{source}_{split or spec.role}'}.parquet")
    frames_dir = path[: -len(".parquet")] + "_frames"
    tmp_dir = f"{frames_dir}.tmp-{os.getpid()}"
    try:
        if uniform_videos(out_rows, frames_dir, tmp_dir):
            if os.path.exists(frames_dir):
                shutil.rmtree(frames_dir)
            n = write_parquet(out_rows, path)
            os.replace(tmp_dir, frames_dir)
            return path, n
        return path, write_parquet(out_rows, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipe.copd.data", description=__doc__.split("\n")[0])
    p.add_argument("name", help=f"one of: {', '.join(DATASETS)}")
    p.add_argument("--input", required=True, help="the local copy: a data file, or the data set's folder")
    p.add_argument("--output", required=True, help="folder of the verl parquet file")
    p.add_argument("--split", help="the split to read (default: the data set's usual one)")
    p.add_argument("--data-source", help="write this data_source (default: the branch or the benchmark name)")
    p.add_argument("--name", dest="file_name", help="file name without .parquet (default: <data_source>_<split>)")
    p.add_argument("--limit", type=int, help="keep only the first N rows")
    p.add_argument("--media-root", help="folder that relative image/video paths start from (default: --input)")
    args = p.parse_args(argv)
    try:
        path, n = convert(args.name, args.input, args.output, args.split, args.data_source, args.file_name,
                          args.limit, args.media_root)  # fmt: skip
    except DataError as err:
        print(f"copd.data: error: {args.name}: {err}", file=sys.stderr)
        return 2
    print(f"copd.data: {args.name}: {n} rows -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
