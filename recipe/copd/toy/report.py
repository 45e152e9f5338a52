"""The embedded default's closing report: held-out accuracy per skill, and plots."""

from __future__ import annotations

import json
import os
import time

from omegaconf import DictConfig

from copd.config import CoPDConfig


def toy_finish(config: DictConfig, prepared, result: dict, t0: float) -> dict:
    """After the CoPD run of the embedded default: the optional experts baseline, then the report."""
    if prepared.run.toy.baseline:
        from recipe.copd.toy.baseline import run_baseline

        result["baseline_average"] = run_baseline(config, prepared.copd, prepared.run)
    return toy_report(config, prepared.copd, result, prepared.toy_files, time.time() - t0)


def toy_report(config: DictConfig, copd: CoPDConfig, result: dict, files: dict, seconds: float) -> dict:
    """Evaluate base, each branch, the plain average (if the baseline ran) and the CoPD merge; print a table."""
    from transformers.utils import logging as hf_logging

    from recipe.copd.plots import plot_training
    from recipe.copd.toy.evaluate import accuracies, evaluate_scores, format_table, gains_over

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per model load otherwise
    out = config.trainer.default_local_dir
    models = {"base": config.actor_rollout_ref.model.path}
    models.update({f"branch {name}": path for name, path in result["branches"].items()})
    if result.get("baseline_average"):
        models["plain average (no OPD)"] = result["baseline_average"]
    models["CoPD merged"] = result["merged"]
    tests = {skill: paths["test"] for skill, paths in files.items()}
    scores = evaluate_scores(models, tests)
    table, gains = accuracies(scores), gains_over(scores, "base")
    text = format_table(table, gains)
    # schedule spans count steps from 0 (end exclusive); logged steps are 1-based: step s is schedule step s-1
    phases = [(c, ph, start + 0.5, end + 0.5) for c, ph, start, end in result.get("phases", [])]
    pngs = plot_training(os.path.join(out, "metrics.jsonl"), out, phases=phases)
    summary = {
        "accuracy": table,
        "gain_over_base": gains,
        "n_test": {s: len(v) for s, v in scores["base"].items()},
        "wall_time_s": seconds,
        "plots": [str(p) for p in pngs],
        **result,
    }
    tmp = os.path.join(out, "summary.json.tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1, default=str)
    os.replace(tmp, os.path.join(out, "summary.json"))
    print("\nHeld-out greedy accuracy per skill:\n" + text, flush=True)
    print(f"\nmerged model: {result['merged']}\nmetrics: {os.path.join(out, 'metrics.jsonl')}")
    print("plots: " + ", ".join(str(p) for p in pngs))
    print(f"wall time: {seconds:.0f}s", flush=True)
    return summary
