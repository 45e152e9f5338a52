"""The embedded default's two skills: 2-digit addition ("37+45=") and 3-digit x 1-digit multiplication ("374*6="),
each with its verifier's answer format: addition answers plain ("82"), multiplication answers with a closing period
("2244."). The reward is an exact match of that string.

Why formats: on this tiny model, GRPO from a settled warm start improves the arithmetic itself by ~0.02 in 20 steps
(docs/LOG.md, 2026-12-03), far less than the seed noise of a short run. What RL does learn within minutes is which
answer style each skill's verifier wants, and that is where the skills compete: the warm start (`warm_problems`)
shows both styles on both skills, picked by an incidental feature of the prompt (a closing period mostly when the
first operand ends in 0, 1 or 2: `WARM_DOT_DIGITS`, `WARM_STYLE_P`), so the base model answers addition in the wrong
style on ~30% of prompts and multiplication on ~70%. RL on one skill moves the style of both (the model shares one
answer head), so training addition lowers multiplication and the reverse: the two skills trade off, as the paper's
domains do through their answer formats. Gains generalise: the style is learned on train prompts and measured on
held-out ones.

Each skill's operand pairs are split once, by a hash of the pair, into disjoint pools that do not depend on the seed,
so no seed can leak a test pair into training: `warm` (the supervised warm start's problems), `train` (the RL
prompts), `val` and `test`. The spaces are far larger than what training sees (addition 8,100 pairs, multiplication
7,200; test pools of ~2,000 and ~1,800), so held-out accuracy measures what generalises, not memorised pairs (the
first toy's 2-digit x 1-digit multiplication had 720 pairs and its train reward was 0.96-1.0 from the first RL step).
The seed picks and orders problems inside the train and warm pools; val and test problems are the same for every
seed, so runs over seeds are scored on one held-out set. The parquet files follow the layout verl's `RLHFDataset`
reads (chat-list prompt, rule ground truth).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pandas as pd

SKILLS = ("add", "mul")
SPLITS = ("train", "val", "test", "warm")
FIXED_SPLITS = ("val", "test")  # drawn with one seed (0) whatever the run's seed: one held-out set for all runs
# Operand ranges per skill: (first operand range, second operand range, operator).
_OPERANDS = {"add": (range(10, 100), range(10, 100), "+"), "mul": (range(100, 1000), range(2, 10), "*")}
# Hash bucket (0-99) bounds of each split: test [0, 25), val [25, 35), warm [35, 65), train [65, 100).
_SPLIT_BUCKETS = {"test": (0, 25), "val": (25, 35), "warm": (35, 65), "train": (65, 100)}
#: The closing string of each skill's answers, as its verifier (the exact-match reward) wants them.
ANSWER_SUFFIX = {"add": "", "mul": "."}
#: The warm start's answer style: a closing period with probability WARM_STYLE_P when the first operand's last digit
#: is in WARM_DOT_DIGITS, with probability 1 - WARM_STYLE_P otherwise (whatever the skill).
WARM_DOT_DIGITS = (0, 1, 2)
WARM_STYLE_P = 0.7
_DATA_VERSION = 3  # bump when the problem generator changes, so cached parquet files are rebuilt


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
    """One problem: the prompt text ("37+45=", "374*6=") and the exact answer in the skill's format ("82", "2244.")."""
    _, _, op = _OPERANDS[skill]
    answer = x + y if skill == "add" else x * y
    return {"prompt": f"{x}{op}{y}=", "answer": f"{answer}{ANSWER_SUFFIX[skill]}"}


def answer_value(answer: str) -> str:
    """An answer without its style (whitespace and a closing period stripped): "2244." -> "2244"."""
    return answer.strip().removesuffix(".")


def warm_problems(skill: str, n: int, seed: int) -> list[dict]:
    """`n` problems of the `warm` pool with answers in the warm start's mixed style (see the module docstring): the
    value, then "." or nothing, drawn per problem with a seeded generator."""
    rng = random.Random(f"{seed}:{skill}:warm-style")
    out = []
    for p in make_problems(skill, n, seed, "warm"):
        x = int(p["prompt"].split(_OPERANDS[skill][2])[0])
        p_dot = WARM_STYLE_P if x % 10 in WARM_DOT_DIGITS else 1 - WARM_STYLE_P
        out.append({"prompt": p["prompt"], "answer": answer_value(p["answer"]) + ("." if rng.random() < p_dot else "")})
    return out


def make_problems(skill: str, n: int, seed: int, split: str) -> list[dict]:
    """`n` problems of `skill` from `split`'s pool, deterministic in (skill, n, seed, split); val and test ignore
    `seed` (`FIXED_SPLITS`).

    Pairs are drawn without replacement; when `n` exceeds the pool, further shuffled passes over the pool follow, so
    every pair appears either floor(n / pool) or ceil(n / pool) times.
    """
    pool = operand_pool(skill, split)
    rng = random.Random(f"{0 if split in FIXED_SPLITS else seed}:{skill}:{split}")
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
    seed = 0 if split in FIXED_SPLITS else seed
    args = {"skill": skill, "n": n, "seed": seed, "split": split, "version": _DATA_VERSION}
    return hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]


def build_toy_data(
    out_dir: str | Path, n_train: int = 2000, n_val: int = 200, n_test: int = 1000, seed: int = 0
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
