"""Shared pieces of the converters: reading a public layout with ``datasets``, checking media, writing verl rows.

A verl row (what ``RLHFDataset`` reads): ``prompt`` (a chat list whose text holds one ``<image>`` / ``<video>``
placeholder per item, which verl turns into Qwen3-VL's vision segments), ``images`` (a list of ``{"bytes": ...}``),
``videos`` (a list of ``{"video": path or [frame paths]}``), ``data_source``, ``ability``,
``reward_model = {"style": "rule", "ground_truth": ...}`` and ``extra_info`` (what ``recipe.copd.scorers`` reads:
``answer_type``, ``choices``, ``precision``, ``numeric_kind``).
"""

from __future__ import annotations

import glob
import io
import os
import re
from collections.abc import Iterable

import pandas as pd

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices, and put the letter within \\boxed{}."
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LETTER_PREFIX = re.compile(r"^\(?([A-Z])\s*[\.\):]\s*")
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov")


class DataError(ValueError):
    """Bad input: the message names the row and the field."""


def find_files(path: str, split: str | None) -> list[str]:
    """The data files of ``split`` under ``path`` (a file, or a folder in the Hub's ``<split>-*.parquet`` /
    ``<split>.jsonl`` layout, at any depth); a file is taken as is."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise DataError(f"--input {path}: no such file or folder")
    files = []
    for ext in ("parquet", "jsonl", "json"):
        files += sorted(glob.glob(os.path.join(path, "**", f"*.{ext}"), recursive=True))
    if split:
        files = [f for f in files if os.path.basename(f).split(".")[0].split("-")[0] == split]
    if not files:
        raise DataError(f"--input {path}: no parquet/json/jsonl file of split {split!r} in it (use --split)")
    return files


def ext_of(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def read_rows(files: list[str]) -> list[dict]:
    """All rows of the files (one format), read with ``datasets`` (images decode to PIL, as on the Hub)."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    exts = {ext_of(f) for f in files}
    if len(exts) > 1:
        raise DataError(f"mixed file formats {sorted(exts)} in the input: point --input at one kind")
    builder = "parquet" if exts == {"parquet"} else "json"
    try:
        ds = datasets.load_dataset(builder, data_files=files, split="train")
    except Exception as err:  # datasets raises many types for a broken file; name the files, keep the reason
        raise DataError(f"cannot read {files[0]}{' ...' if len(files) > 1 else ''}: {err}") from err
    return [dict(r) for r in ds]


def field(row: dict, i: int, *names: str, required: bool = True):
    """The first of ``names`` present (case-insensitive) and non-empty in ``row``."""
    lower = {k.lower(): k for k in row}
    for name in names:
        key = lower.get(name.lower())
        if key is not None and row[key] is not None and not (isinstance(row[key], str) and not row[key].strip()):
            return row[key]
    if required:
        raise DataError(f"row {i}: missing field {' / '.join(names)} (columns: {sorted(row)})")
    return None


def image_bytes(value, i: int, name: str, root: str | None = None) -> bytes:
    """The encoded bytes of an image given as PIL, ``{"bytes", "path"}`` or a path; checked to decode."""
    from PIL import Image

    if isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format=value.format or "PNG")
        data = buf.getvalue()
    elif isinstance(value, dict) and value.get("bytes"):
        data = value["bytes"]
    elif isinstance(value, (str, dict)):
        path = value if isinstance(value, str) else value.get("path")
        path = path if not root or os.path.isabs(path or "") else os.path.join(root, path)
        if not path or not os.path.isfile(path):
            raise DataError(f"row {i}: field {name}: image file not found: {path}")
        with open(path, "rb") as f:
            data = f.read()
    else:
        raise DataError(f"row {i}: field {name}: not an image ({type(value).__name__})")
    try:
        Image.open(io.BytesIO(data)).verify()
    except Exception as err:  # PIL raises several types on corrupt data
        raise DataError(f"row {i}: field {name}: unreadable image ({err})") from err
    return data


class MediaIndex:
    """Finds a video named by a data set (a path relative to the root, or only a file/folder name) under a root."""

    def __init__(self, root: str):
        self.root = root
        self._by_name: dict[str, list[str]] | None = None

    def _index(self) -> dict[str, list[str]]:
        if self._by_name is None:
            self._by_name = {}
            for dirpath, dirnames, filenames in os.walk(self.root):
                for name in filenames + dirnames:
                    self._by_name.setdefault(name, []).append(os.path.join(dirpath, name))
        return self._by_name

    def video(self, ref: str, i: int, name: str) -> dict:
        """``{"video": abs path}`` for a file; ``{"video": [frame paths]}`` for a folder of frames."""
        path = os.path.normpath(ref if os.path.isabs(ref) else os.path.join(self.root, ref))
        if not os.path.exists(path):
            hits = [p for stem in (os.path.basename(ref), ref + ".mp4") for p in self._index().get(stem, [])]
            if len(hits) > 1:
                raise DataError(f"row {i}: field {name}: {ref!r} matches several files under {self.root}: {hits[:3]}")
            if not hits:
                raise DataError(f"row {i}: field {name}: video not found: {path}")
            path = hits[0]
        path = os.path.abspath(path)
        if os.path.isdir(path):
            frames = sorted(
                os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith((".jpg", ".jpeg", ".png"))
            )
            if not frames:
                raise DataError(f"row {i}: field {name}: video folder has no .jpg/.png frames: {path}")
            return {"video": frames}
        if not path.lower().endswith(VIDEO_EXTS):
            raise DataError(f"row {i}: field {name}: not a video file ({'/'.join(VIDEO_EXTS)}): {path}")
        return {"video": path}


def options_block(options: list[str]) -> str:
    """``A. first\\nB. second`` (options that already start with "A." are kept as they are)."""
    return "\n".join(f"{LETTERS[k]}. {strip_letter(opt, k)}" for k, opt in enumerate(options))


def strip_letter(option: str, k: int) -> str:
    """An option's text without its letter prefix ("A. ", "(A) ", "A) ", "A: ") when it is the k-th letter."""
    opt = str(option).strip()
    m = _LETTER_PREFIX.match(opt)
    return opt[m.end() :].strip() if m and m.group(1) == LETTERS[k] else opt


def info(answer_type: str, index: int, split: str | None, choices=(), precision=None, numeric_kind=None, **meta):
    """``extra_info`` with the same keys on every row (parquet needs one struct type); data-set fields go to meta."""
    import json

    return {
        "answer_type": answer_type,
        "choices": [str(c) for c in choices],
        "precision": None if precision is None else float(precision),
        "numeric_kind": numeric_kind,
        "index": int(index),
        "split": split or "",
        "meta": json.dumps(meta, default=str),
    }


def letter_of(answer: str, options: list[str], i: int) -> str:
    """The gold letter: ``answer`` is a letter, "(B)", or the text of one option."""
    a = str(answer).strip().strip("()").strip()
    if len(a) == 1 and a.upper() in LETTERS[: len(options)]:
        return a.upper()
    texts = [strip_letter(o, k).lower() for k, o in enumerate(options)]
    if a.lower() in texts:
        return LETTERS[texts.index(a.lower())]
    raise DataError(f"row {i}: field answer: {answer!r} is neither an option letter nor an option's text")


def make_row(
    data_source: str,
    ability: str,
    text: str,
    answer: str,
    extra_info: dict,
    images: list[bytes] = (),
    videos: list[dict] = (),
) -> dict:
    """One verl row; the placeholders come first, one per image / video, then the text."""
    text = text.replace("<image>", "").replace("<video>", "").strip()  # the placeholders are ours to place
    content = "<image>" * len(images) + "<video>" * len(videos) + text
    row = {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": content}],
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": str(answer).strip()},
        "extra_info": extra_info,
    }
    if images:
        row["images"] = [{"bytes": b} for b in images]
    if videos:
        row["videos"] = list(videos)
    return row


def write_parquet(rows: Iterable[dict], path: str) -> int:
    """Write the rows to ``path`` through a temp file and a rename (no partial file on failure)."""
    rows = list(rows)
    if not rows:
        raise DataError("no rows to write (empty input or --limit 0)")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        pd.DataFrame(rows).to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return len(rows)


def decode_frames(path: str, out_dir: str, fps: float = 2.0, max_frames: int = 32) -> list[str]:
    """Decode an mp4 into JPEG frames at ``fps`` (at most ``max_frames``, evenly spread) with PyAV."""
    import av

    os.makedirs(out_dir, exist_ok=True)
    with av.open(path) as container:
        frames = [(float(f.time or 0.0), f.to_image()) for f in container.decode(video=0)]
    if not frames:
        raise DataError(f"video {path}: no frames decoded")
    step = 1.0 / fps
    picked, next_t = [], frames[0][0]
    for t, img in frames:
        if t + 1e-9 >= next_t:
            picked.append(img)
            next_t = t + step
    if len(picked) > max_frames:
        picked = [picked[round(k * (len(picked) - 1) / (max_frames - 1))] for k in range(max_frames)]
    names = []
    for k, img in enumerate(picked):
        names.append(os.path.join(out_dir, f"{k:05d}.jpg"))
        img.convert("RGB").save(names[-1], format="JPEG")
    return names


def uniform_videos(rows: list[dict], frames_dir: str, tmp_dir: str) -> bool:
    """Parquet needs one type per column: when a file mixes video files and frame lists (MVBench), decode the
    files into frames under ``tmp_dir`` (renamed to ``frames_dir`` by the caller). Returns whether it decoded."""
    kinds = {isinstance(v["video"], str) for r in rows for v in r.get("videos", [])}
    if kinds != {True, False}:
        return False
    for i, row in enumerate(rows):
        for j, v in enumerate(row.get("videos", [])):
            if isinstance(v["video"], str):
                names = decode_frames(v["video"], os.path.join(tmp_dir, f"{i:06d}_{j}"))
                v["video"] = [os.path.join(os.path.abspath(frames_dir), os.path.relpath(n, tmp_dir)) for n in names]
    return True
