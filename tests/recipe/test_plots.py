"""Training plots from a metrics JSON-lines file: series matched by pattern, phases derived or given, PNGs written."""

import json

import pytest

from recipe.copd.plots import (
    OVERLAP_KEY,
    REWARD_KEY,
    collect_series,
    phases_from_metrics,
    plot_training,
    read_metrics,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_metrics(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _rows():
    """2 cycles of 3 RL steps + 2 OPD steps; overlap and KL only in OPD steps; one unrelated metric."""
    rows = []
    for step in range(1, 11):
        cycle, pos = (step - 1) // 5, (step - 1) % 5
        phase = "rl" if pos < 3 else "opd"
        row = {
            "step": step,
            "copd/cycle": cycle,
            "copd/phase": phase,
            "timing_s/step": 0.5,
            "branch_add/critic/score/mean": 0.1 * step,
            "branch_mul/critic/score/mean": 0.05 * step,
        }
        if phase == "opd":
            row.update({"copd/overlap/add<-mul": 0.9, "copd/overlap/mul<-add": 0.8, "copd/sym_kl/add<-mul": 0.2})
        rows.append(row)
    return rows


def test_read_metrics_sorts_and_skips_blank_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 2, "a": 1}\n\n{"step": 1, "a": 0}\n{"note": "no step"}\n')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_collect_series_matches_by_pattern():
    rows = _rows()
    rewards = collect_series(rows, REWARD_KEY)
    assert list(rewards) == ["add", "mul"]
    assert rewards["mul"][0] == list(range(1, 11)) and rewards["mul"][1][1] == pytest.approx(0.1)
    overlap = collect_series(rows, OVERLAP_KEY)
    assert list(overlap) == ["add<-mul", "mul<-add"] and overlap["add<-mul"][0] == [4, 5, 9, 10]


def test_collect_series_skips_non_numeric_values():
    rows = [{"step": 1, "branch_a/critic/score/mean": "nan?"}, {"step": 2, "branch_a/critic/score/mean": True}]
    assert collect_series(rows, REWARD_KEY) == {}


def test_phases_from_metrics_hand_derived():
    # steps 1-3 RL, 4-5 OPD in cycle 0; 6-8 RL, 9-10 OPD in cycle 1; spans are half a step wider on each side.
    assert phases_from_metrics(_rows()) == [
        (0, "rl", 0.5, 3.5),
        (0, "opd", 3.5, 5.5),
        (1, "rl", 5.5, 8.5),
        (1, "opd", 8.5, 10.5),
    ]


def test_plot_training_writes_both_pngs(tmp_path):
    metrics = _write_metrics(tmp_path / "metrics.jsonl", _rows())
    paths = plot_training(metrics, tmp_path / "plots")
    assert [p.name for p in paths] == ["reward.png", "overlap.png"]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["overlap.png", "reward.png"]  # no temp files


def test_plot_training_with_given_phases_and_missing_series(tmp_path):
    rows = [{"step": s, "branch_x/critic/score/mean": 0.5} for s in range(1, 4)]
    metrics = _write_metrics(tmp_path / "metrics.jsonl", rows)
    paths = plot_training(metrics, tmp_path / "plots", phases=[(0, "rl", 0.5, 2.5), (0, "opd", 2.5, 3.5)])
    assert [p.name for p in paths] == ["reward.png"]  # no overlap / KL series: that figure is skipped


def test_plot_training_with_no_known_series_writes_nothing(tmp_path):
    metrics = _write_metrics(tmp_path / "metrics.jsonl", [{"step": 1, "other": 3.0}])
    assert plot_training(metrics, tmp_path / "plots") == []


def test_plot_training_empty_phase_list_derives_phases(tmp_path, monkeypatch):
    import recipe.copd.plots as plots

    seen = []
    monkeypatch.setattr(plots, "_shade", lambda ax, phases: seen.append(phases))
    metrics = _write_metrics(tmp_path / "metrics.jsonl", _rows())
    plot_training(metrics, tmp_path / "plots", phases=[])
    assert seen and all(p == phases_from_metrics(_rows()) for p in seen)


def test_reward_plot_prefers_the_native_reward(tmp_path):
    """Phase II's critic/score mixes cross rows (the partner's prompts) in; the plot shows the branch's own."""
    from recipe.copd.plots import reward_series

    rows = [{"step": 1, "branch_a/critic/score/mean": 0.7, "branch_a/copd/reward_native_mean": 0.3,
             "branch_b/critic/score/mean": 0.5}]  # fmt: skip
    assert reward_series(rows) == {"a": ([1], [0.3]), "b": ([1], [0.5])}
