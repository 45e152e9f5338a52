"""A verifiable task a randomly initialised tiny model learns by GRPO in minutes: answer with characters of a class.

Prompt: "Write 8 digits. (tag)" with a random tag; reward = the fraction of the first 8 response characters that
are digits (shorter answers score their missing characters as 0). A random character model starts near 0.1 (10 of
~100 ids are digits), so every group of samples carries signal. The class is the row's ground truth (a string of
allowed characters), so the same reward also serves other classes. Standard library only: verl imports this file
in every reward worker (`reward.custom_reward_function.path=<this file>`).
"""

import random
import string

#: The demo's character class and answer length.
DIGITS = string.digits
ANSWER_CHARS = 8
DATA_SOURCE = "char_class"
END_MARKERS = ("<|im_end|>", "<|endoftext|>")


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None, **kwargs):
    """Fraction of the first ANSWER_CHARS characters of the answer that lie in `ground_truth` (a character set)."""
    for marker in END_MARKERS:
        solution_str = solution_str.split(marker, 1)[0]
    allowed = set(ground_truth)
    return sum(ch in allowed for ch in solution_str[:ANSWER_CHARS]) / ANSWER_CHARS


def make_rows(n: int, seed: int, split: str) -> list[dict]:
    """`n` rows in the layout verl's RLHFDataset reads (chat prompt, rule ground truth, extra_info.index)."""
    rng = random.Random(f"{seed}:{split}")
    rows = []
    for i in range(n):
        tag = "".join(rng.choice(string.ascii_lowercase) for _ in range(3))
        rows.append(
            {
                "data_source": DATA_SOURCE,
                "prompt": [{"role": "user", "content": f"Write {ANSWER_CHARS} digits. ({tag})"}],
                "ability": "char_class",
                "reward_model": {"style": "rule", "ground_truth": DIGITS},
                "extra_info": {"index": i, "split": split},
            }
        )
    return rows


def write_parquet(path: str, n: int, seed: int, split: str) -> str:
    """Write `make_rows(n, seed, split)` to a parquet file; return its path."""
    import pandas as pd

    pd.DataFrame(make_rows(n, seed, split)).to_parquet(path)
    return path
