"""Supervised warm start of the tiny Qwen3 on both toy skills, so that GRPO has a non-zero reward to start from.

A skill whose greedy accuracy starts below ~15% does not improve under GRPO here (see
shared/docs/offline-models-and-data.md), so the base model of the embedded default is first trained by next-token
cross-entropy on chat-formatted `prompt + answer + <|im_end|>`, with the loss on the answer and end tokens only, over
the two skills' WARM problems (`tasks.warm_problems`: answers in the mixed style the RL then has to sort out) mixed
`mix` = add:mul. Training stops on accuracy, not on a step count: at the first validation check where every skill's
answer VALUE (style ignored) reached its target greedy accuracy, the learning rate decays linearly to 0 over
`anneal_steps` and training ends (stopping mid-descent instead leaves a model that any small update improves on
every skill, which hides what RL learns: docs/LOG.md, 2026-12-03). Addition is learned late and abruptly (about
0.05 -> 0.7 within 150 steps), so a fixed step count would land on either side of that jump depending on the seed
and machine; a time budget bounds the whole run on slow machines (it starts the anneal early). Measured (seed 0,
2 threads, quiet machine): see docs/LOG.md. The result is an HF folder cached by a hash of its arguments.

Its step is compute-bound and two torch threads use a second core badly (batch 64: 97 ms on 2 threads, 121 ms on 1;
two 1-thread processes at batch 32 each: 67-72 ms, docs/LOG.md 2026-12-07), so by default it trains data-parallel in
`processes` child processes of one thread each (`python -m recipe.copd.toy.warmstart SPEC RANK`, gloo over a file
store): every process draws the same full batch and takes its share, the gradient of the batch's summed token loss
over the whole batch's token count is summed across them (the same gradient as one process on the whole batch, up to
float rounding), each validation check scores a share of the problems and sums the hits, and rank 0 logs and saves.
Training attention is eager (-13% a step against SDPA at these sizes); the saved config names no attention, so
verl's workers and the evaluation load their default (SDPA).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from recipe.copd.toy.evaluate import chat_prompt_ids, greedy_answers, greedy_scores, torch_threads
from recipe.copd.toy.tasks import SKILLS, answer_value, make_problems, operand_pool, warm_problems

MANIFEST = "copd_warmstart.json"
_WARMSTART_VERSION = 5  # bump when the recipe below changes, so cached folders are rebuilt (5: data-parallel, eager)
IGNORE = -100  # label of tokens without loss (prompt, padding), as in transformers' causal LM loss


class Group:
    """The warm start's data-parallel group as this process sees it: its rank, the world size, sums across ranks.

    ``Group()`` is one process alone (no torch.distributed); a child process of ``warm_start(processes=N)`` has
    ``Group(rank, N)`` over the default gloo process group.
    """

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

    def share(self, items: list) -> list:
        """This rank's share of `items` (every world-th item from its rank on)."""
        return items[self.rank :: self.world]

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed in place over the ranks (unchanged alone)."""
        if self.world > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


SOLO = Group()


def encode_examples(tokenizer, problems: list[dict]) -> list[tuple[list[int], int]]:
    """Each problem as (prompt ids + answer ids + eos id, number of prompt ids)."""
    examples = []
    for p in problems:
        prompt = chat_prompt_ids(tokenizer, p["prompt"])
        answer = tokenizer.encode(p["answer"], add_special_tokens=False)
        examples.append((prompt + answer + [tokenizer.eos_token_id], len(prompt)))
    return examples


def collate(examples: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad examples into `input_ids_B_T`, `attention_mask_B_T` and `labels_B_T` (IGNORE outside answers).

    Shape: B = len(examples), T = the longest example.
    """
    T = max(len(ids) for ids, _ in examples)
    input_ids_B_T = torch.full((len(examples), T), pad_id, dtype=torch.long)
    attention_mask_B_T = torch.zeros((len(examples), T), dtype=torch.long)
    labels_B_T = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for b, (ids, n_prompt) in enumerate(examples):
        input_ids_B_T[b, : len(ids)] = torch.tensor(ids)
        attention_mask_B_T[b, : len(ids)] = 1
        labels_B_T[b, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
    return {"input_ids": input_ids_B_T, "attention_mask": attention_mask_B_T, "labels": labels_B_T}


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to lr / 10 at `steps`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def args_hash(args: dict) -> str:
    """A short stable hash of the warm start's arguments (and recipe version)."""
    payload = json.dumps({**args, "version": _WARMSTART_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def read_manifest(out_dir: str | Path) -> dict | None:
    """The warm start manifest of `out_dir`, or None when it has none."""
    path = Path(out_dir) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def batch_counts(batch_size: int, weights: dict[str, float]) -> dict[str, int]:
    """Examples per skill in one batch, proportional to `weights` (largest remainders get the rounding)."""
    total = sum(weights.values())
    exact = {skill: batch_size * w / total for skill, w in weights.items()}
    counts = {skill: int(x) for skill, x in exact.items()}
    for skill in sorted(exact, key=lambda s: counts[s] - exact[s])[: batch_size - sum(counts.values())]:
        counts[skill] += 1
    return counts


def value_hits(model, tokenizer, problems: list[dict]) -> list[bool]:
    """Whether each greedy answer has the right value, whatever its style ("2244" and "2244." both count for
    "2244.")."""
    answers = greedy_answers(model, tokenizer, [p["prompt"] for p in problems])
    return [answer_value(a) == answer_value(p["answer"]) for a, p in zip(answers, problems, strict=True)]


def _hit_counts(score: Callable[[list[dict]], list], val: dict[str, list[dict]], group: Group) -> dict[str, int]:
    """Per skill, the sum over the group's ranks of `score`'s hits on each rank's share of the skill's problems."""
    local = []
    for problems in val.values():
        mine = group.share(problems)
        local.append(float(sum(score(mine))) if mine else 0.0)
    totals = group.sum_(torch.tensor(local, dtype=torch.float64)).tolist()
    return {skill: round(total) for skill, total in zip(val, totals, strict=True)}


def _val_accuracy(model, tokenizer, val: dict[str, list[dict]], group: Group = SOLO) -> dict[str, float]:
    """Greedy accuracy of the exact answer (value and the skill's format: the reward)."""
    hits = _hit_counts(lambda problems: greedy_scores(model, tokenizer, problems), val, group)
    return {skill: round(hits[skill] / len(problems), 4) for skill, problems in val.items()}


def value_accuracy(model, tokenizer, val: dict[str, list[dict]], group: Group = SOLO) -> dict[str, float]:
    """Greedy accuracy of the answer's value, whatever its style, per skill."""
    hits = _hit_counts(lambda problems: value_hits(model, tokenizer, problems), val, group)
    return {skill: round(hits[skill] / len(problems), 4) for skill, problems in val.items()}


#: A validation check first scores this many VAL problems per skill, and the rest only when every skill's share
#: is within SCREEN_MARGIN of its target. A head this far below is practically never part of a full set at its
#: target (200 problems at 0.6 with the first 50 below 0.4: p ~ 3e-4, hypergeometric, and then the stop comes one
#: check later), so the stop decisions are the full check's, and early checks, far from their targets, cost a
#: quarter (~7 s of a ~100 s warm start on the 2-core machine of 2026-12-07).
SCREEN_PROBLEMS, SCREEN_MARGIN = 50, 0.2


def screened_value_accuracy(
    model, tokenizer, val: dict[str, list[dict]], targets, group: Group = SOLO
) -> tuple[dict[str, float], bool]:
    """(value accuracy per skill, whether it is the screen's only): the first ``SCREEN_PROBLEMS`` of each skill,
    completed with the rest of VAL when every skill's screen reached its target minus ``SCREEN_MARGIN``."""

    def score(problems):
        return value_hits(model, tokenizer, problems)

    head = _hit_counts(score, {skill: problems[:SCREEN_PROBLEMS] for skill, problems in val.items()}, group)
    screen = {skill: head[skill] / len(problems[:SCREEN_PROBLEMS]) for skill, problems in val.items()}
    partial = any(len(problems) > SCREEN_PROBLEMS for problems in val.values())
    if partial and any(screen[s] < t - SCREEN_MARGIN for s, t in zip(SKILLS, targets, strict=True)):
        return {skill: round(a, 4) for skill, a in screen.items()}, True
    tail = _hit_counts(score, {skill: problems[SCREEN_PROBLEMS:] for skill, problems in val.items()}, group)
    return {skill: round((head[skill] + tail[skill]) / len(problems), 4) for skill, problems in val.items()}, False


def _sgd_step(
    model, optimizer, examples: list[tuple[list[int], int]], pad_id: int, lr: float, group: Group, flag: float
) -> tuple[float, float]:
    """One AdamW step on the answer-token cross-entropy of the whole batch `examples`, this rank training on its share;
    returns (the batch's loss, `flag` summed over the ranks).

    The loss is each rank's summed token cross-entropy over the WHOLE batch's answer-token count, and the gradients are
    summed across ranks (with `flag` riding along), so every rank steps with the gradient of the whole batch's mean
    token loss, as one process on the whole batch would.
    """
    for param_group in optimizer.param_groups:
        param_group["lr"] = lr
    model.train()
    n_tokens = sum(len(ids) - n_prompt for ids, n_prompt in examples)
    batch = collate(group.share(examples), pad_id)
    logits_B_T_V = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels_B_T = batch["labels"]
    loss = (
        F.cross_entropy(
            logits_B_T_V[:, :-1].reshape(-1, logits_B_T_V.shape[-1]).float(),
            labels_B_T[:, 1:].reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
        / n_tokens
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = list(model.parameters())
    if group.world > 1:
        packet = torch.cat([p.grad.reshape(-1) for p in params] + [torch.tensor([loss.item(), flag])])
        group.sum_(packet)
        offset = 0
        for p in params:
            p.grad.copy_(packet[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        loss_value, flag = packet[-2].item(), packet[-1].item()
    else:
        loss_value = loss.item()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    return loss_value, flag


def _train(model, tokenizer, args: dict, log: Callable[[str], None], group: Group = SOLO) -> dict:
    """The supervised loop; returns the training record stored in the manifest.

    Every `eval_every` steps the greedy accuracy of each skill's answer value on VAL problems is measured (screened:
    `screened_value_accuracy`); once every
    skill reached its `target_acc` (or the time budget is spent) the learning rate decays linearly to 0 over
    `anneal_steps` and the run ends. All skills stay in every batch (a skill left out is forgotten within a few
    hundred steps). The time budget is rank 0's clock, summed into the next step's gradients so that every rank
    starts the anneal at the same step.
    """
    seed, targets = args["seed"], args["target_acc"]
    pools = {skill: warm_problems(skill, len(operand_pool(skill, "warm")), seed) for skill in SKILLS}
    examples = {skill: encode_examples(tokenizer, problems) for skill, problems in pools.items()}
    val = {skill: make_problems(skill, args["n_val"], seed, "val") for skill in SKILLS}
    counts = batch_counts(args["batch_size"], dict(zip(SKILLS, args["mix"], strict=True)))
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args["lr"], weight_decay=0.01, betas=(0.9, 0.98))
    start, curve, accs, steps_done = time.monotonic(), [], {}, 0
    anneal_from, reached_at, lr = None, None, args["lr"]  # (step, lr) where the anneal began
    budget, over_budget = args["time_budget_s"], False
    while steps_done < args["steps"]:
        if anneal_from is not None and steps_done >= anneal_from[0] + args["anneal_steps"]:
            break
        if anneal_from is None and over_budget:
            log(f"[warm start] time budget {budget} s reached after {steps_done} steps: annealing now")
            anneal_from = (steps_done, lr)
        idx = {s: torch.randint(len(examples[s]), (n,), generator=gen).tolist() for s, n in counts.items()}
        batch = [examples[s][i] for s in SKILLS for i in idx[s]]
        if anneal_from is None:
            lr = lr_at(steps_done, args["steps"], args["lr"], warmup=max(1, args["steps"] // 20))
        else:  # linear decay to 0 over anneal_steps: the model settles instead of stopping mid-descent
            first, lr0 = anneal_from
            lr = lr0 * (first + args["anneal_steps"] - steps_done) / args["anneal_steps"]
        late = float(group.rank == 0 and budget is not None and time.monotonic() - start > budget)
        loss, late = _sgd_step(model, optimizer, batch, tokenizer.pad_token_id, lr, group, late)
        curve.append(round(loss, 5))
        over_budget = late > 0
        steps_done += 1
        if targets is not None and anneal_from is None and steps_done % args["eval_every"] == 0:
            accs, screened = screened_value_accuracy(model, tokenizer, val, targets, group)
            took = time.monotonic() - start
            where = f"first {SCREEN_PROBLEMS}" if screened else "val"
            log(f"[warm start] step {steps_done} loss {curve[-1]:.4f} {where} (value) {accs} ({took:.1f} s)")
            if not screened and all(accs[s] >= t for s, t in zip(SKILLS, targets, strict=True)):
                reached_at, anneal_from = steps_done, (steps_done, lr)
                n = args["anneal_steps"]
                log(f"[warm start] targets {list(targets)} reached at step {steps_done}: annealing {n} steps")
                if args["anneal_steps"] == 0:
                    break
    elapsed = round(time.monotonic() - start, 2)
    return {
        "target_reached_at": reached_at,
        "steps_done": steps_done,
        "elapsed_s": elapsed,
        "val_accuracy": _val_accuracy(model, tokenizer, val, group),
        "val_value_accuracy": value_accuracy(model, tokenizer, val, group),
        "loss_curve": curve,
    }


def _save_atomically(model, tokenizer, out_dir: Path, manifest: dict) -> None:
    """Write the HF folder next to `out_dir`, then swap it in with renames."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def warm_start(
    out_dir: str | Path,
    *,
    steps: int = 1500,
    lr: float = 2e-3,
    batch_size: int = 64,
    mix: tuple[int, int] = (1, 2),
    seed: int = 0,
    hidden_size: int = 128,
    num_layers: int = 4,
    intermediate_size: int | None = 256,
    target_acc: tuple[float, float] | None = (0.6, 0.4),
    anneal_steps: int = 100,
    eval_every: int = 25,
    n_val: int = 200,
    processes: int = 2,
    threads: int = 2,
    time_budget_s: float | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Build the char tokenizer and tiny Qwen3 (~0.62M parameters at the defaults), train them on both skills, save an
    HF folder (model, tokenizer, generation config, manifest `copd_warmstart.json`) at `out_dir`, atomically.

    steps: the most optimizer steps (the cosine schedule spans them; the target stop usually comes first).
    anneal_steps: steps of linear learning-rate decay to 0 after the targets (or the time budget) are reached.
    lr: peak AdamW learning rate (5% linear warm-up, cosine decay to lr / 10).
    batch_size: sequences per step, split between the skills by `mix`.
    mix: (add, mul) weights of the batch.
    seed: seeds the weights and the batch sampling (problems and splits are fixed per seed in `tasks`).
    hidden_size, num_layers, intermediate_size: the tiny Qwen3's size (heads: hidden / 32, kv heads: hidden / 64).
    target_acc: (add, mul) greedy VAL accuracies of the answer value at which the anneal starts; None trains all
    `steps`.
    eval_every: steps between validation checks. n_val: VAL problems per skill per check.
    processes: data-parallel training processes, one torch thread each (see the module's docstring); 1 trains in this
    process on `threads` torch threads (restored after). time_budget_s: start the anneal after this many seconds of
    training (None: no limit). log: where progress lines go.

    Cached: when `out_dir` holds a manifest whose argument hash matches, returns at once. `processes`, `threads` and
    `log` are left out of the hash (they change speed, rounding and output, not the recipe); `time_budget_s` is in it,
    since it can stop the run early. fp32 throughout (bf16 is far slower on these CPUs).
    """
    out_dir = Path(out_dir)
    args = dict(
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        mix=list(mix),
        seed=seed,
        hidden_size=hidden_size,
        num_layers=num_layers,
        intermediate_size=intermediate_size,
        target_acc=target_acc,
        anneal_steps=anneal_steps,
        eval_every=eval_every,
        n_val=n_val,
        time_budget_s=time_budget_s,
    )
    digest = args_hash(args)
    manifest = read_manifest(out_dir) if out_dir.exists() else None
    if manifest is not None and manifest.get("hash") == digest:
        log(f"[warm start] cache hit: {out_dir} (hash {digest})")
        _warn_if_short(manifest, target_acc, log)
        return out_dir
    if out_dir.exists() and manifest is None and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not a warm start folder (no {MANIFEST}): pick another out_dir")
    if isinstance(anneal_steps, bool) or not isinstance(anneal_steps, int) or anneal_steps < 0:
        raise ValueError(f"anneal_steps={anneal_steps!r} must be an integer >= 0")
    if len(mix) != 2 or min(mix) < 0 or sum(mix) <= 0:
        raise ValueError(f"mix={mix} must be two non-negative weights (add, mul) with a positive sum, e.g. (1, 2)")

    if isinstance(processes, bool) or not isinstance(processes, int) or not 1 <= processes <= batch_size:
        raise ValueError(f"processes={processes!r} must be an integer from 1 to batch_size={batch_size}")

    spec = {"args": args, "digest": digest, "out_dir": str(out_dir)}
    if processes == 1:
        with torch_threads(threads):
            record = _build_and_train(spec, SOLO, log)
    else:
        _train_in_processes(spec, processes, log)
        record = read_manifest(out_dir)
    log(f"[warm start] saved {out_dir} after {record['steps_done']} steps in {record['elapsed_s']} s")
    _warn_if_short(record, target_acc, log)
    return out_dir


def _build_and_train(spec: dict, group: Group, log: Callable[[str], None]) -> dict:
    """Build the tokenizer and model, train them (this rank's part), and on rank 0 save the folder; the record."""
    from copd.tiny.char_tokenizer import build_char_tokenizer
    from copd.tiny.qwen3 import build_tiny_qwen3

    args = spec["args"]
    torch.manual_seed(args["seed"])
    tokenizer = build_char_tokenizer(role_tokens=True)  # 14-token prompts instead of 25
    hidden_size = args["hidden_size"]
    model = build_tiny_qwen3(
        tokenizer,
        hidden_size=hidden_size,
        num_layers=args["num_layers"],
        num_heads=max(1, hidden_size // 32),
        num_kv_heads=max(1, hidden_size // 64),
        intermediate_size=args["intermediate_size"],
        seed=args["seed"],
    ).float()
    if group.world > 1:  # the same seed builds the same weights; rank 0's are the ones, whatever the platform
        for param in model.parameters():
            dist.broadcast(param.data, src=0)
    num_params = sum(p.numel() for p in model.parameters())
    threads = torch.get_num_threads()
    where = f"{group.world} processes of 1 thread" if group.world > 1 else f"{threads} thread{'s' * (threads > 1)}"
    log(
        f"[warm start] {num_params / 1e6:.2f}M parameters, up to {args['steps']} steps, lr {args['lr']}, "
        f"mix add:mul {args['mix']}, {where}"
    )
    model.set_attn_implementation("eager")  # the faster one for training at these sizes; not saved in config.json
    record = _train(model, tokenizer, args, log, group)
    if group.rank == 0:
        manifest = {"hash": spec["digest"], "args": args, "num_params": num_params, **record}
        _save_atomically(model.eval(), tokenizer, Path(spec["out_dir"]), manifest)
    return record


def _train_in_processes(spec: dict, processes: int, log: Callable[[str], None]) -> None:
    """Run the training in `processes` children (``python -m recipe.copd.toy.warmstart SPEC RANK``), relaying rank
    0's lines to `log`; the first child that fails stops the others and raises one line."""
    root = str(Path(__file__).resolve().parents[3])  # the children import this project as the parent does
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
    }
    with tempfile.TemporaryDirectory(prefix="copd-warmstart-") as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps({**spec, "world": processes, "store": str(Path(tmp) / "store")}))
        children = [
            subprocess.Popen(
                [sys.executable, "-m", "recipe.copd.toy.warmstart", str(spec_path), str(rank)],
                stdout=subprocess.PIPE if rank == 0 else subprocess.DEVNULL,
                text=True,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the parent alone, which stops them: one traceback, not three
            )
            for rank in range(processes)
        ]
        relay = threading.Thread(target=_relay, args=(children[0].stdout, log), daemon=True)
        relay.start()
        try:
            while any(c.poll() is None for c in children):
                if any(c.returncode not in (None, 0) for c in children):
                    break
                time.sleep(0.1)
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                child.wait()
            relay.join(timeout=5)
        failed = [(rank, c.returncode) for rank, c in enumerate(children) if c.returncode != 0]
        if failed:
            rank, code = failed[0]
            raise RuntimeError(
                f"warm start: training process {rank} of {processes} exited with code {code}: its error is above"
            )


def _relay(stream, log: Callable[[str], None]) -> None:
    """Each line of `stream` (rank 0's stdout) to `log`, until the child closes it."""
    for line in stream:
        log(line.rstrip("\n"))


def _exit_with_parent(parent: int) -> None:
    """End this child once its parent is gone (killed past its ``finally``, e.g. SIGKILL): no orphan trains on."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _child(spec_path: str, rank: str) -> None:
    """One training process of ``_train_in_processes``."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the "Writing model shards" bar of save_pretrained
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{spec['store']}",
        rank=int(rank),
        world_size=spec["world"],
        timeout=timedelta(minutes=10),
    )
    try:
        log = (lambda line: print(line, flush=True)) if int(rank) == 0 else (lambda line: None)
        _build_and_train(spec, Group(int(rank), spec["world"]), log)
    finally:
        dist.destroy_process_group()


def _warn_if_short(record: dict, target_acc, log) -> None:
    """One warning line when the warm start stopped (time budget or step cap) before its accuracy targets."""
    if target_acc is not None and record.get("target_reached_at") is None:
        log(
            f"[warm start] warning: stopped before its targets {list(target_acc)} (val value accuracy "
            f"{record.get('val_value_accuracy')}): the base is weak and RL gets little signal; on a busy or slow "
            "machine raise copd.run.toy.warm_start_time_s (or warm_start_steps)"
        )


if __name__ == "__main__":
    _child(*sys.argv[1:])
