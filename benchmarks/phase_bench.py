"""Phase II step time over Phase I step time with the same generated tokens (target: <= 1.25 on CPU).

Runs the recipe (`python -m recipe.copd.main`, the embedded toy, K=2) in two configurations, alternated over
``--rounds`` so that machine drift hits both alike:

  phase1  GRPO only (copd.s_opd=0, probe off): each branch rolls out 2B prompts x n per step.
  phase2  mutual OPD (copd.s_rl=1, then S_OPD steps): each branch rolls out B native + B cross prompts x n,
          student probe, teacher scoring of the cross rows, CoPD advantages, one combined update.

Both take one optimizer step per PPO epoch over the same 2B x n rows (ppo_mini_batch_size=2B; CoPD scales the
mini-batch by the cross share). The first step of each phase is dropped (warm-up). Times come from the
trainer's own metrics.jsonl (verl's ``timing_s/*``), per step, both branches together.

    python benchmarks/phase_bench.py [--batch 8 --steps 5 --rounds 2 --workdir outputs/copd_toy]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("gen", "old_log_prob", "teacher_log_prob", "adv", "update_actor")


def run(tag: str, overrides: list[str], workdir: str, out: Path) -> list[dict]:
    """One recipe run; returns its metrics rows of the timed phase (first step of the phase dropped)."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "recipe.copd.main",
        f"copd.run.toy.workdir={workdir}", f"trainer.default_local_dir={out}",
        "copd.run.validate_merged=false", *overrides,
    ]  # fmt: skip
    t0 = time.time()
    with open(out / "log.txt", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"phase_bench: the {tag} run failed (exit {proc.returncode}); see {out / 'log.txt'}")
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    phase = "rl" if tag == "phase1" else "opd"
    rows = [r for r in rows if r.get("copd/phase") == phase and r.get("copd/step_in_phase", 0) > 0]
    print(f"  {tag}: {len(rows)} timed steps, run took {time.time() - t0:.0f}s", flush=True)
    return rows


def tokens(row: dict) -> float:
    """Generated response tokens in the step, both branches."""
    return sum(v for k, v in row.items() if k.startswith("branch_") and k.endswith("/copd/response_tokens"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8, help="B: native prompts per branch in Phase II")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per phase (plus one warm-up)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", default="outputs/copd_toy", help="the toy's data and warm-started model (cached)")
    ap.add_argument("--out", default="/tmp/copd_phase_bench")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()

    B, S = args.batch, args.steps
    common = [f"actor_rollout_ref.actor.ppo_mini_batch_size={2 * B}", "copd.metrics_interval=0", "copd.n_cycles=1"]
    rows = B * 8  # one sub-batch's rows (n = 8): both phases split into whole micro-batches of it
    common += [f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={rows}"]
    common += [f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={rows}"]
    configs = {
        "phase1": [*common, f"data.train_batch_size={2 * B}", f"copd.s_rl={S + 1}", "copd.s_opd=0"],
        "phase2": [
            *common, f"data.train_batch_size={B}", f"copd.run.cross_batch_size={B}", "copd.s_rl=1",
            f"copd.s_opd={S + 1}", f"actor_rollout_ref.actor.ppo_mini_batch_size={B}",
        ],
    }  # fmt: skip
    rows: dict[str, list[dict]] = {"phase1": [], "phase2": []}
    print(f"phase_bench: B={B}, {S} timed steps per phase, {args.rounds} rounds (load {os.getloadavg()[0]:.1f})")
    for r in range(args.rounds):
        for tag, overrides in configs.items():
            rows[tag] += run(tag, overrides, args.workdir, Path(args.out) / f"{tag}_{r}")

    summary = {}
    print(f"\nmedians over {len(rows['phase1'])} / {len(rows['phase2'])} steps (both branches per step)")
    print(f"{'':>26} {'phase1':>9} {'phase2':>9} {'ratio':>7}")
    for part in ("step", *PARTS):
        key = f"timing_s/{part}"
        a = statistics.median(r.get(key, 0.0) for r in rows["phase1"])
        b = statistics.median(r.get(key, 0.0) for r in rows["phase2"])
        summary[part] = (a, b)
        ratio = f"{b / a:7.2f}" if a >= 0.01 else "      -"
        print(f"{key:>26} {a:9.2f} {b:9.2f} {ratio}")
    tok1 = statistics.median(tokens(r) for r in rows["phase1"])
    tok2 = statistics.median(tokens(r) for r in rows["phase2"])
    step1, step2 = summary["step"]
    per_token = (step2 / tok2) / (step1 / tok1) if tok1 and tok2 else float("nan")
    print(f"{'generated tokens':>26} {tok1:9.0f} {tok2:9.0f} {tok2 / tok1 if tok1 else float('nan'):7.2f}")
    print(f"\nPhase II / Phase I step time: {step2 / step1:.2f} (per generated token: {per_token:.2f}); target <= 1.25")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"summary": summary, "tokens": [tok1, tok2], "rows": rows}, f)


if __name__ == "__main__":
    main()
