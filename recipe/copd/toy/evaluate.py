"""Greedy exact-match accuracy of toy models per skill, and the results table.

Prompt ids are built exactly as verl's agent loop builds them: `SingleTurnAgentLoop` asks the continuous token builder
(`utils/tokenizer/continuous_token.py::ContinuousTokenBuilder._render_tokens`) for
`apply_chat_template([user message], tokenize=True, add_generation_prompt=True)` with the data config's (empty by
default) chat template kwargs, so evaluation prompts equal the rollout's prompts token for token.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel

from recipe.copd.toy.reward import compute_score
from recipe.copd.toy.tasks import SKILLS, read_problems
from verl_patches.hf_rollout.generation import left_pad  # the rollout's own padding: eval pads as training does


def chat_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of one user turn plus the assistant generation prompt, as verl's agent loop renders them."""
    out = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    ids = out["input_ids"] if hasattr(out, "keys") else out  # transformers 5 returns a BatchEncoding
    return [int(i) for i in ids]


def _load(model_or_path, tokenizer):
    if isinstance(model_or_path, PreTrainedModel):
        if tokenizer is None:
            raise ValueError("greedy_accuracy got a model object without a tokenizer: pass the tokenizer too")
        return model_or_path, tokenizer
    model = AutoModelForCausalLM.from_pretrained(model_or_path, dtype=torch.float32)
    return model, tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(model_or_path)


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[str], batch_size: int = 128, max_new_tokens: int = 8) -> list[str]:
    """Greedy responses (decoded with `skip_special_tokens=True`, as verl's reward loop does) to `prompts`."""
    gen_config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    was_training = model.training
    model.eval()
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        ids = [chat_prompt_ids(tokenizer, p) for p in prompts[start : start + batch_size]]
        input_ids_B_T, attention_mask_B_T = left_pad(ids, tokenizer.pad_token_id)
        out_B_S = model.generate(
            input_ids=input_ids_B_T, attention_mask=attention_mask_B_T, generation_config=gen_config
        )
        responses = out_B_S[:, input_ids_B_T.shape[1] :]
        answers += tokenizer.batch_decode(responses, skip_special_tokens=True)
    model.train(was_training)
    return answers


def greedy_scores(
    model_or_path, tokenizer, problems: list[dict], batch_size: int = 128, max_new_tokens: int = 8
) -> list[float]:
    """Reward (1 or 0, from `reward.compute_score`) of the greedy answer to each of `problems` ({prompt, answer}).

    `model_or_path` is a model or an HF folder; `tokenizer` may be None for a folder (loaded from it).
    """
    if not problems:
        raise ValueError("greedy_accuracy got no problems: pass a non-empty list of {prompt, answer} dicts")
    model, tokenizer = _load(model_or_path, tokenizer)
    answers = greedy_answers(model, tokenizer, [p["prompt"] for p in problems], batch_size, max_new_tokens)
    return [float(compute_score("copd_toy", a, p["answer"])) for a, p in zip(answers, problems, strict=True)]


def greedy_accuracy(
    model_or_path, tokenizer, problems: list[dict], batch_size: int = 128, max_new_tokens: int = 8
) -> float:
    """Fraction of `problems` ({prompt, answer}) whose greedy answer gets reward 1 (see `greedy_scores`)."""
    scores = greedy_scores(model_or_path, tokenizer, problems, batch_size, max_new_tokens)
    return sum(scores) / len(scores)


@contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to ``n`` inside the block (``make demo`` runs with OMP_NUM_THREADS=1 for the Ray
    workers; the evaluation runs after them, with every core free)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: Threads and batch of the held-out evaluation: 2 threads and batches of 512 score the demo's four models on 2 x 1000
#: problems in 6.8 s against 10.2 s for 1 thread and 128, side by side on the 2-core machine (2026-12-07, session
#: 12), with identical per-problem scores.
EVAL_THREADS, EVAL_BATCH = 2, 512


def evaluate_scores(
    named_paths: dict[str, str | Path],
    test_files_or_problems: dict[str, str | Path | list[dict]],
    batch_size: int = EVAL_BATCH,
    max_new_tokens: int = 8,
    threads: int = EVAL_THREADS,
) -> dict[str, dict[str, list[float]]]:
    """Per-problem greedy scores of each named model on each skill: `{name: {skill: [0/1 per problem]}}`.

    `test_files_or_problems` maps a skill to a parquet file written by `tasks.write_verl_parquet` or to a problem list.
    Every model sees the same problems in the same order, so two models' scores pair up problem by problem.
    `threads`: torch threads while scoring (restored after).
    """
    problems = {
        skill: src if isinstance(src, list) else read_problems(src) for skill, src in test_files_or_problems.items()
    }
    results: dict[str, dict[str, list[float]]] = {}
    with torch_threads(threads):
        for name, path in named_paths.items():
            model, tokenizer = _load(path, None)
            results[name] = {
                skill: greedy_scores(model, tokenizer, probs, batch_size, max_new_tokens)
                for skill, probs in problems.items()
            }
    return results


def evaluate_models(
    named_paths: dict[str, str | Path],
    test_files_or_problems: dict[str, str | Path | list[dict]],
    batch_size: int = EVAL_BATCH,
    max_new_tokens: int = 8,
) -> dict[str, dict[str, float]]:
    """Greedy accuracy of each named model on each skill: `{name: {skill: acc}}`, in the given order."""
    return accuracies(evaluate_scores(named_paths, test_files_or_problems, batch_size, max_new_tokens))


def accuracies(scores: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """`{name: {skill: mean score}}` of `evaluate_scores`' output."""
    return {name: {skill: sum(v) / len(v) for skill, v in per.items()} for name, per in scores.items()}


def paired_gain(scores: list[float], reference: list[float]) -> tuple[float, float]:
    """Mean of `scores - reference` over the same problems and its 95% half-width (`copd.stats.seed_ci` with the
    problem as the unit: Student t over the per-problem differences); a gap is larger than its CI when
    `abs(mean) > half_width`."""
    from copd.stats import seed_ci

    if len(scores) != len(reference) or len(scores) < 2:
        raise ValueError(
            f"paired_gain needs two equal-length score lists of >= 2 problems, got {len(scores)} and {len(reference)}"
        )
    est = seed_ci([a - b for a, b in zip(scores, reference, strict=True)])
    return est.mean, est.half


def gains_over(scores: dict[str, dict[str, list[float]]], reference: str = "base") -> dict[str, dict[str, dict]]:
    """Each model's paired gain over `reference` per skill: `{name: {skill: {gain, ci95, significant}}}`."""
    ref = scores[reference]
    out: dict[str, dict[str, dict]] = {}
    for name, per in scores.items():
        if name == reference:
            continue
        out[name] = {}
        for skill, v in per.items():
            gain, half = paired_gain(v, ref[skill])
            out[name][skill] = {"gain": round(gain, 4), "ci95": round(half, 4), "significant": abs(gain) > half}
    return out


def format_table(results: dict[str, dict[str, float]], gains: dict[str, dict[str, dict]] | None = None) -> str:
    """An aligned text table: one row per model (in order), one column per skill, then their plain mean.

    With `gains` (from `gains_over`), a second block gives each model's gain over the reference per skill with its
    95% CI, marked `*` where the gap is larger than its CI.
    """
    seen = {s for accs in results.values() for s in accs}
    skills = [s for s in SKILLS if s in seen] + sorted(seen - set(SKILLS))
    width = max([len("model")] + [len(name) for name in results])
    lines = [" | ".join([f"{'model':<{width}}"] + [f"{c:>6}" for c in [*skills, "mean"]])]
    lines.append("-" * len(lines[0]))
    for name, accs in results.items():
        values = [accs.get(s, float("nan")) for s in skills]
        mean = sum(values) / len(values) if values else float("nan")
        lines.append(" | ".join([f"{name:<{width}}"] + [f"{v:>6.3f}" for v in [*values, mean]]))
    if gains:
        lines += ["", "gain over base on the same problems, +-95% CI (* = larger than its CI):"]
        for name, per in gains.items():
            cells = []
            for s in skills:
                g = per.get(s)
                cells.append(f"{s} {g['gain']:+.3f} +-{g['ci95']:.3f}{'*' if g['significant'] else ' '}" if g else "")
            lines.append(" | ".join([f"{name:<{width}}"] + cells))
    return "\n".join(lines)
