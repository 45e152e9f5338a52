"""Table 1's layout from per-benchmark scores: pure functions (no I/O), used by ``recipe.copd.eval``.

Rows: the benchmarks of each group (Image, Text, Video, in the paper's order) and the group's average, then the
overall average (the mean of the group averages shown); columns: one per model; the best value of a row in bold.
"""

from __future__ import annotations

from recipe.copd.data.registry import DATASETS, GROUPS, benchmarks

LABELS = {
    "aime24": "AIME24", "aime25": "AIME25", "hmmt25": "HMMT25", "math500": "MATH-500", "minerva_math": "Minerva Math",
    "mmmu": "MMMU", "mmmu_pro": "MMMU-Pro", "mathvista": "MathVista", "mathvision": "MathVision",
    "zerobench": "ZeroBench (sub)", "wemath": "WeMath", "mathverse": "MathVerse", "mvbench": "MVBench",
    "videomathqa": "VideoMathQA",
}  # fmt: skip


def build_table(scores: dict[str, dict[str, float]], counts: dict[str, int]) -> dict:
    """``scores[model][benchmark]`` (accuracy in %) -> the table as data: rows of (label, kind, {model: value}).

    Shape: rows = benchmarks evaluated + one average per group present + "Overall"; every model in every row.
    """
    models = list(scores)
    present = [b for b in benchmarks() if any(b in scores[m] for m in models)]
    rows, group_avg = [], {m: {} for m in models}
    for group in GROUPS:
        names = [b for b in present if DATASETS[b].group == group]
        if not names:
            continue
        for b in names:
            rows.append({"name": b, "label": LABELS[b], "kind": "benchmark", "group": group, "n": counts.get(b),
                         "values": {m: scores[m].get(b) for m in models}})  # fmt: skip
        avg = {m: _mean([scores[m].get(b) for b in names]) for m in models}
        for m in models:
            group_avg[m][group] = avg[m]
        rows.append({"name": f"{group}_avg", "label": f"{group.capitalize()} avg", "kind": "average",
                     "group": group, "n": sum(counts.get(b) or 0 for b in names), "values": avg})  # fmt: skip
    overall = {m: _mean(list(group_avg[m].values())) for m in models}
    rows.append({"name": "overall", "label": "Overall avg", "kind": "average", "group": None,
                 "n": sum(counts.get(b) or 0 for b in present), "values": overall})  # fmt: skip
    return {"models": models, "rows": rows}


def _mean(values: list[float | None]) -> float | None:
    """The mean, or None when any value is missing (an average over part of a group would not be comparable)."""
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


def render_markdown(table: dict, note: str = "") -> str:
    """The table as Markdown: values to 2 decimals, the best per row in bold, the sample count in the last column."""
    models = table["models"]
    lines = ["| Benchmark | " + " | ".join(models) + " | n |", "|---|" + "---:|" * len(models) + "---:|"]
    for row in table["rows"]:
        vals = row["values"]
        present = [v for v in vals.values() if v is not None]
        best = max(present) if len(present) > 1 else None  # bold needs something to beat
        cells = []
        for m in models:
            v = vals[m]
            text = "-" if v is None else f"{v:.2f}"
            cells.append(f"**{text}**" if best is not None and v == best else text)
        label = f"*{row['label']}*" if row["kind"] == "average" else row["label"]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {row['n'] if row['n'] is not None else '-'} |")
    return "\n".join(lines) + ("\n\n" + note if note else "") + "\n"
