"""Cost of CoPD's behavioural probe against the log-prob pass it rides on (target: <= 2% extra).

One process, verl's real actor worker (FSDP2 engine, CPU platform from verl_patches), a random Qwen3.
Times, side by side and interleaved, ``compute_log_prob`` of the same batch:
  plain    verl's pass (log-probs + entropy)
  student  + top-k ids and log-probs per token (the probe's student side)
  teacher  + per-token top-k overlap and top-k symmetric KL against the student's top-k (teacher side)

    python benchmarks/probe_bench.py [--vocab 32000 --hidden 256 --layers 4 --batch 16 --seq 256 --k 16]
    python benchmarks/probe_bench.py --preset qwen3-0.6b --batch 4 --seq 256 --repeats 3   # a real model's shape

The vocabulary-wide work of the probe (one top-k per token on each side) is fixed per token while the model's
work grows with its size, so the ratio depends on the shape: ``--preset`` picks a real one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
os.environ.setdefault("MASTER_PORT", "29561")


PRESETS = {  # (vocab, hidden, layers, intermediate, heads, kv heads, head_dim, tied embeddings)
    "toy": (101, 128, 4, 256, 4, 2, 32, False),  # the embedded default's model (recipe/copd/toy/warmstart.py)
    "small": (32000, 256, 4, 768, 4, 2, 64, False),
    "qwen3-0.6b": (151936, 1024, 28, 3072, 16, 8, 128, True),
    "qwen3-1.7b": (151936, 2048, 28, 6144, 16, 8, 128, True),
}


def build_model(
    path: str, vocab: int, hidden: int, layers: int, inter: int, heads: int, kv: int, head_dim: int, tied: bool
) -> None:
    import torch
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    tok = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="t0", eos_token="t1").save_pretrained(path)
    cfg = Qwen3Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
        max_position_embeddings=4096, tie_word_embeddings=tied, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen3ForCausalLM(cfg).save_pretrained(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None, help="a model shape (overrides the next 3)")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import verl_patches

    verl_patches.apply_all()
    import torch
    import torch.distributed as dist
    import verl
    from hydra import compose, initialize_config_dir
    from verl.utils import tensordict_utils as tu

    from recipe.copd.worker import PROBE_KEY, TOPK_KEY, BehaviourProbe, CoPDActorRolloutRefWorker

    probe_s = [0.0]  # seconds inside the probe's logits processor (its own work), accumulated per pass
    original_call = BehaviourProbe.__call__

    def timed_call(self, *a, **kw):
        t0 = time.perf_counter()
        try:
            return original_call(self, *a, **kw)
        finally:
            if kw.get("student_logits") is not None:
                probe_s[0] += time.perf_counter() - t0

    BehaviourProbe.__call__ = timed_call

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    dist.init_process_group("gloo", rank=0, world_size=1)
    model_dir = tempfile.mkdtemp(prefix="copd_probe_bench_")
    if args.preset:
        shape = PRESETS[args.preset]
    else:
        heads = max(1, args.hidden // 64)
        shape = (args.vocab, args.hidden, args.layers, 3 * args.hidden, heads, max(1, heads // 2), 64, False)
    args.vocab, args.hidden, args.layers = shape[:3]
    build_model(model_dir, *shape)
    B, P, R = args.batch, args.seq // 2, args.seq // 2
    overrides = [
        f"actor_rollout_ref.model.path={model_dir}",
        "actor_rollout_ref.model.use_remove_padding=False",
        "actor_rollout_ref.rollout.name=hf",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={B}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={B}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={B}",
        "actor_rollout_ref.actor.use_dynamic_bsz=False",
        *verl_patches.cpu_overrides(1),
    ]
    cfg_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=cfg_dir, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=[o for o in overrides if not o.startswith("ray_kwargs")])
    worker = CoPDActorRolloutRefWorker(config=cfg.actor_rollout_ref, role="actor")
    worker.init_model()

    from verl.workers.utils.padding import left_right_2_no_padding

    torch.manual_seed(1)
    prompts, responses = torch.randint(2, args.vocab, (B, P)), torch.randint(2, args.vocab, (B, R))
    attention = torch.ones(B, P + R, dtype=torch.long)
    input_ids = torch.cat([prompts, responses], 1)
    positions = torch.arange(P + R).expand(B, -1).clone()
    base = dict(prompts=prompts, responses=responses, input_ids=input_ids, attention_mask=attention,
                position_ids=positions, response_mask=torch.ones(B, R, dtype=torch.long))  # fmt: skip

    def batch(probe: str | None, extra: dict | None = None):
        from tensordict import TensorDict

        td = left_right_2_no_padding(TensorDict(base, batch_size=B))
        meta = {"calculate_entropy": True, "compute_loss": False, "temperature": 1.0}
        if probe:
            meta.update({PROBE_KEY: probe, TOPK_KEY: args.k})
        tu.assign_non_tensor(td, **meta)
        for key, val in (extra or {}).items():
            td[key] = val
        return td

    student_out = worker.compute_log_prob(batch("student"))
    topk = {k: student_out[k] for k in student_out.keys() if str(k).startswith("copd_topk_")}
    times = {"plain": [], "student": [], "teacher": []}
    inside = {"plain": [], "student": [], "teacher": []}
    for _ in range(args.repeats):  # interleaved so that machine noise hits every variant alike
        for name in times:
            td = batch(None if name == "plain" else name, topk if name == "teacher" else None)
            probe_s[0] = 0.0
            t0 = time.perf_counter()
            worker.compute_log_prob(td)
            times[name].append(time.perf_counter() - t0)
            inside[name].append(probe_s[0])
    plain = statistics.median(times["plain"])
    n_params = sum(p.numel() for p in worker.actor.engine.module.parameters())
    shape = f"{args.preset or 'custom'}: vocab {args.vocab}, hidden {args.hidden}, {args.layers} layers"
    shape += f", {n_params / 1e6:.1f}M parameters (this rank's shard)"
    print(f"model: {shape}; batch {B} x {P + R} tokens, k={args.k}")
    for name, ts in times.items():
        med = statistics.median(ts)
        own = statistics.median(inside[name])
        print(
            f"{name:>8}: median {med * 1000:8.1f} ms  ({(med / plain - 1) * 100:+5.1f}% vs plain); "
            f"probe's own work {own * 1000:7.1f} ms = {own / plain * 100:4.2f}% of the plain pass"
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
