"""Exact-match reward of the toy skills, in verl's custom reward function signature.

Use it with `reward.custom_reward_function.path=<this file> reward.custom_reward_function.name=compute_score`.
verl's reward managers (e.g. `experimental/reward_loop/reward_manager/naive.py`) decode the response with
`skip_special_tokens=True`, so `solution_str` is usually just "82"; a decode that keeps special tokens gives
"82<|im_end|>" (possibly followed by padding), which is cut at the first end-of-turn marker. Standard library only:
verl imports this file in every reward worker.
"""

from __future__ import annotations

END_MARKERS = ("<|im_end|>", "<|endoftext|>")


def extract_answer(solution_str: str) -> str:
    """The model's answer: the response up to its first end marker, whitespace stripped."""
    for marker in END_MARKERS:
        solution_str = solution_str.split(marker, 1)[0]
    return solution_str.strip()


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None, **kwargs):
    """1.0 when the answer equals `ground_truth` exactly (after stripping whitespace), else 0.0."""
    return 1.0 if extract_answer(solution_str) == str(ground_truth).strip() else 0.0
