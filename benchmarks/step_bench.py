"""One GRPO step on CPU: the recipe's Phase I step (verl's workers) over a plain PyTorch loop doing the same work.

Same tiny model (the toy's, briefly warm-started in ``--workdir``), same prompts (the toy's add train
file), same group size n, response length, learning rate, weight decay and clip range, one optimizer step per step:

  plain   in this process: HF ``generate`` of B prompts x n, exact-match reward, GRPO advantages, one no-grad forward
          for the old log-probs, one clipped policy-gradient step (AdamW) on all B x n rows.
  recipe  ``python -m recipe.copd.main`` with S_OPD=0 (GRPO only, probe off) and the trainer's own ``timing_s/*``:
          K=1 (one branch), K=1 scoring through verl's reward workers (``copd.run.inline_reward=false``, the
          per-sample Ray call the recipe removes on CPU), K=2 colocated (the default), K=2 split (disjoint pools,
          ``copd.placement=split``).

Medians over steps (the first ``--warmup`` steps of each run dropped). Both sides pin one torch thread per process.
The last line is ``recipe/plain step time: X.XX`` (recipe K=1 step over the plain step).

    python benchmarks/step_bench.py [--steps 6 --batch 16 --n 8 --workdir outputs/copd_step_bench]
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PARTS = ("gen", "weight_sync", "old_log_prob", "adv", "update_actor")


def prepare(workdir: str, warm_steps: int) -> tuple[dict, Path]:
    """The toy's data files and a briefly warm-started model (cached in ``workdir``): timing needs the toy's shapes
    and prompts, not its accuracy."""
    from recipe.copd.toy.tasks import build_toy_data
    from recipe.copd.toy.warmstart import warm_start

    files = build_toy_data(os.path.join(workdir, "data"), n_train=2000, n_val=64, n_test=300)
    model = warm_start(os.path.join(workdir, "model"), steps=warm_steps, target_acc=None)
    return files, model


def branch_overrides(files: dict, skills: list[str], model: Path) -> list[str]:
    """The recipe's overrides for branches on ``skills`` with the toy's files and reward, outside the toy preset."""
    from recipe.copd.toy.prepare import REWARD_PATH

    items = [
        f"{{name: {s}, data_source: copd_toy/{s}, train_files: [{files[s]['train']}], "
        f"val_files: [{files[s]['val']}], reward_path: {REWARD_PATH}}}"
        for s in skills
    ]
    topology = ["copd.topology=all"] if len(skills) == 1 else []
    return [f"copd.branches=[{', '.join(items)}]", *topology, "copd.run.toy.enable=false",
            f"actor_rollout_ref.model.path={model}"]  # fmt: skip


# ---------------------------------------------------------------------------------------------------- plain loop
def plain_steps(model_dir: Path, train_file: Path, args) -> list[dict]:
    """``args.steps + args.warmup`` plain GRPO steps; per step the seconds of each part."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipe.copd.toy.evaluate import chat_prompt_ids
    from recipe.copd.toy.reward import compute_score
    from recipe.copd.toy.tasks import read_problems

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    problems = read_problems(train_file)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    rows = []
    for step in range(args.steps + args.warmup):
        t = {}
        batch = problems[step * args.batch : (step + 1) * args.batch]
        prompts = [chat_prompt_ids(tok, p["prompt"]) for p in batch for _ in range(args.n)]
        P = max(map(len, prompts))
        ids = torch.tensor([[pad] * (P - len(p)) + p for p in prompts])
        attn = (torch.arange(P) >= torch.tensor([P - len(p) for p in prompts])[:, None]).long()
        t0 = time.perf_counter()
        model.eval()
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=attn, max_new_tokens=args.response_length, do_sample=True,
                temperature=1.0, top_k=None, top_p=1.0, eos_token_id=eos, pad_token_id=pad,
            )  # fmt: skip
        resp = out[:, P:]
        t["gen"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        is_eos = (resp == eos).int()
        mask = ((is_eos.cumsum(-1) - is_eos) == 0).float()  # up to and including the first EOS
        texts = tok.batch_decode(resp, skip_special_tokens=True)
        answers = [p["answer"] for p in batch for _ in range(args.n)]
        reward = torch.tensor([compute_score("", s, a) for s, a in zip(texts, answers, strict=True)])
        r_G = reward.view(-1, args.n)
        adv = ((r_G - r_G.mean(-1, keepdim=True)) / (r_G.std(-1, keepdim=True) + 1e-6)).view(-1, 1)
        t["adv"] = time.perf_counter() - t0
        full_attn = torch.cat([attn, mask.long()], dim=1)
        pos = (full_attn.cumsum(-1) - 1).clamp(min=0)

        def log_probs(out=out, full_attn=full_attn, pos=pos, P=P, resp=resp):
            logits = model(input_ids=out, attention_mask=full_attn, position_ids=pos).logits[:, P - 1 : -1]
            return torch.log_softmax(logits.float(), -1).gather(-1, resp.unsqueeze(-1)).squeeze(-1)

        t0 = time.perf_counter()
        with torch.no_grad():
            old = log_probs()
        t["old_log_prob"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        model.train()
        ratio = torch.exp(log_probs() - old)
        pg = -torch.minimum(ratio * adv, ratio.clamp(1 - 0.2, 1 + 0.28) * adv)
        loss = (pg * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        t["update_actor"] = time.perf_counter() - t0
        t["step"] = sum(t.values())
        rows.append(t)
    return rows[args.warmup :]


# ---------------------------------------------------------------------------------------------------- recipe runs
def recipe_steps(tag: str, overrides: list[str], args, out: Path) -> list[dict]:
    """One recipe run; per timed step its ``timing_s/*`` (both branches together)."""
    out.mkdir(parents=True, exist_ok=True)
    S = args.steps + args.warmup
    cmd = [
        sys.executable, "-m", "recipe.copd.main", f"trainer.default_local_dir={out}",
        "copd.run.validate_merged=false", "copd.metrics_interval=0",
        "copd.n_cycles=1", f"copd.s_rl={S}", "copd.s_opd=0", f"data.train_batch_size={args.batch}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={args.batch}", f"actor_rollout_ref.rollout.n={args.n}",
        f"data.max_response_length={args.response_length}", f"actor_rollout_ref.actor.optim.lr={args.lr}",
        *overrides,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.time()
    with open(out / "log.txt", "w") as log:
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=args.run_timeout
            )
        except subprocess.TimeoutExpired:
            print(f"  {tag}: no result within {args.run_timeout}s (see {out / 'log.txt'})", flush=True)
            return []
    if proc.returncode != 0:
        print(f"  {tag}: failed (exit {proc.returncode}); see {out / 'log.txt'}", flush=True)
        return []
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    rows = [{k[len("timing_s/") :]: v for k, v in r.items() if k.startswith("timing_s/")} for r in rows]
    rows = [r for r in rows if "step" in r][args.warmup :]
    print(f"  {tag}: {len(rows)} timed steps, run took {time.time() - t0:.0f}s", flush=True)
    return rows


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r.get(key, 0.0) for r in rows) if rows else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of each run")
    ap.add_argument("--batch", type=int, default=16, help="prompts per step (per branch)")
    ap.add_argument("--n", type=int, default=8, help="samples per prompt")
    ap.add_argument("--response-length", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--workdir", default="outputs/copd_step_bench", help="the toy's data and a model (cached)")
    ap.add_argument("--warm-steps", type=int, default=50, help="warm-start steps of the benchmark's model")
    ap.add_argument("--out", default="/tmp/copd_step_bench")
    ap.add_argument("--skip-split", action="store_true", help="leave out the K=2 split run")
    ap.add_argument("--skip-colocate", action="store_true", help="leave out the K=2 colocated run")
    ap.add_argument(
        "--skip-reward-workers",
        action="store_true",
        help="leave out the K=1 run scoring through verl's reward workers (copd.run.inline_reward=false)",
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="TAG=OVERRIDE[,OVERRIDE...]",
        help="also time the K=1 run with these overrides, e.g. 'agent2=actor_rollout_ref.rollout.agent.num_workers=2'",
    )
    ap.add_argument("--run-timeout", type=float, default=900, help="seconds one recipe run may take")
    ap.add_argument("--json-out", default=None, help="also write every run's per-step timings here")
    args = ap.parse_args()
    args.workdir = os.path.abspath(args.workdir)
    files, model_dir = prepare(args.workdir, args.warm_steps)
    train_file = files["add"]["train"]
    load0 = os.getloadavg()[0]
    print(f"step_bench: B={args.batch} x n={args.n}, response <= {args.response_length} tokens (load {load0:.1f})")
    one, two = branch_overrides(files, ["add"], model_dir), branch_overrides(files, ["add", "mul"], model_dir)
    runs = {"recipe K=1": one}
    if not args.skip_reward_workers:
        runs["K=1 reward workers"] = [*one, "copd.run.inline_reward=false"]
    for variant in args.variant:
        tag, _, overrides = variant.partition("=")
        runs[f"K=1 {tag}"] = [*one, *overrides.split(",")]
    if not args.skip_colocate:
        runs["recipe K=2 colocate"] = [*two, "copd.placement=colocate"]
    if not args.skip_split:
        runs["recipe K=2 split"] = [*two, "copd.placement=split", "trainer.n_gpus_per_node=2"]
    results = {"plain": plain_steps(model_dir, train_file, args)}
    print(f"  plain: {len(results['plain'])} timed steps", flush=True)
    for tag, overrides in runs.items():
        results[tag] = recipe_steps(tag, overrides, args, Path(args.out) / tag.replace(" ", "_").replace("=", ""))
    print(f"{'median s':>24}" + "".join(f"{p:>13}" for p in (*PARTS, "rest", "step")))
    for tag, rows in results.items():
        parts = {p: median(rows, p) for p in PARTS}
        step = median(rows, "step")
        cells = [*parts.values(), step - sum(parts.values()), step]
        print(f"{tag:>24}" + "".join(f"{c:13.3f}" for c in cells))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))
    plain, k1 = median(results["plain"], "step"), median(results["recipe K=1"], "step")
    print(f"load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after")
    if results.get("recipe K=2 colocate"):
        print(f"recipe K=2 colocate / K=1 step time: {median(results['recipe K=2 colocate'], 'step') / k1:.2f}")
    if results.get("K=1 reward workers"):
        workers = median(results["K=1 reward workers"], "step")
        print(f"recipe with verl's reward workers (inline_reward=false)/plain step time: {workers / plain:.2f}")
    if results.get("recipe K=2 split"):
        print(f"recipe K=2 split / K=1 step time: {median(results['recipe K=2 split'], 'step') / k1:.2f} (goal <= 1.2)")
    print(f"recipe/plain step time: {k1 / plain:.2f}")


if __name__ == "__main__":
    main()
