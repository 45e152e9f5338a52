"""Training curves of a CoPD run: reward per branch, and top-k overlap / symmetric KL per (student <- teacher) pair.

Reads the metrics JSON-lines file the trainer writes (one dict per step, with "step"). Metric keys are matched by
pattern, so extra metrics do not matter and missing series are skipped:
  - `branch_{name}/copd/reward_native_mean` -> reward of branch `name` on its own prompts (Phase II's cross rows,
    on the partner's prompts, left out); runs without it: `branch_{name}/critic/score/mean` (verl's, all rows)
  - `copd/overlap/{student}<-{teacher}`   -> top-k overlap O_k of the pair (paper's behavioural overlap)
  - `copd/sym_kl/{student}<-{teacher}`    -> symmetric KL of the pair
  - `copd/phase` ("rl" / "opd"), `copd/cycle` -> the phase spans, when `phases` is not given
Phase I (branch-specific RLVR) and Phase II (mutual OPD) spans are shaded and labelled. Uses matplotlib's Agg canvas
directly (no pyplot), so importing this module changes no global backend state.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

REWARD_KEY = re.compile(r"^branch_(?P<name>[^/]+)/critic/score/mean$")
NATIVE_REWARD_KEY = re.compile(r"^branch_(?P<name>[^/]+)/copd/reward_native_mean$")
OVERLAP_KEY = re.compile(r"^copd/overlap/(?P<name>.+)$")
SYM_KL_KEY = re.compile(r"^copd/sym_kl/(?P<name>.+)$")
PHASE_STYLE = {"rl": ("tab:blue", "Phase I (RL)"), "opd": ("tab:orange", "Phase II (OPD)")}

Series = dict[str, tuple[list[float], list[float]]]  # name -> (steps, values)


def read_metrics(path: str | Path) -> list[dict]:
    """The step dicts of a JSON-lines metrics file, sorted by "step" (blank lines and rows without "step" skipped)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return sorted((r for r in rows if "step" in r), key=lambda r: r["step"])


def reward_series(rows: list[dict]) -> Series:
    """Each branch's reward on its own prompts where the trainer logged it, else verl's score over all its rows."""
    return {**collect_series(rows, REWARD_KEY), **collect_series(rows, NATIVE_REWARD_KEY)}


def collect_series(rows: list[dict], pattern: re.Pattern) -> Series:
    """`{name: (steps, values)}` for every key matching `pattern` (its `name` group), numeric values only."""
    series: Series = {}
    for row in rows:
        for key, value in row.items():
            match = pattern.match(key)
            if match and isinstance(value, int | float) and not isinstance(value, bool):
                steps, values = series.setdefault(match["name"], ([], []))
                steps.append(row["step"])
                values.append(float(value))
    return dict(sorted(series.items()))


def phases_from_metrics(rows: list[dict]) -> list[tuple[int, str, float, float]]:
    """`(cycle, phase, start, end)` spans from the rows' `copd/phase` and `copd/cycle`: one per run of equal values.

    A span covers [first step - 0.5, last step + 0.5], so adjacent spans touch.
    """
    spans: list[tuple[int, str, float, float]] = []
    for row in rows:
        if "copd/phase" not in row:
            continue
        key = (int(row.get("copd/cycle", 0)), str(row["copd/phase"]))
        if spans and spans[-1][:2] == key:
            spans[-1] = (*key, spans[-1][2], row["step"] + 0.5)
        else:
            spans.append((*key, row["step"] - 0.5, row["step"] + 0.5))
    return spans


def _shade(ax, phases: list[tuple[int, str, float, float]]) -> None:
    """Shade each phase span on `ax`, label it "C{cycle} RL/OPD" at the top, and add one legend entry per phase."""
    labelled = set()
    for cycle, phase, start, end in phases:
        color, label = PHASE_STYLE.get(phase, ("tab:gray", phase))
        ax.axvspan(start, end, color=color, alpha=0.12, lw=0, label=None if phase in labelled else label)
        labelled.add(phase)
        ax.text(
            (start + end) / 2,
            0.98,
            f"C{cycle} {phase.upper()}",
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="top",
            fontsize=7,
            color=color,
        )


def _panel(ax, series: Series, title: str, ylabel: str, phases) -> None:
    for name, (steps, values) in series.items():
        ax.plot(steps, values, marker="." if len(steps) < 50 else None, lw=1.2, label=name)
    _shade(ax, phases)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)  # off the curves and labels


def _save(fig: Figure, path: Path) -> Path:
    """Render `fig` to `path` as PNG, atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    FigureCanvasAgg(fig)
    fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def plot_training(
    metrics_jsonl_path: str | Path,
    out_png_dir: str | Path,
    phases: list[tuple[int, str, float, float]] | None = None,
) -> list[Path]:
    """Write `reward.png` (reward per step per branch) and `overlap.png` (top-k overlap, and symmetric KL when logged,
    per pair) into `out_png_dir`; a figure with no series is skipped. Returns the written paths.

    `phases` are `(cycle, phase, start_step, end_step)` spans with phase "rl" or "opd"; None or an empty list derives
    them from the metrics' `copd/phase` and `copd/cycle` (no shading when those are absent too).
    """
    rows = read_metrics(metrics_jsonl_path)
    phases = list(phases) if phases else phases_from_metrics(rows)
    out_dir = Path(out_png_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    rewards = reward_series(rows)
    if rewards:
        fig = Figure(figsize=(8, 4))
        _panel(fig.add_subplot(1, 1, 1), rewards, "Reward per branch (own prompts)", "mean reward", phases)
        written.append(_save(fig, out_dir / "reward.png"))

    panels = [
        (collect_series(rows, OVERLAP_KEY), "Top-k overlap (student <- teacher)", "overlap"),
        (collect_series(rows, SYM_KL_KEY), "Symmetric KL (student <- teacher)", "sym. KL"),
    ]
    panels = [p for p in panels if p[0]]
    if panels:
        fig = Figure(figsize=(8, 3.5 * len(panels)))
        for i, (series, title, ylabel) in enumerate(panels):
            _panel(fig.add_subplot(len(panels), 1, i + 1), series, title, ylabel, phases)
        fig.tight_layout()
        written.append(_save(fig, out_dir / "overlap.png"))
    return written
