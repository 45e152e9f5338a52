"""End to end through `python -m recipe.copd.main` on CPU: K=2 (both phases, resume, merge) and a 3-branch hub.

Slow (Ray + verl workers on 2 cores): a few steps of a tiny model. Marked `slow`; CI runs them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(workdir: Path, tiny: list[str], *overrides: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", VERL_FILE_LOGGER_ROOT=str(workdir / "tracking"))
    cmd = [sys.executable, "-m", "recipe.copd.main", f"copd.run.toy.workdir={workdir}", *tiny, *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        print(proc.stdout[-6000:], proc.stderr[-6000:])
    return proc


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_two_branches_both_phases_resume_and_merge(tmp_path, toy_workdir, tiny_overrides):
    work = toy_workdir(tmp_path / "toy")
    run = work / "run"
    common = [
        "copd.n_cycles=1",
        "copd.s_rl=1",
        "copd.s_opd=1",
        "trainer.save_freq=1",
        "actor_rollout_ref.rollout.full_determinism=true",  # per-sample seeds: the resumed run must match bitwise
    ]
    proc = _run(work, tiny_overrides, *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [r for r in _rows(run / "metrics.jsonl") if "copd/phase" in r]  # the last row is merged/ validation
    assert [r["copd/phase"] for r in rows] == ["rl", "opd"]
    opd = rows[1]
    # cross batches were scored by the other branch: a teacher signal and an overlap in both directions
    for student, teacher in (("add", "mul"), ("mul", "add")):
        assert 0.0 <= opd[f"copd/overlap/{student}<-{teacher}"] <= 1.0
        # the teacher's log-probs reached the student's advantages (delta is 0 only if the two branches are
        # still identical, which happens when every Phase I reward was 0 and nothing was updated)
        teacher_lp, student_lp = (
            opd[f"branch_{student}/copd/teacher_logp_mean"],
            opd[f"branch_{student}/copd/student_logp_mean"],
        )
        assert teacher_lp < 0.0  # real log-probs, not the zeros of a cross row the teacher never scored
        assert abs(opd[f"branch_{student}/copd/delta_mean"] - (teacher_lp - student_lp)) < 1e-4
    assert "branch_add/actor/pg_loss" in opd and "branch_mul/critic/score/mean" in opd
    base = _weights(Path(json.loads((run / "copd_result.json").read_text())["branches"]["add"]).parents[2] / "model")
    for name in ("add", "mul"):
        trained = _weights(run / "hf" / f"branch_{name}")
        assert any(not torch.equal(trained[k], base[k]) for k in base), f"branch {name} did not change"
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(run / "merged")
    a, m = _weights(run / "hf" / "branch_add"), _weights(run / "hf" / "branch_mul")
    for k, v in merged.state_dict().items():
        if k in a:
            torch.testing.assert_close(v, (a[k] + m[k]) / 2)
    assert "Held-out greedy accuracy" in proc.stdout and (run / "summary.json").exists()
    # a quiet console: progress lines and the table, not verl's prints or metric dumps (issue 8)
    console = [line for line in (proc.stdout + proc.stderr).splitlines() if not line.startswith("[warm start]")]
    assert len(console) < 40, "\n".join(console)
    assert "[copd] step 2/2 cycle 1 opd" in proc.stdout
    assert list(run.glob("*.png")), "no plots written"

    # resume from the step-1 checkpoint (mid-cycle: Phase I done, Phase II to go): the same final weights, bitwise
    assert (run / "global_step_1" / "copd_state.json").exists() and (run / "global_step_2").exists()
    uninterrupted = {name: _weights(run / "hf" / f"branch_{name}") for name in ("add", "mul")}
    uninterrupted["merged"] = _weights(run / "merged")
    (run / "latest_checkpointed_iteration.txt").write_text("1")
    proc = _run(work, tiny_overrides, *common, "trainer.resume_mode=auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed" in proc.stdout + proc.stderr or "step 2/2" in proc.stdout
    assert "[copd] step 1/" not in proc.stdout  # step 1 was not run again
    resumed = {name: _weights(run / "hf" / f"branch_{name}") for name in ("add", "mul")}
    resumed["merged"] = _weights(run / "merged")
    for name, weights in uninterrupted.items():
        differ = [k for k in weights if not torch.equal(weights[k], resumed[name][k])]
        assert not differ, f"{name}: resumed run differs from the uninterrupted one in {differ[:3]}"


def test_three_branch_hub(tmp_path, toy_workdir, tiny_overrides):
    work = toy_workdir(tmp_path / "hub")
    branches = (
        "copd.branches=[{name: add, data_source: copd_toy/add}, {name: mul, data_source: copd_toy/mul},"
        " {name: add2, data_source: copd_toy/add}]"
    )
    proc = _run(
        work,
        tiny_overrides,
        branches,
        "copd.topology=hub",
        "copd.hub=add",
        "copd.n_cycles=1",
        "copd.s_rl=0",
        "copd.s_opd=1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = [r for r in _rows(work / "run" / "metrics.jsonl") if "copd/phase" in r][0]
    assert {k for k in row if k.startswith("copd/overlap/")} == {
        "copd/overlap/add<-mul",
        "copd/overlap/add<-add2",
        "copd/overlap/mul<-add",
        "copd/overlap/add2<-add",
    }


def test_toy_baseline_adds_the_plain_average_row(tmp_path, toy_workdir, tiny_overrides):
    """`copd.run.toy.baseline=true`: a second run in the same process trains the experts without OPD and averages."""
    work = toy_workdir(tmp_path / "baseline")
    run = work / "run"
    steps = ["copd.n_cycles=1", "copd.s_rl=1", "copd.s_opd=1", "copd.run.validate_merged=false"]
    proc = _run(work, tiny_overrides, *steps, "copd.run.toy.baseline=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "plain average (no OPD)" in proc.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert "plain average (no OPD)" in summary["accuracy"]
    experts = run / "baseline_experts" / "hf"
    a, m = _weights(experts / "branch_add"), _weights(experts / "branch_mul")
    average = _weights(run / "baseline_average")
    for k, v in average.items():
        torch.testing.assert_close(v, (a[k] + m[k]) / 2)
    # the experts never saw a cross batch: no OPD step in their metrics
    rows = [r for r in _rows(run / "baseline_experts" / "metrics.jsonl") if "copd/phase" in r]
    assert rows and all(r["copd/phase"] == "rl" for r in rows)


def _phase_rows(work: Path, tiny: list[str], *overrides: str) -> list[dict]:
    """Run the recipe in ``work`` (must succeed) and return its per-step metric rows."""
    proc = _run(work, tiny, *overrides)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [r for r in _rows(work / "run" / "metrics.jsonl") if "copd/phase" in r]


def test_inline_reward_scores_as_verls_reward_workers(tmp_path, toy_workdir, tiny_overrides):
    """`copd.run.inline_reward` (the CPU default) against verl's per-sample reward workers (the accelerator
    default): with reproducible sampling the same samples get the same rewards."""
    steps = ["copd.n_cycles=1", "copd.s_rl=1", "copd.s_opd=0", "copd.run.validate_merged=false",
             "actor_rollout_ref.rollout.full_determinism=true"]  # fmt: skip
    rewards = {}
    for inline in ("true", "false"):
        work = toy_workdir(tmp_path / f"inline_{inline}")
        row = _phase_rows(work, tiny_overrides, *steps, f"copd.run.inline_reward={inline}")[0]
        rewards[inline] = {k: v for k, v in row.items() if "reward_native" in k or "critic/score" in k}
    assert rewards["true"] and rewards["true"] == rewards["false"]


def test_bypass_mode_trains_as_the_recomputed_old_log_probs(tmp_path, toy_workdir, tiny_overrides):
    """verl's `algorithm.rollout_correction.bypass_mode` (old_log_probs = the rollout's, no forward pass) through
    both phases with the probe on every step (its forward then runs on its own): the `hf` rollout's log-probs are
    the trainer's to ~1e-6, so with reproducible sampling it trains as the default recompute does."""
    steps = ["copd.n_cycles=1", "copd.s_rl=1", "copd.s_opd=1", "copd.metrics_interval=1",
             "copd.run.validate_merged=false", "actor_rollout_ref.rollout.full_determinism=true",
             "actor_rollout_ref.rollout.calculate_log_probs=true"]  # fmt: skip
    runs = {}
    for bypass in ("false", "true"):
        work = toy_workdir(tmp_path / f"bypass_{bypass}")
        rows = _phase_rows(work, tiny_overrides, *steps, f"algorithm.rollout_correction.bypass_mode={bypass}")
        runs[bypass] = (rows, _weights(work / "run" / "merged"))
    (plain, w_plain), (bypass, w_bypass) = runs["false"], runs["true"]
    assert [r["copd/phase"] for r in bypass] == ["rl", "opd"]
    for a, b in zip(plain, bypass, strict=True):
        overlaps = [k for k in a if k.startswith("copd/overlap/")]
        assert overlaps and all(abs(a[k] - b[k]) < 1e-3 for k in overlaps), overlaps
        rewards = [k for k in a if "reward_native" in k]
        assert rewards and all(a[k] == b[k] for k in rewards)
    assert "branch_add/actor/entropy" in plain[0] and "branch_add/actor/entropy" not in bypass[0]  # no forward
    for a, b in zip(plain[1:], bypass[1:], strict=True):  # the OPD step. The rollout's old log-probs are the
        # recomputed ones to ~1e-6:
        # delta (partner - student) is recompute's to that rounding; 0 in both when step 1 left the branches equal
        # (no reward), the partner's real difference in both when it did not (add got 1/16 on 2026-12-06)
        deltas = [k for k in a if "copd/delta_m" in k]
        assert deltas and all(abs(a[k] - b[k]) < 1e-4 for k in deltas), {k: (a[k], b[k]) for k in deltas}
    # Not elementwise equal weights: where recompute's cross advantages are exactly 0, bypass's are beta * ~1e-6,
    # and AdamW normalises a gradient that small (next to eps) into a step of up to ~lr. Found 2026-12-04 with the
    # 14-token prompts: 7e-5 at most, on the weak 300-step test model. Bound: one learning rate (2e-4).
    for name, t in w_plain.items():
        assert float((w_bypass[name] - t).abs().max()) < 2e-4, name
