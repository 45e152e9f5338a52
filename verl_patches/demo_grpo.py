"""Stock verl GRPO on CPU: `python -m verl_patches.demo_grpo [--workers 1|2] [--steps N] [--out DIR]`.

Builds a tiny random Qwen3, its character tokenizer and the char-class task (verl_patches.demo_task) offline into
DIR, then runs verl's own `python -m verl.trainer.main_ppo` (V1 trainer, sync, FSDP2, fp32, sdpa, rollout `hf`) as
a subprocess with `verl_patches.cpu_overrides`, prints the mean reward and step time per step as verl logs them,
and a summary (start reward, end reward, steps, wall time). main_ppo's own output goes to DIR/main_ppo.log.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import verl_patches
from verl_patches import demo_task

#: Metrics printed per step (verl's names).
STEP_METRICS = (
    "critic/score/mean",
    "timing_s/step",
    "timing_s/gen",
    "timing_s/old_log_prob",
    "timing_s/update_actor",
    "timing_s/update_weights",
)


def prepare(out: Path, n_train: int = 256, n_val: int = 32, seed: int = 0) -> Path:
    """Write the model + tokenizer and the train/val parquet files into `out`; return the model path."""
    from copd.tiny.qwen3 import save_tiny

    out.mkdir(parents=True, exist_ok=True)
    demo_task.write_parquet(str(out / "train.parquet"), n_train, seed, "train")
    demo_task.write_parquet(str(out / "val.parquet"), n_val, seed, "val")
    return save_tiny(out / "model", seed=seed)


def overrides(out: Path, model: Path, workers: int, steps: int, batch: int, n: int, lr: float) -> list[str]:
    """cpu_overrides(workers) plus the task: GRPO, batch prompts x n samples, one actor update per step."""
    per_rank = max(1, batch * n // workers)  # sequences each rank holds: one micro-batch per pass
    return verl_patches.cpu_overrides(workers) + [
        "algorithm.adv_estimator=grpo",
        "algorithm.use_kl_in_reward=False",
        f"data.train_files={out / 'train.parquet'}",
        f"data.val_files={out / 'val.parquet'}",
        f"data.train_batch_size={batch}",
        "data.max_prompt_length=64",
        f"data.max_response_length={demo_task.ANSWER_CHARS}",
        f"actor_rollout_ref.model.path={model}",
        f"actor_rollout_ref.actor.optim.lr={lr}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={batch}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={per_rank}",
        "actor_rollout_ref.actor.use_kl_loss=False",
        f"actor_rollout_ref.rollout.n={n}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={per_rank}",
        f"reward.custom_reward_function.path={demo_task.__file__}",
        "reward.custom_reward_function.name=compute_score",
        f"trainer.total_training_steps={steps}",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        "trainer.logger=[console,file]",
        "trainer.project_name=verl_patches_demo",
        f"trainer.experiment_name=grpo_w{workers}",
        f"trainer.default_local_dir={out / 'ckpt'}",
    ]


def read_metrics(path: Path) -> list[dict]:
    """The per-step metric dicts verl's file logger has written so far."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line)["data"] | {"step": json.loads(line)["step"]} for line in lines if line.strip()]


def run(out: Path, workers: int, steps: int, batch: int, n: int, lr: float, timeout_s: float, extra: list[str]) -> dict:
    """Prepare, launch main_ppo, stream its per-step metrics; return the summary."""
    model = prepare(out)
    metrics_path = out / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    env = (
        os.environ
        | verl_patches.worker_env()
        | {"VERL_FILE_LOGGER_PATH": str(metrics_path), "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
    )
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", *overrides(out, model, workers, steps, batch, n, lr), *extra]
    start, printed = time.time(), 0
    with open(out / "main_ppo.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None and time.time() - start < timeout_s:
            time.sleep(1.0)
            printed = _print_new(read_metrics(metrics_path), printed)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rows = read_metrics(metrics_path)
    _print_new(rows, printed)
    rewards = [row["critic/score/mean"] for row in rows]
    summary = {
        "returncode": proc.returncode,
        "steps": len(rows),
        "start_reward": rewards[0] if rewards else None,
        "end_reward": rewards[-1] if rewards else None,
        "wall_s": round(time.time() - start, 1),
        "log": str(out / "main_ppo.log"),
    }
    print("summary " + json.dumps(summary), flush=True)
    if proc.returncode != 0:
        print((out / "main_ppo.log").read_text()[-4000:], file=sys.stderr)
    return summary


def _print_new(rows: list[dict], printed: int) -> int:
    for row in rows[printed:]:
        parts = [f"step {row['step']:3d}"] + [f"{k.split('/', 1)[1]}={row[k]:.3f}" for k in STEP_METRICS if k in row]
        print("  ".join(parts), flush=True)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="trainer ranks (FSDP2 over gloo), one hf replica each")
    parser.add_argument("--steps", type=int, default=30, help="GRPO steps")
    parser.add_argument("--out", type=Path, default=Path("runs/demo_grpo"), help="where model, data, logs go")
    parser.add_argument("--batch", type=int, default=8, help="prompts per step")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt (GRPO group size)")
    parser.add_argument("--lr", type=float, default=3e-3, help="actor learning rate (random init: large)")
    parser.add_argument("--timeout", type=float, default=900, help="kill main_ppo after this many seconds")
    parser.add_argument("overrides", nargs="*", help="extra hydra overrides for main_ppo (win over the defaults)")
    args = parser.parse_args(argv)
    summary = run(
        args.out.resolve(), args.workers, args.steps, args.batch, args.n, args.lr, args.timeout, args.overrides
    )
    return 0 if summary["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
