"""The rehearsal: every preset of ``configs/``, shrunk only in size, through the real trainer on a CPU.

``python -m recipe.copd.rehearse [PRESET ...] [--out DIR] [--workers N]`` (``make rehearse``: all presets) writes,
per preset, ``DIR/<preset>/`` (metrics.jsonl, reward/overlap plots, ``hf/branch_*``, ``merged/``,
copd_result.json, run.log) and ``DIR/report.md``: one row per preset with its status, wall time, steps, the final
native reward per data source, the overlap range and the range of the cross share over PPO mini-batches.

Each preset is composed as it is and run by ``python -m recipe.copd.main`` (a subprocess per preset: its own Ray)
with ``SHRINK``, one set of overrides that changes sizes only:

- model: ``copd-tiny/Qwen3-VL-tiny`` (``copd.tiny.qwen3vl``, installed into ``DIR/hub``; loaded offline by hub
  id, so the export's hub-id path runs), ``trust_remote_code=True`` (its processors are remote code);
- data: ``recipe.copd.fixtures`` under ``DIR/data`` (``COPD_DATA``); 4 prompts x 2 samples per batch, PPO
  mini-batch 2 prompts (2 mini-batches per update), prompts <= 160 tokens, responses <= 16;
- steps: one step per 100 of the preset's (``shrunk_schedule``): the 2-branch CoPD 2, the hub 3, each expert 1,
  so "CoPD's total = the sum of the experts' steps" holds shrunk too; the probe on every step;
- machine: ``verl_patches.cpu_overrides`` (CPU, fp32, the ``hf`` rollout), checkpoints and logging off.

Everything else (remove-padding, dynamic batch sizes, gradient checkpointing, offload, topology, reward routing)
is the preset's. Frozen teachers are the experts this invocation trained first (``COPD_*_EXPERT``), so the
experts run before the presets that need them; a preset whose teacher failed is reported as blocked.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
TINY_ID = "copd-tiny/Qwen3-VL-tiny"
#: Presets in run order: the experts first (the frozen teachers of static OPD and MOPD).
ORDER = (
    "baselines/experts",
    "baselines/expert_video",
    "qwen3vl_text_image",
    "qwen3vl_text_image_video_hub",
    "baselines/mixed_rlvr",
    "baselines/static_opd_v2t",
    "baselines/static_opd_t2v",
    "baselines/mopd",
    "ablations/wo_image_to_text_opd",
    "ablations/wo_text_to_image_opd",
)
#: The expert folders each frozen-teacher variable points at: (preset that trains it, branch).
EXPERTS = {
    "COPD_TEXT_EXPERT": ("baselines/experts", "text"),
    "COPD_IMAGE_EXPERT": ("baselines/experts", "image"),
    "COPD_VIDEO_EXPERT": ("baselines/expert_video", "video"),
}
STEPS_PER_SHRUNK_STEP = 100


def presets() -> list[str]:
    """Every preset in ``configs/`` (``common/`` holds shared parts), in run order."""
    found = {str(p.relative_to(CONFIGS).with_suffix("")) for p in CONFIGS.rglob("*.yaml") if "common" not in p.parts}
    return [p for p in ORDER if p in found] + sorted(found - set(ORDER))


def shrunk_schedule(n_cycles: int, s_rl: int, s_opd: int) -> dict[str, int]:
    """One step per ``STEPS_PER_SHRUNK_STEP`` of the preset's total (at least 1), in one cycle, split as the preset
    splits S_RL : S_OPD (each phase the preset has keeps >= 1 step)."""
    total = max(1, round(n_cycles * (s_rl + s_opd) / STEPS_PER_SHRUNK_STEP))
    opd = 0 if s_opd == 0 else max(1, round(total * s_opd / (s_rl + s_opd)))
    opd = min(opd, total - (1 if s_rl and total > 1 else 0))
    return {"n_cycles": 1, "s_rl": total - opd, "s_opd": opd}


def shrink_overrides(preset_cfg, out_dir: str, workers: int) -> list[str]:
    """The hydra overrides of the rehearsal (sizes only); ``preset_cfg`` is the composed preset."""
    from verl_patches import cpu_overrides

    steps = shrunk_schedule(int(preset_cfg.copd.n_cycles), int(preset_cfg.copd.s_rl), int(preset_cfg.copd.s_opd))
    return [
        *cpu_overrides(workers),
        f"actor_rollout_ref.model.path={TINY_ID}",
        "actor_rollout_ref.model.trust_remote_code=True",
        "data.train_batch_size=4",
        "data.val_batch_size=4",
        "data.max_prompt_length=160",
        "data.max_response_length=16",
        "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=2048",
        "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=2048",
        "actor_rollout_ref.actor.fsdp_config.param_offload=false",
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload=false",
        *(f"copd.{k}={v}" for k, v in steps.items()),
        "copd.metrics_interval=1",
        "copd.overlap_k=4",
        "trainer.logger=[console]",
        "trainer.save_freq=-1",
        "trainer.test_freq=-1",
        "trainer.val_before_train=false",
        "trainer.resume_mode=disable",
        f"trainer.default_local_dir={out_dir}",
    ]


def compose_preset(name: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return compose(config_name=name)


def run_env(root: Path, data: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        COPD_DATA=str(data or root / "data"),
        HF_HUB_CACHE=str(root / "hub"),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    for var, (preset, branch) in EXPERTS.items():
        env[var] = str(root / preset / "hf" / f"branch_{branch}")
    return env


def teachers_needed(preset_cfg) -> list[str]:
    """The ``COPD_*_EXPERT`` variables a preset's frozen branches read."""
    raw = json.dumps(__import__("omegaconf").OmegaConf.to_container(preset_cfg.copd, resolve=False))
    return [var for var in EXPERTS if var in raw]


def run_preset(
    name: str, root: Path, workers: int, timeout_s: int, data: Path | None = None, extra: list[str] = ()
) -> dict:
    """Run one preset shrunk; returns its report row (status, wall time, steps, rewards, overlap, cross share).

    ``data``: the folder of ``{source}_{split}.parquet`` files (``COPD_DATA``); default ``root/data`` (the fixtures).
    ``extra``: hydra overrides applied after the shrink's (e.g. ``data.max_prompt_length=1024`` for video rows).
    """
    out = root / name
    cfg = compose_preset(name)
    blocked = [v for v in teachers_needed(cfg) if not (Path(run_env(root)[v]) / "model.safetensors").exists()]
    if blocked:
        return {"preset": name, "status": "blocked", "note": f"teacher missing: {', '.join(blocked)}"}
    out.mkdir(parents=True, exist_ok=True)
    overrides = [*shrink_overrides(cfg, str(out), workers), *extra]
    cmd = [sys.executable, "-m", "recipe.copd.main", "--config-path", str(CONFIGS), "--config-name", name, *overrides]
    t0 = time.time()
    with open(out / "run.log", "w") as log:
        try:
            rc = subprocess.run(
                cmd, cwd=ROOT, env=run_env(root, data), stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s
            )
            rc = rc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    row = {"preset": name, "wall_s": round(time.time() - t0, 1), **summarize(out, cfg)}
    ok = rc == 0 and (out / "copd_result.json").exists()
    row["status"] = "ok" if ok else "failed"
    if not ok:
        row["note"] = f"rc={rc}; " + last_error(out / "run.log")
    else:
        from recipe.copd.plots import plot_training

        row["plots"] = [str(p) for p in plot_training(out / "metrics.jsonl", out)]
    return row


def last_error(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    errors = [ln for ln in lines if "Error" in ln or "error:" in ln]
    return (errors or lines or ["no output"])[-1][:300]


def summarize(out: Path, cfg) -> dict:
    """Steps, last native reward per data source, overlap range and the cross share range over the PPO mini-batches
    of the Phase II (OPD) steps, from ``metrics.jsonl``."""
    path = out / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    steps = [r for r in rows if "training/global_step" in r]
    source = {b.name: b.data_source or "mixed" for b in cfg.copd.branches}
    rewards, overlaps, cross_min, cross_max = {}, [], [], []
    for r in steps:
        for key, value in r.items():
            if key.endswith("/copd/reward_native_mean"):
                rewards[source.get(key.split("/")[0].removeprefix("branch_"), "?")] = value
            elif key.startswith("copd/overlap/"):
                overlaps.append(value)
            elif key.endswith("/copd/cross_fraction_mb_min") and r.get("copd/phase") == "opd":
                cross_min.append(value)
            elif key.endswith("/copd/cross_fraction_mb_max") and r.get("copd/phase") == "opd":
                cross_max.append(value)
    return {
        "steps": len(steps),
        "rewards": {k: round(v, 3) for k, v in rewards.items()},
        "overlap": [round(min(overlaps), 3), round(max(overlaps), 3)] if overlaps else None,
        "cross_mb": [round(min(cross_min), 3), round(max(cross_max), 3)] if cross_min else None,
    }


def format_report(rows: list[dict]) -> str:
    head = "| preset | status | wall s | steps | final native reward per source | overlap | cross share per mb (OPD) |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        rewards = ", ".join(f"{k} {v}" for k, v in sorted((r.get("rewards") or {}).items())) or "-"
        rng = lambda v: f"{v[0]}..{v[1]}" if v else "-"  # noqa: E731
        status = {"ok": "green", "failed": "RED", "blocked": "RED (blocked)"}[r["status"]]
        lines.append(
            f"| {r['preset']} | {status} | {r.get('wall_s', '-')} | {r.get('steps', '-')} | {rewards} | "
            f"{rng(r.get('overlap'))} | {rng(r.get('cross_mb'))} |"
        )
    notes = [f"- {r['preset']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(["# CoPD rehearsal", "", *lines, *([""] + notes if notes else [])]) + "\n"


def prepare_root(root: Path, fixtures: bool = True) -> None:
    """The tiny model in ``root/hub`` and, unless ``fixtures`` is false (the user's own data), the fixtures in
    ``root/data`` (both deterministic, rebuilt each time)."""
    from copd.tiny.qwen3vl import install_hub_cache
    from recipe.copd.fixtures import write_fixtures

    install_hub_cache(TINY_ID, cache_dir=str(root / "hub"))
    if fixtures:
        write_fixtures(str(root / "data"), n_train=16, n_val=4)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m recipe.copd.rehearse",
        description=__doc__.splitlines()[0],
        epilog="Hydra overrides after -- apply to every preset after the shrink's, e.g. -- data.max_prompt_length=1024",
    )
    p.add_argument("presets", nargs="*", help="presets under configs/ (default: all), e.g. qwen3vl_text_image")
    p.add_argument("--out", default="outputs/rehearsal", help="output folder (default: outputs/rehearsal)")
    p.add_argument("--workers", type=int, default=1, help="CPU trainer ranks per branch (default 1)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per preset before it counts as failed")
    p.add_argument(
        "--data",
        help="folder of {text,image,video}_{train,val}.parquet (python -m recipe.copd.data ... --output DIR) to "
        "train on instead of the built-in fixtures",
    )
    p.add_argument("--report-only", action="store_true", help="rebuild DIR/report.md from DIR's outputs; run nothing")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []  # hydra overrides after the shrink's, every preset
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    known = presets()
    unknown = [n for n in args.presets if n not in known]
    if unknown:
        print(f"{p.prog}: error: unknown preset(s) {unknown}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    names = [n for n in known if n in args.presets] if args.presets else known
    root = Path(args.out).resolve()
    data = Path(args.data).resolve() if args.data else None
    if data is not None and not data.is_dir():
        print(f"{p.prog}: error: --data {args.data}: no such folder", file=sys.stderr)
        return 2
    if args.report_only:
        rows = json.loads((root / "report.json").read_text()) if (root / "report.json").exists() else []
        rows = [{**r, **summarize(root / r["preset"], compose_preset(r["preset"]))} for r in rows]
        (root / "report.json").write_text(json.dumps(rows, indent=1))
        (root / "report.md").write_text(format_report(rows))
        print(format_report(rows), end="")
        return 0 if rows and all(r["status"] == "ok" for r in rows) else 1
    root.mkdir(parents=True, exist_ok=True)
    prepare_root(root, fixtures=data is None)
    # rows of presets rehearsed earlier into the same folder and not rerun now stay in the report
    earlier = json.loads((root / "report.json").read_text()) if (root / "report.json").exists() else []
    done = {r["preset"]: r for r in earlier if r["preset"] in known and r["preset"] not in names}
    rows = []
    for name in names:
        print(f"rehearse: {name} ...", flush=True)
        rows.append(run_preset(name, root, args.workers, args.timeout, data, extra))
        r = rows[-1]
        print(f"rehearse: {name}: {r['status']} ({r.get('wall_s', 0)} s) {r.get('note', '')}", flush=True)
        done[name] = r
        everything = [done[n] for n in known if n in done]
        texts = {"report.md": format_report(everything), "report.json": json.dumps(everything, indent=1)}
        for fname, text in texts.items():
            tmp = root / f"{fname}.tmp"
            tmp.write_text(text)
            os.replace(tmp, root / fname)
    print(format_report([done[n] for n in known if n in done]), end="")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
