"""Benchmark `python -m copd.merge` against the I/O floor and mergekit's linear merge (not a test).

Builds two synthetic bf16 checkpoints with the tensor names and shapes of Qwen3-1.7B (tied embeddings, ~1.72B
parameters, ~3.4 GB each; the model is never instantiated), then times, one after the other, each with the inputs
evicted from the page cache (posix_fadvise DONTNEED after sync; libraries stay cached):
  (a) the I/O floor: `cat` of every input shard to /dev/null, plus `cat` of one input's shards into one file;
  (b) copd.merge --method average, as a subprocess (wall, CPU and peak RSS from /usr/bin/time);
  (c) mergekit-yaml with merge_method: linear, from a separate venv (skipped, with the reason, if it is missing).
Run: python benchmarks/merge_bench.py [--workdir /tmp/copd_merge_bench] [--json-out merge.json] [--keep]
     (--layers 2 gives a quick ~0.7 GB smoke run). Disk use: 2 inputs + 1 output at a time (~10.3 GB).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

# Qwen3-1.7B (config.json of Qwen/Qwen3-1.7B): the shapes below follow from these numbers
QWEN3_1_7B = dict(hidden=2048, intermediate=6144, layers=28, heads=16, kv_heads=8, head_dim=128, vocab=151936)


def qwen3_shapes(hidden, intermediate, layers, heads, kv_heads, head_dim, vocab) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a Qwen3 causal LM with tied embeddings (no lm_head.weight), in HF order."""
    shapes = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
            p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
            p + "self_attn.q_norm.weight": (head_dim,),
            p + "self_attn.k_norm.weight": (head_dim,),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "mlp.gate_proj.weight": (intermediate, hidden),
            p + "mlp.up_proj.weight": (intermediate, hidden),
            p + "mlp.down_proj.weight": (hidden, intermediate),
        }
    shapes["model.norm.weight"] = (hidden,)
    return shapes


def qwen3_config(hidden, intermediate, layers, heads, kv_heads, head_dim, vocab) -> dict:
    """A Qwen3 config.json for those shapes (what mergekit and transformers read)."""
    return {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": hidden,
        "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "head_dim": head_dim, "vocab_size": vocab, "hidden_act": "silu",
        "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000, "attention_bias": False,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16", "bos_token_id": 151643, "eos_token_id": 151645,
    }  # fmt: skip


def write_checkpoint(folder: Path, shapes: dict, noise_N: torch.Tensor, seed: int, shard_bytes: int) -> list[Path]:
    """Write random bf16 tensors as HF safetensors shards + index: each tensor is a slice of one shared noise buffer
    at a random offset (no per-tensor random generation), so the two checkpoints differ. Returns the shard paths."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    shards, current, used = [], {}, 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        if current and used + 2 * n > shard_bytes:
            shards.append(current)
            current, used = {}, 0
        start = int(rng.integers(0, noise_N.numel() - n + 1))
        current[name] = noise_N[start : start + n].view(shape).clone()  # save_file refuses shared storage
        used += 2 * n
    shards.append(current)
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for file, tensors in zip(files, shards, strict=True):
        save_file(tensors, folder / file, metadata={"format": "pt"})
    total = sum(2 * t.numel() for s in shards for t in s.values())
    weight_map = {k: f for f, s in zip(files, shards, strict=True) for k in s}
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return [folder / f for f in files]


def write_inputs(inputs: list[Path], dims: dict, shard_bytes: int) -> list[Path]:
    """Both random checkpoints: one noise buffer (32M normals, tiled to 400M elements), sliced per tensor."""
    shapes = qwen3_shapes(**dims)
    noise = torch.from_numpy(np.random.default_rng(0).standard_normal(1 << 25, dtype=np.float32) * 0.02)
    noise_N = noise.bfloat16().repeat(max(400_000_000, 2 * max(math.prod(s) for s in shapes.values())) // (1 << 25))
    files = [f for k, d in enumerate(inputs) for f in write_checkpoint(d, shapes, noise_N, k + 1, shard_bytes)]
    for d in inputs:
        (d / "config.json").write_text(json.dumps(qwen3_config(**dims), indent=2))
    return files


def evict(files: list[Path], everything: bool = False) -> None:
    """Flush dirty pages, then drop these files from the page cache (posix_fadvise DONTNEED): the data is read cold,
    while the interpreters and libraries stay cached as on a machine in use. everything: drop the whole page cache
    too (needs root; then Python tools also pay for loading their libraries from disk)."""
    os.sync()
    if everything:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def run_timed(cmd: list[str], stdout=subprocess.DEVNULL, log: Path | None = None, env: dict | None = None) -> dict:
    """Run cmd under /usr/bin/time: wall time, CPU time (user + sys), peak RSS (MB) and exit code.

    /usr/bin/time, not os.wait4 from here: a child forked from this (large) process inherits its RSS high-water mark.
    """
    stats = Path(f"/tmp/merge_bench_time_{os.getpid()}.txt")
    with open(log or os.devnull, "a" if log else "w") as err:
        start = time.perf_counter()
        timed = ["/usr/bin/time", "-f", "%M %U %S", "-o", str(stats), *cmd]
        rc = subprocess.run(timed, stdout=stdout, stderr=err, env=env).returncode
        wall = time.perf_counter() - start
    rss_kb, user, sys_ = stats.read_text().split()[-3:]
    stats.unlink()
    return {"wall_s": wall, "cpu_s": float(user) + float(sys_), "peak_rss_mb": int(rss_kb) / 1024, "rc": rc}


def check_average(inputs: list[Path], output: Path, name: str) -> float:
    """Max |merged - bf16(mean)| on one tensor, as a sanity check that the output is the average."""
    tensors = []
    for folder in [*inputs, output]:
        index = folder / "model.safetensors.index.json"
        file = json.loads(index.read_text())["weight_map"][name] if index.exists() else "model.safetensors"
        with safe_open(folder / file, "pt") as f:
            tensors.append(f.get_tensor(name).float())
    expected = ((tensors[0] + tensors[1]) / 2).bfloat16().float()
    return (tensors[2] - expected).abs().max().item()


def mergekit_command(venv: Path, inputs: list[Path], out: Path, work: Path) -> list[str] | dict:
    """The mergekit-yaml command of a linear merge of the inputs in bf16 on CPU; {'error': why} if not usable."""
    exe = venv / "bin" / "mergekit-yaml"
    if not exe.exists():
        return {"error": f"{exe} not found: create the venv (see benchmarks/README.md)"}
    models = "".join(f"  - model: {p}\n    parameters:\n      weight: 1.0\n" for p in inputs)
    (work / "mergekit.yml").write_text(f"merge_method: linear\ndtype: bfloat16\nmodels:\n{models}")
    flags = ["--lazy-unpickle", "--no-copy-tokenizer", "--no-cuda", "--quiet"]
    return [str(exe), str(work / "mergekit.yml"), str(out), *flags]


def mergekit_run(venv: Path, inputs: list[Path], out: Path, work: Path) -> dict:
    """mergekit-yaml linear merge of the inputs in bf16 on CPU; {'error': why} when it is not usable."""
    cmd = mergekit_command(venv, inputs, out, work)
    if isinstance(cmd, dict):
        return cmd
    log = work / "mergekit.log"
    result = run_timed(cmd, log=log)
    if result["rc"] != 0:
        result["error"] = f"mergekit exited {result['rc']}: " + log.read_text()[-600:].replace("\n", " | ")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/copd_merge_bench"), help="scratch folder (~10.3 GB)")
    ap.add_argument("--json-out", type=Path, help="also write the figures here as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the workdir at the end")
    ap.add_argument("--layers", type=int, default=28, help="decoder layers (28 = Qwen3-1.7B; fewer for a smoke run)")
    ap.add_argument("--shard-gb", type=float, default=2.0, help="input shard size in GB")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of (I/O floor, copd.merge); the table shows medians")
    ap.add_argument("--mergekit-repeat", type=int, default=1, help="mergekit runs (~1 min each)")
    ap.add_argument("--drop-all", action="store_true", help="drop the whole page cache before each row (root)")
    ap.add_argument("--mergekit-venv", type=Path, default=Path("/tmp/mergekit-venv"), help="venv with mergekit")
    ap.add_argument(
        "--mode",
        choices=("both", "cold", "durable"),
        default="both",
        help="cold: inputs evicted, the command's wall; durable: the whole command to a synced output",
    )
    ap.add_argument("--before", type=Path, help="durable mode: also time the copd tree at this path (PYTHONPATH)")
    args = ap.parse_args()
    dims = QWEN3_1_7B | {"layers": args.layers}
    shapes = qwen3_shapes(**dims)
    work = args.workdir
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    n_params = sum(math.prod(s) for s in shapes.values())
    largest_mb = max(2 * math.prod(s) for s in shapes.values()) / 2**20
    print(f"{n_params / 1e9:.3f}B parameters, {2 * n_params / 1e9:.2f} GB per checkpoint (bf16), workdir {work}")

    t0 = time.perf_counter()
    inputs = [work / "in0", work / "in1"]
    # in a child process: a parent that has held the gigabytes of tensors it wrote slowed every command it timed
    # (copd.merge ~3.5 s against ~2.0 s from a fresh parent, the floor ~10% too), so the timing parent stays small
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        shard_files = pool.apply(write_inputs, (inputs, dims, int(args.shard_gb * 1e9)))
    print(f"wrote inputs in {time.perf_counter() - t0:.1f}s")

    results = {"threads": os.environ.get("OMP_NUM_THREADS", f"default ({os.cpu_count()} cores)")}
    subprocess.run([sys.executable, "-c", "import copd.merge"], check=True)  # warm the libraries' pages
    subprocess.run([str(args.mergekit_venv / "bin" / "mergekit-yaml"), "--help"], capture_output=True, check=False)
    results["load_before"], results["drop_all"] = os.getloadavg(), args.drop_all
    results["largest_tensor_mb"] = largest_mb
    if args.mode in ("both", "cold"):
        rounds = [measure_round(work, inputs, shard_files, args.drop_all) for _ in range(args.repeat)]
        mergekit = []
        for _ in range(args.mergekit_repeat):
            evict(shard_files, args.drop_all)
            mergekit.append(mergekit_run(args.mergekit_venv, inputs, work / "out_mergekit", work))
            shutil.rmtree(work / "out_mergekit", ignore_errors=True)
        for row, runs in [("io_floor", [r["io_floor"] for r in rounds]), ("copd", [r["copd"] for r in rounds]),
                          ("mergekit", mergekit)]:  # fmt: skip
            results[row] = summarize(runs)
        # copd vs floor: the median of the ratios within a round (measured back to back, so load drift cancels best)
        results["copd"]["x_floor"] = statistics.median(r["copd"]["wall_s"] / r["io_floor"]["wall_s"] for r in rounds)
        results["load_after_cold"] = os.getloadavg()
        report(results, largest_mb)
    if args.mode in ("both", "durable"):
        from merge_durable import report_durable, run_durable

        results["durable"] = run_durable(work, inputs, shard_files, args.repeat, args.before, args.mergekit_venv,
                                         args.mergekit_repeat)  # fmt: skip
        results["load_after"] = os.getloadavg()
        results["durable"]["targets"] = report_durable(results["durable"], largest_mb)
        print(f"  load average {results['load_before'][0]:.1f} before, {results['load_after'][0]:.1f} after")
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))
    if not args.keep:
        shutil.rmtree(work)


def summarize(runs: list[dict]) -> dict:
    """Median wall and CPU time over the runs, max peak RSS, every run's wall; the first error if any run failed."""
    if errors := [r["error"] for r in runs if "error" in r]:
        return {"error": errors[0]}
    out = {key: statistics.median(r[key] for r in runs) for key in ("wall_s", "cpu_s")}
    out["all_wall_s"] = [round(r["wall_s"], 2) for r in runs]
    if "peak_rss_mb" in runs[0]:
        out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return out


def measure_round(work: Path, inputs: list[Path], shard_files: list[Path], drop: bool) -> dict:
    """The I/O floor then copd.merge, back to back, each reading the inputs cold (evicted from the page cache)."""
    result = {}
    evict(shard_files, drop)
    read = run_timed(["cat", *map(str, shard_files)])
    (work / "floor").mkdir()
    with open(work / "floor" / "copy.bin", "wb") as f:
        write = run_timed(["cat", *map(str, shard_files[: len(shard_files) // 2])], stdout=f)
    result["io_floor"] = {"wall_s": read["wall_s"] + write["wall_s"], "cpu_s": read["cpu_s"] + write["cpu_s"]}
    shutil.rmtree(work / "floor")

    evict(shard_files, drop)
    out = work / "out_copd"
    cmd = [sys.executable, "-m", "copd.merge", "--method", "average", "--output", str(out), "--no-progress"]
    result["copd"] = run_timed(cmd + [str(p) for p in inputs], log=work / "copd.log")
    if result["copd"]["rc"] != 0:
        sys.exit("copd.merge failed: " + (work / "copd.log").read_text()[-2000:])
    err = check_average(inputs, out, "model.layers.0.self_attn.q_proj.weight")
    if err != 0.0:
        sys.exit(f"copd.merge output differs from bf16(mean) by {err}")
    shutil.rmtree(out)
    return result


def report(r: dict, largest_mb: float) -> None:
    """Print the table and the targets."""
    floor, ours, mk = r["io_floor"], r["copd"], r["mergekit"]
    cache = "whole page cache dropped before each row" if r["drop_all"] else "inputs evicted from the page cache"
    load = f"load average {r['load_before'][0]:.1f} before, {r['load_after_cold'][0]:.1f} after"
    print(f"\n{cache}; threads: {r['threads']}; {load}; medians over rounds; largest tensor {largest_mb:.0f} MB")
    print(f"{'':<22}{'wall (s)':>10}{'x floor':>10}{'CPU (s)':>10}{'peak RSS (MB)':>15}   all walls (s)")
    for name, row in [("I/O floor (cat)", floor), ("copd.merge average", ours), ("mergekit linear", mk)]:
        if "error" in row:
            print(f"{name:<22} not run: {row['error']}")
            continue
        ratio = row.get("x_floor", row["wall_s"] / floor["wall_s"])
        rss = f"{row['peak_rss_mb']:.0f}" if "peak_rss_mb" in row else "-"
        print(f"{name:<22}{row['wall_s']:>10.2f}{ratio:>10.2f}{row['cpu_s']:>10.2f}{rss:>15}   {row['all_wall_s']}")
    targets = {
        "merge time <= 1.25x I/O floor": ours["x_floor"] <= 1.25,
        f"peak RSS <= 2x largest + 300 MB ({2 * largest_mb + 300:.0f} MB)": ours["peak_rss_mb"] <= 2 * largest_mb + 300,
    }
    if "error" not in mk:
        speedup, ratio = mk["wall_s"] / ours["wall_s"], ours["peak_rss_mb"] / mk["peak_rss_mb"]
        targets[f">= 2x faster than mergekit ({speedup:.2f}x)"] = speedup >= 2
        targets[f"<= half mergekit's memory ({ratio:.2f}x)"] = ratio <= 0.5
    for text, ok in targets.items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {text}")
    r["targets"] = targets


if __name__ == "__main__":
    main()
