"""The report of ``recipe.copd.compare``: per method and skill the mean over seeds with a 95% interval, the paper's
orderings judged on paired per-seed differences (``copd.stats``), and the overlap figure (the paper's Fig. 4a).

Written atomically into the output folder: ``compare.json``, ``compare.md``, ``overlap.png``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from copd.stats import Estimate, binomial_var, mean_var, paired_diff, seed_ci, verdict

SKILLS = ("add", "mul")
METRICS = (*SKILLS, "mean")
#: the paper's orderings: (A, B, metric) reads "A > B on metric"
ORDERINGS = (
    ("copd", "expert_add", "add"),
    ("copd", "expert_mul", "mul"),
    ("copd", "mixed", "mean"),
    ("copd", "static_add_to_mul", "mul"),
    ("copd", "static_add_to_mul", "mean"),
    ("copd", "static_mul_to_add", "add"),
    ("copd", "static_mul_to_add", "mean"),
    ("copd", "average", "mean"),
)
#: overlap series of the figure: (run, metric key's pair, label, colour, line style)
OVERLAP_SERIES = (
    ("copd", "mul<-add", "CoPD: mul <- add (co-evolving teacher)", "tab:blue", "-"),
    ("copd", "add<-mul", "CoPD: add <- mul (co-evolving teacher)", "tab:orange", "-"),
    ("static_add_to_mul", "mul<-add", "static OPD: mul <- add (frozen expert)", "tab:blue", "--"),
    ("static_mul_to_add", "add<-mul", "static OPD: add <- mul (frozen expert)", "tab:orange", "--"),
)


def method_scores(method: str, models: dict) -> dict[str, float]:
    """A method's accuracy per skill from one seed's evaluated models (``copd_unmerged``: branch k on skill k)."""
    if method == "copd_unmerged":
        return {s: models[f"copd_branch_{s}"][s] for s in SKILLS}
    return {s: models[method][s] for s in SKILLS}


def with_mean(scores: dict[str, float]) -> dict[str, float]:
    return {**scores, "mean": sum(scores[s] for s in SKILLS) / len(SKILLS)}


def score_var(scores: dict[str, float], metric: str, n_problems: dict[str, int]) -> float:
    """The test set's sampling variance of one seed's score on ``metric`` (a skill, or the mean of the skills)."""
    if metric == "mean":
        return mean_var([scores[s] for s in SKILLS], [n_problems[s] for s in SKILLS])
    return binomial_var(scores[metric], n_problems[metric])


def per_seed(methods: list[str], evals: dict) -> dict[str, list[dict[str, float]]]:
    """method -> one ``{add, mul, mean}`` per seed (seeds in order)."""
    return {m: [with_mean(method_scores(m, evals[s]["models"])) for s in sorted(evals)] for m in methods}


def estimates(scores: list[dict[str, float]], n_problems: dict[str, int]) -> dict[str, Estimate]:
    """Mean and 95% interval per metric over the seeds' ``scores`` (one seed: the binomial interval)."""
    out = {}
    for metric in METRICS:
        values = [s[metric] for s in scores]
        out[metric] = seed_ci(values, score_var(scores[0], metric, n_problems) if len(values) == 1 else None)
    return out


def orderings(scores: dict[str, list[dict[str, float]]], n_problems: dict[str, int]) -> list[dict]:
    """Each ordering of ``ORDERINGS`` whose two methods were run: the paired difference A - B and its verdict."""
    rows = []
    for a, b, metric in ORDERINGS:
        if a not in scores or b not in scores:
            continue
        sa, sb = scores[a], scores[b]
        va, vb = (score_var(s[0], metric, n_problems) for s in (sa, sb)) if len(sa) == 1 else (None, None)
        diff = paired_diff([s[metric] for s in sa], [s[metric] for s in sb], va, vb)
        rows.append({"a": a, "b": b, "metric": metric, **_est(diff), "verdict": verdict(diff)})
    return rows


def _est(e: Estimate) -> dict:
    return {"mean": e.mean, "lo": e.lo, "hi": e.hi, "half": e.half, "n_seeds": e.n_seeds}


def format_md(report: dict) -> str:
    """``compare.md``: the methods table, CoPD's branches, the orderings, how the intervals were computed."""
    n_seeds, n = len(report["seeds"]), report["n_problems"]
    how = (
        f"Student t over {n_seeds} seeds"
        if n_seeds > 1
        else f"one seed: binomial normal approximation on {n['add']} / {n['mul']} test problems"
    )
    lines = [
        "# CoPD's comparison in miniature (toy task: add, mul)",
        "",
        f"T = {report['T']} steps (CoPD: {report['copd_schedule']}); seeds {report['seeds']}; held-out greedy "
        f"accuracy, mean and 95% CI ({how}). steps: the evaluated model's; branch-steps: every branch the method "
        "trained, its frozen teachers' training included.",
        "",
        "| method | add | mul | mean | steps | branch-steps | budget |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, rec in report["methods"].items():
        cells = [f"{rec['estimate'][k]['mean']:.3f} ± {rec['estimate'][k]['half']:.3f}" for k in METRICS]
        b = rec["budget"]
        lines.append(f"| {m} | {' | '.join(cells)} | {b['steps']} | {b['branch_steps']} | {b['note']} |")
    if report.get("copd_branches"):
        lines += ["", "CoPD's branches before the merge (mean over seeds), each on both skills:", ""]
        lines += ["| branch | add | mul |", "|---|---|---|"]
        for name, accs in report["copd_branches"].items():
            lines.append(f"| {name} | {accs['add']:.3f} | {accs['mul']:.3f} |")
    if report["orderings"]:
        lines += ["", "The paper's orderings (paired per-seed differences A - B, 95% CI):", ""]
        lines += ["| ordering | A - B | 95% CI | verdict |", "|---|---|---|---|"]
        for o in report["orderings"]:
            lines.append(
                f"| {o['a']} > {o['b']} on {o['metric']} | {o['mean']:+.3f} | [{o['lo']:+.3f}, {o['hi']:+.3f}] | "
                f"{o['verdict']} |"
            )
    if report.get("overlap_png"):
        lines += ["", f"Top-k overlap over training: {report['overlap_png']}"]
    return "\n".join(lines) + "\n"


def copd_branches(methods: list[str], evals: dict) -> dict[str, dict[str, float]]:
    """CoPD's unmerged branches on both skills, mean over seeds (when ``copd_unmerged`` ran)."""
    if "copd_unmerged" not in methods:
        return {}
    seeds = sorted(evals)
    return {
        f"branch {b}": {s: sum(evals[k]["models"][f"copd_branch_{b}"][s] for k in seeds) / len(seeds) for s in SKILLS}
        for b in SKILLS
    }


def build_report(methods, evals, records, budgets, total, schedule) -> dict:
    """The whole comparison as one JSON-able dict (``compare.json``)."""
    n_problems = evals[min(evals)]["n_problems"]
    scores = per_seed(methods, evals)
    return {
        "seeds": sorted(evals),
        "T": total,
        "copd_schedule": schedule,
        "n_problems": n_problems,
        "methods": {
            m: {
                "budget": budgets[m],
                "per_seed": {k: [s[k] for s in scores[m]] for k in METRICS},
                "estimate": {k: _est(e) for k, e in estimates(scores[m], n_problems).items()},
            }
            for m in methods
        },
        "copd_branches": copd_branches(methods, evals),
        "orderings": orderings(scores, n_problems),
        "runs": {
            str(seed): {run: {"wall_s": r["wall_s"]} for run, r in runs.items()} for seed, runs in records.items()
        },
    }


def overlap_series(out: Path, seeds: list[int]) -> list[tuple[str, str, str, list[float], list[float]]]:
    """``(label, colour, style, steps, mean overlap over seeds)`` per series of ``OVERLAP_SERIES`` that was logged."""
    from recipe.copd.plots import OVERLAP_KEY, collect_series, read_metrics

    found = []
    for run, pair, label, colour, style in OVERLAP_SERIES:
        by_step: dict[float, list[float]] = {}
        for seed in seeds:
            path = out / f"seed{seed}" / run / "metrics.jsonl"
            if not path.exists():
                continue
            steps, values = collect_series(read_metrics(path), OVERLAP_KEY).get(pair, ([], []))
            for step, value in zip(steps, values, strict=True):
                by_step.setdefault(step, []).append(value)
        if by_step:
            steps = sorted(by_step)
            found.append((label, colour, style, steps, [sum(by_step[s]) / len(by_step[s]) for s in steps]))
    return found


def plot_overlap(out: Path, seeds: list[int]) -> Path | None:
    """``out/overlap.png``: top-k overlap per step, CoPD's pair against the static pipeline's (mean over seeds),
    CoPD's phases shaded (from seed 0's metrics); None when no run logged an overlap."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from recipe.copd.plots import _save, _shade, phases_from_metrics, read_metrics

    series = overlap_series(out, seeds)
    if not series:
        return None
    fig = Figure(figsize=(8, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for label, colour, style, steps, values in series:
        ax.plot(steps, values, color=colour, ls=style, marker="o", ms=3, lw=1.5, label=label)
    copd_metrics = out / f"seed{seeds[0]}" / "copd" / "metrics.jsonl"
    shaded = copd_metrics.exists()
    if shaded:
        _shade(ax, phases_from_metrics(read_metrics(copd_metrics)))
    ax.set_title(f"Top-k overlap, student <- teacher (mean over {len(seeds)} seed{'s' * (len(seeds) > 1)})")
    ax.set_xlabel("training step" + (" (CoPD's phases shaded)" if shaded else ""))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("top-k overlap")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)  # off the data
    fig.tight_layout()
    return _save(fig, out / "overlap.png")


def write_report(out: Path, methods, evals, records, budgets, total, schedule) -> dict:
    """Build the report, draw the figure, write ``compare.json`` and ``compare.md`` (temp file, then rename)."""
    report = build_report(methods, evals, records, budgets, total, schedule)
    png = plot_overlap(out, report["seeds"])
    report["overlap_png"] = png.name if png else None
    for name, text in (("compare.json", json.dumps(report, indent=1)), ("compare.md", format_md(report))):
        tmp = out / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, out / name)
    return report
