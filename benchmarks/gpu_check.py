"""Engine-side GPU check in plain torch: log-prob pass, CoPD probe, teacher guard, `copd.merge` on this disk.

For a GPU box with only PyTorch and transformers (no Ray, vLLM or verl): bring `copd/` and `benchmarks/gpu_check.*`
(well under 1 MiB) and run `bash benchmarks/gpu_check.sh` (or `--tiny` on a CPU). On a random-weight model of
Qwen3-4B's shape (36 layers x 2560, 32/8 heads of 128, vocab 151,936, tied embeddings) in bf16, it measures:

1. the log-prob pass (forward, then fp32 log-probs of the sampled tokens and entropy, chunked over tokens, as verl's
   actor computes them) at two sequence lengths with the same tokens per pass;
2. the probe riding on it, side by side and interleaved with the plain pass: the student side (top-k ids and logits
   per token, `copd.overlap.block_topk`, also timed against `torch.topk`) and the teacher side (top-k overlap and
   top-k symmetric KL against the student's top-k, chunked), as `recipe/copd/worker.py::BehaviourProbe` does it;
   invariants: the model against itself has overlap ~1 and KL ~0, `block_topk` values equal `torch.topk`'s;
3. the teacher guard (`copd.advantages.teacher_looks_uniform`) on the pass's log-probs with the weights present
   and with them absent (final norm zeroed: uniform logits, what a teacher woken without weights gives);
4. `python -m copd.merge --method average` of two checkpoints of that model written to this box's disk, against
   the I/O floor (`cat` of the inputs, plus `cat` of one input into a file), page cache dropped for the inputs;
   the merged tensors are checked against the average computed in torch.

Figures are medians over interleaved repeats; ratios are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from copd.advantages import teacher_looks_uniform  # noqa: E402
from copd.overlap import block_topk  # noqa: E402

#: Qwen3-4B's text shape (also Qwen3-VL-4B's language model), and a CPU-sized one.
SHAPES = {
    "qwen3-4b": dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128),
    "tiny": dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16),
}  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-4b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--lengths", default="1024,8192", help="sequence lengths (prompt + response), comma-separated")
    ap.add_argument("--tokens", type=int, default=8192, help="tokens per pass; batch = tokens // length")
    ap.add_argument("--k", type=int, default=16, help="probe top-k")
    ap.add_argument("--chunk", type=int, default=2048, help="tokens per chunk of the fp32 log-prob / probe work")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layers", type=int, default=None, help="override the shape's layer count (smoke runs)")
    ap.add_argument(
        "--merge-layers", type=int, default=None, help="layers of the merged checkpoints (default: --layers)"
    )
    ap.add_argument("--workdir", default=None, help="where the checkpoints go (default: a temp dir, removed)")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]
    if any(n < 2 or args.tokens < n for n in lengths) or args.k < 1 or args.repeats < 1:
        ap.exit(2, f"gpu_check: need 2 <= length <= --tokens ({args.tokens}), k >= 1, repeats >= 1\n")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.exit(2, "gpu_check: no CUDA device: pass --device cpu (and --tiny sizes via gpu_check.sh --tiny)\n")
    args.lengths = lengths
    args.merge_layers = args.merge_layers or args.layers
    return args


def build_model(shape: str, device: str, dtype: torch.dtype, layers: int | None = None, seed: int = 0):
    """A random `Qwen3ForCausalLM` initialised directly on `device` in `dtype`."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    dims = dict(SHAPES[shape], **({"num_hidden_layers": layers} if layers else {}))
    config = Qwen3Config(**dims, max_position_embeddings=40960, tie_word_embeddings=True, rope_theta=1e6)
    torch.manual_seed(seed)
    with torch.device(device):  # initialised in place on the GPU (fp32, then cast: any transformers >= 4.51)
        model = Qwen3ForCausalLM._from_config(config, attn_implementation="sdpa")
    return model.to(dtype).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ---------------------------------------------------------------- the pass and the probe
@torch.no_grad()
def log_prob_pass(model, input_ids_B_T: torch.Tensor, chunk: int, probe=None):
    """Forward, then per chunk of tokens fp32 log-probs of the next tokens and entropy (verl's actor pass).

    `probe(logits_N_V, start)` runs on each chunk's raw logits (the worker's logits processor); its own time
    (synchronised around each call) accumulates in `probe.seconds`. Returns (log_probs_B_T-1, entropy_B_T-1), fp32.
    """
    logits_B_T_V = model(input_ids=input_ids_B_T).logits[:, :-1]
    labels_N = input_ids_B_T[:, 1:].reshape(-1)
    logits_N_V = logits_B_T_V.reshape(-1, logits_B_T_V.shape[-1])
    log_probs_N = torch.empty(labels_N.shape, dtype=torch.float32, device=labels_N.device)
    entropy_N = torch.empty_like(log_probs_N)
    for start in range(0, labels_N.shape[0], chunk):
        sl = slice(start, start + chunk)
        x = logits_N_V[sl].float()
        lse = x.logsumexp(-1)
        log_probs_N[sl] = x.gather(-1, labels_N[sl, None])[:, 0] - lse
        entropy_N[sl] = lse - (torch.softmax(x, -1) * x).sum(-1)
        if probe is not None:
            sync(x.device.type)
            t0 = time.perf_counter()
            probe(logits_N_V[sl], start)
            sync(x.device.type)
            probe.seconds += time.perf_counter() - t0
    shape = input_ids_B_T[:, 1:].shape
    return log_probs_N.reshape(shape), entropy_N.reshape(shape)


class StudentProbe:
    """Top-k ids and logits per token (the student side of `BehaviourProbe`)."""

    def __init__(self, n_tokens: int, k: int, device, topk: str = "block"):
        self.k, self.topk, self.seconds = k, topk, 0.0
        self.ids_N_k = torch.empty(n_tokens, k, dtype=torch.long, device=device)
        self.logit_N_k = torch.empty(n_tokens, k, dtype=torch.float32, device=device)

    def __call__(self, logits_N_V: torch.Tensor, start: int) -> None:
        if self.topk == "block":
            values, ids = block_topk(logits_N_V, self.k)
        else:
            values, ids = logits_N_V.topk(self.k, dim=-1)
        sl = slice(start, start + logits_N_V.shape[0])
        self.ids_N_k[sl], self.logit_N_k[sl] = ids, values.float()


class TeacherProbe:
    """Per-token top-k overlap and top-k symmetric KL against the student's top-k (the teacher side)."""

    def __init__(self, student: StudentProbe):
        self.student, self.seconds = student, 0.0
        self.overlap_N = torch.empty(student.ids_N_k.shape[0], device=student.ids_N_k.device)
        self.skl_N = torch.empty_like(self.overlap_N)

    def __call__(self, logits_N_V: torch.Tensor, start: int) -> None:
        sl = slice(start, start + logits_N_V.shape[0])
        s_ids, s_logit = self.student.ids_N_k[sl], self.student.logit_N_k[sl]
        t_ids = block_topk(logits_N_V, s_ids.shape[-1])[1]
        self.overlap_N[sl] = (s_ids.unsqueeze(-1) == t_ids.unsqueeze(-2)).any(-1).float().mean(-1)
        log_p = torch.log_softmax(s_logit, -1)  # student renormalised on its top-k
        log_q = torch.log_softmax(logits_N_V.gather(-1, s_ids).float(), -1)  # teacher on the same ids
        self.skl_N[sl] = ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1)


def time_pass(model, args, length: int) -> dict:
    """Median seconds of the plain pass and of the pass with each probe, interleaved; invariant checks."""
    batch = args.tokens // length
    g = torch.Generator(device="cpu").manual_seed(length)
    input_ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=g).to(args.device)
    n = batch * (length - 1)
    student = StudentProbe(n, args.k, args.device)
    log_prob_pass(model, input_ids, args.chunk, student)  # warm-up, and the student's top-k for the teacher
    variants = {
        "plain": lambda: None,
        "student (block_topk)": lambda: StudentProbe(n, args.k, args.device),
        "student (torch.topk)": lambda: StudentProbe(n, args.k, args.device, topk="torch"),
        "teacher": lambda: TeacherProbe(student),
    }
    seconds = {name: [] for name in variants}
    own = {name: [] for name in variants}
    peak = {}
    for _ in range(args.repeats):
        for name, make in variants.items():
            probe = make()
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            sync(args.device)
            t0 = time.perf_counter()
            log_probs, _ = log_prob_pass(model, input_ids, args.chunk, probe)
            sync(args.device)
            seconds[name].append(time.perf_counter() - t0)
            own[name].append(probe.seconds if probe is not None else 0.0)
            if args.device.startswith("cuda"):
                peak[name] = torch.cuda.max_memory_allocated() / 2**30
            if name == "teacher":
                teacher = probe
    median = {name: statistics.median(v) for name, v in seconds.items()}
    # The teacher pass recomputes the logits: a GPU forward that is not bitwise repeatable may move a tie at the
    # k-th place, so the self-checks are on means with a little room; block_topk vs torch.topk is exact on one tensor.
    with torch.no_grad():
        logits_N_V = model(input_ids=input_ids[:1]).logits[0]
    checks = {
        "self-overlap >= 0.99 (mean)": float(teacher.overlap_N.mean()) >= 0.99,
        "self top-k KL <= 1e-4 (mean)": float(teacher.skl_N.mean()) <= 1e-4,
        "block_topk values == torch.topk": bool(
            torch.equal(block_topk(logits_N_V, args.k)[0], logits_N_V.topk(args.k, dim=-1).values)
        ),
    }
    own_median = {name: statistics.median(v) for name, v in own.items()}
    return dict(
        length=length, batch=batch, seconds=median, own_s=own_median, peak_gib=peak, checks=checks, log_probs=log_probs
    )


# ---------------------------------------------------------------- the guard
def guard_check(model, args, input_ids_B_T: torch.Tensor) -> dict:
    """`teacher_looks_uniform` on the pass's log-probs, weights present, then absent (final norm zeroed)."""
    vocab = model.config.vocab_size
    log_probs, _ = log_prob_pass(model, input_ids_B_T, args.chunk)
    mask = torch.ones_like(log_probs, dtype=torch.bool)
    t0 = time.perf_counter()
    present = teacher_looks_uniform(log_probs, mask, vocab)
    guard_s = time.perf_counter() - t0
    within = float(((log_probs.double() + math.log(vocab)).abs() <= 0.05 * math.log(vocab)).float().mean())
    norm = model.model.norm.weight
    saved = norm.detach().clone()
    with torch.no_grad():
        norm.zero_()
        absent_lp, _ = log_prob_pass(model, input_ids_B_T, args.chunk)
        norm.copy_(saved)
    absent = teacher_looks_uniform(absent_lp, mask, vocab)
    return dict(present=present, absent=absent, within_tol=within, seconds=guard_s)


# ---------------------------------------------------------------- merge on this disk
def drop_cache(*folders: Path) -> None:
    """Evict the folders' files from the page cache (after a sync), so reads come from the disk."""
    os.sync()
    for path in (p for folder in folders for p in folder.rglob("*")):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed(cmd: list[str], **kw) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, **kw)
    return time.perf_counter() - t0


def merge_check(args, dtype: torch.dtype) -> dict:
    """Write two checkpoints, time the I/O floor, `python -m copd.merge` and `merge_checkpoints`; check the output.

    Disk: the two inputs plus one merged copy at a time (3 x the checkpoint size).
    """
    root = Path(args.workdir or tempfile.mkdtemp(prefix="copd_gpu_check_"))
    root.mkdir(parents=True, exist_ok=True)
    a, b, out = root / "a", root / "b", root / "merged"
    try:
        t0 = time.perf_counter()
        for seed, folder in ((1, a), (2, b)):
            model = build_model(args.shape, args.device, dtype, args.merge_layers, seed=seed)
            model.save_pretrained(folder)
            del model
        write_s = time.perf_counter() - t0
        size_gb = sum(p.stat().st_size for f in (a, b) for p in f.glob("*.safetensors")) / 1e9
        shards_a, shards_b = (sorted(str(p) for p in f.glob("*.safetensors")) for f in (a, b))
        drop_cache(a, b)
        with open(root / "floor.out", "wb") as sink:  # read both inputs, write one output's worth
            floor_s = timed(["cat", *shards_a, *shards_b], stdout=subprocess.DEVNULL) + timed(
                ["cat", *shards_a], stdout=sink
            )
        os.remove(root / "floor.out")
        drop_cache(a, b)
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, "-m", "copd.merge", "--method", "average", "--output", str(out), str(a), str(b)]
        cli_s = timed([*cmd, "--no-progress"], env=env, cwd=REPO)
        exact = merged_is_average(out, a, b)
        shutil.rmtree(out)
        start_s = timed([sys.executable, "-c", "import copd.merge"], env=env, cwd=REPO)  # the CLI's fixed cost
        drop_cache(a, b)
        from copd.merge import merge_checkpoints

        t0 = time.perf_counter()
        merge_checkpoints([a, b], out, "average", progress=False)
        call_s = time.perf_counter() - t0
        exact &= merged_is_average(out, a, b)
        return dict(
            write_s=write_s, size_gb=size_gb, floor_s=floor_s, cli_s=cli_s, start_s=start_s, call_s=call_s, exact=exact
        )
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
        else:
            shutil.rmtree(out, ignore_errors=True)


def merged_is_average(out: Path, a: Path, b: Path, per_shard: int = 4) -> bool:
    """The first tensors of each merged shard equal (a + b) / 2 computed in fp32 and cast back, bit for bit."""
    from safetensors import safe_open

    exact = True
    for shard in sorted(out.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as merged:
            for name in list(merged.keys())[:per_shard]:
                src = [_tensor(f, name) for f in (a, b)]
                expected = ((src[0].float() + src[1].float()) / 2).to(src[0].dtype)
                exact &= torch.equal(merged.get_tensor(name), expected)
    return exact


def _tensor(folder: Path, name: str) -> torch.Tensor:
    from safetensors import safe_open

    for shard in folder.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            if name in f.keys():
                return f.get_tensor(name)
    raise KeyError(f"{name} not in {folder}")


# ---------------------------------------------------------------- report
def header(args) -> list[str]:
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    return [
        f"gpu_check: {args.shape} {args.dtype} on {dev}, torch {torch.__version__}, k={args.k}, "
        f"{args.tokens} tokens/pass, medians of {args.repeats} interleaved repeats",
        f"{'pass':<24}{'length':>8}{'batch':>7}{'seconds':>10}{'x plain':>9}{'probe own':>11}{'tok/s':>11}"
        f"{'peak GiB':>10}",
    ]


def pass_rows(p: dict) -> list[str]:
    plain, rows = p["seconds"]["plain"], []
    for name, s in p["seconds"].items():
        peak = f"{p['peak_gib'][name]:.2f}" if name in p["peak_gib"] else "-"
        own = f"{p['own_s'][name] / plain:.2%}" if name != "plain" else "-"
        tps = p["batch"] * p["length"] / s
        rows.append(
            f"{name:<24}{p['length']:>8}{p['batch']:>7}{s:>10.4f}{s / plain:>9.3f}{own:>11}{tps:>11.0f}{peak:>10}"
        )
    return rows


def guard_line(guard: dict) -> str:
    return (
        f"teacher guard: weights present -> {guard['present']} ({guard['within_tol']:.1%} of tokens within "
        f"0.05 log V of uniform), absent -> {guard['absent']}; {guard['seconds'] * 1e3:.2f} ms"
    )


def merge_line(merge: dict) -> str:
    return (
        f"copd.merge average of 2 x {merge['size_gb'] / 2:.2f} GB (written in {merge['write_s']:.1f} s): I/O floor "
        f"{merge['floor_s']:.2f} s; merge_checkpoints() {merge['call_s']:.2f} s = "
        f"{merge['call_s'] / merge['floor_s']:.2f}x floor; CLI {merge['cli_s']:.2f} s "
        f"(of which {merge['start_s']:.2f} s interpreter + imports)"
    )


def main(argv=None) -> int:
    """Run the four parts, printing each part's lines as soon as it is done (a timeout keeps what finished)."""
    args = parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    lines: list[str] = []

    def emit(*new: str) -> None:
        lines.extend(new)
        print("\n".join(new), flush=True)

    emit(*header(args))
    model = build_model(args.shape, args.device, dtype, args.layers)
    passes = []
    for length in args.lengths:
        passes.append(time_pass(model, args, length))
        emit(*pass_rows(passes[-1]))
    emit("  (probe own: time inside the probe, synchronised, as a share of the plain pass's median)")
    g = torch.Generator(device="cpu").manual_seed(7)
    ids = torch.randint(0, model.config.vocab_size, (args.tokens // args.lengths[0], args.lengths[0]), generator=g)
    guard = guard_check(model, args, ids.to(args.device))
    emit(guard_line(guard))
    del model
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    merge = merge_check(args, dtype)
    emit(merge_line(merge))
    checks = [(f"{name} (length {p['length']})", ok) for p in passes for name, ok in p["checks"].items()]
    checks.append(("guard flags a weightless teacher", guard["absent"]))
    checks.append((f"merge output == torch average ({merge['size_gb']:.2f} GB in)", merge["exact"]))
    emit(*(f"  [{'PASS' if ok else 'FAIL'}] {name}" for name, ok in checks))
    if args.json_out:
        for p in passes:
            p.pop("log_probs")
        record = dict(args=vars(args), passes=passes, guard=guard, merge=merge, report=lines)
        Path(args.json_out).write_text(json.dumps(record, indent=2))
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
