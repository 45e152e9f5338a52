"""The embedded default's two skills: 2-digit addition ("37+45=") and 2-digit x 1-digit multiplication ("37*6=").

Each skill's operand pairs are split once, by a hash of the pair, into disjoint train / val / test pools that do not
depend on the seed, so no seed can leak a test pair into training. The seed only picks and orders problems inside a
pool. The parquet files follow the layout verl's `RLHFDataset` reads (chat-list prompt, rule ground truth).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pandas as pd

SKILLS = ("add", "mul")
SPLITS = ("train", "val", "test")
# Operand ranges per skill: (first operand range, second operand range, operator).
_OPERANDS = {"add": (range(10, 100), range(10, 100), "+"), "mul": (range(10, 100), range(2, 10), "*")}
# Hash bucket (0-99) bounds of each split: test [0, 25), val [25, 35), train [35, 100).
_SPLIT_BUCKETS = {"test": (0, 25), "val": (25, 35), "train": (35, 100)}
_DATA_VERSION = 1  # bump when the problem generator changes, so cached parquet files are rebuilt


def _check(skill: str, split: str) -> None:
    if skill not in SKILLS:
        raise ValueError(f"unknown skill {skill!r}: use one of {SKILLS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {SPLITS}")


def split_of(skill: str, x: int, y: int) -> str:
    """The split an operand pair belongs to: a stable hash (sha256, not Python's salted hash) of the pair."""
    bucket = int(hashlib.sha256(f"{skill}:{x}:{y}".encode()).hexdigest(), 16) % 100
    return next(name for name, (lo, hi) in _SPLIT_BUCKETS.items() if lo <= bucket < hi)


def operand_pool(skill: str, split: str) -> list[tuple[int, int]]:
    """All operand pairs of one skill in one split, in a fixed order."""
    _check(skill, split)
    xs, ys, _ = _OPERANDS[skill]
    return [(x, y) for x in xs for y in ys if split_of(skill, x, y) == split]


def problem(skill: str, x: int, y: int) -> dict:
    """One problem: the prompt text ("37+45=") and the exact answer string ("82")."""
    _, _, op = _OPERANDS[skill]
    answer = x + y if skill == "add" else x * y
    return {"prompt": f"{x}{op}{y}=", "answer": str(answer)}


def make_problems(skill: str, n: int, seed: int, split: str) -> list[dict]:
    """`n` problems of `skill` from `split`'s pool, deterministic in (skill, n, seed, split).

    Pairs are drawn without replacement; when `n` exceeds the pool, further shuffled passes over the pool follow, so
    every pair appears either floor(n / pool) or ceil(n / pool) times.
    """
    pool = operand_pool(skill, split)
    rng = random.Random(f"{seed}:{skill}:{split}")
    pairs: list[tuple[int, int]] = []
    while len(pairs) < n:
        pairs += rng.sample(pool, len(pool))
    return [problem(skill, x, y) for x, y in pairs[:n]]


def _rows(skill: str, problems: list[dict], split: str) -> list[dict]:
    return [
        {
            "data_source": f"copd_toy/{skill}",
            "prompt": [{"role": "user", "content": p["prompt"]}],
            "ability": "arithmetic",
            "reward_model": {"style": "rule", "ground_truth": p["answer"]},
            "extra_info": {"split": split, "index": i, "skill": skill},
        }
        for i, p in enumerate(problems)
    ]


def write_verl_parquet(path: str | Path, skill: str, n: int, seed: int, split: str) -> Path:
    """Write `make_problems(skill, n, seed, split)` as a verl RL parquet file, atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(_rows(skill, make_problems(skill, n, seed, split), split))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def read_problems(path: str | Path) -> list[dict]:
    """The (prompt, answer) problems of a parquet file written by `write_verl_parquet`."""
    frame = pd.read_parquet(path)
    return [
        {"prompt": chat[-1]["content"], "answer": str(reward["ground_truth"])}
        for chat, reward in zip(frame["prompt"], frame["reward_model"], strict=True)
    ]


def _file_hash(skill: str, n: int, seed: int, split: str) -> str:
    args = {"skill": skill, "n": n, "seed": seed, "split": split, "version": _DATA_VERSION}
    return hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]


def build_toy_data(
    out_dir: str | Path, n_train: int = 2000, n_val: int = 200, n_test: int = 300, seed: int = 0
) -> dict[str, dict[str, Path]]:
    """Write {add, mul} x {train, val, test} parquet files as `{out_dir}/{skill}_{split}.parquet`.

    Idempotent: `{out_dir}/manifest.json` records a hash of each file's arguments; a file that exists with the same
    hash is kept as it is. Returns `{skill: {split: path}}`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    paths: dict[str, dict[str, Path]] = {}
    for skill in SKILLS:
        paths[skill] = {}
        for split, n in sizes.items():
            path = out_dir / f"{skill}_{split}.parquet"
            digest = _file_hash(skill, n, seed, split)
            if not (path.exists() and manifest.get(path.name) == digest):
                write_verl_parquet(path, skill, n, seed, split)
                manifest[path.name] = digest
            paths[skill][split] = path
    tmp = manifest_path.with_name(f".manifest.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, manifest_path)
    return paths
