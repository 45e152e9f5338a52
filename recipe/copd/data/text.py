"""Text math sets: problem/answer files (AIME, HMMT, MATH-500, Minerva, DeepScaleR, MATH) and DAPO-Math's verl file."""

from __future__ import annotations

from recipe.copd.data.common import MATH_INSTRUCTION, DataError, field, info, make_row
from recipe.copd.scorers import last_boxed


def problem_answer(rows: list[dict], data_source: str, split: str | None, **_) -> list[dict]:
    """``problem`` (or ``question``) and ``answer`` (or the last ``\\boxed{}`` of ``solution``), any capitalisation:
    HuggingFaceH4/aime_2024 and MATH-500, math-ai/aime25 and minervamath, MathArena/hmmt_feb_2025,
    agentica-org/DeepScaleR-Preview-Dataset, hendrycks MATH."""
    out = []
    for i, row in enumerate(rows):
        question = field(row, i, "problem", "question")
        answer = field(row, i, "answer", "final_answer", required=False)
        if answer is None:
            solution = field(row, i, "answer", "solution")
            answer = last_boxed(str(solution))
            if answer is None:
                raise DataError(f"row {i}: field solution: no answer and no \\boxed{{}} in the solution")
        meta = {k: row[k] for k in ("id", "unique_id", "subject", "level", "type", "problem_idx") if k in row}
        text = f"{str(question).strip()}\n\n{MATH_INSTRUCTION}"
        out.append(make_row(data_source, "math", text, str(answer), info("math", i, split, **meta)))
    return out


def verl_math(rows: list[dict], data_source: str, split: str | None, **_) -> list[dict]:
    """DAPO-Math-17k (BytedTsinghua-SIA): already verl rows (``prompt`` chat list, ``reward_model.ground_truth``);
    the prompt asks for a final "Answer:" line, which the math scorer reads."""
    out = []
    for i, row in enumerate(rows):
        prompt = field(row, i, "prompt")
        gt = (field(row, i, "reward_model") or {}).get("ground_truth")
        if not isinstance(prompt, list) or not prompt or "content" not in prompt[-1]:
            raise DataError(f"row {i}: field prompt: not a chat list of {{role, content}}")
        if gt is None:
            raise DataError(f"row {i}: field reward_model.ground_truth: missing")
        out.append(make_row(data_source, "math", prompt[-1]["content"], str(gt), info("math", i, split)))
    return out
