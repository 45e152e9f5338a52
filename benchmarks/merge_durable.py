"""The whole-command, durable rows of `merge_bench.py`: the merge as a user times it from the shell.

Each row is timed from its first process start to the end of a `sync` after it, with the inputs warm in the page
cache and no dirty pages left by the row before (a `sync`, untimed, between rows):
  I/O floor:   cat every input shard > /dev/null; cat one input's shards > one file; sync
  copd.merge:  python -m copd.merge --method average ...; sync     (start-up, merge and write-back all inside)
  (before):    the same with another copd tree on PYTHONPATH (e.g. the previous commit, `git archive`d)
  mergekit:    mergekit-yaml (linear, bf16, CPU) ...; sync
Rounds alternate floor and merges back to back; floor/merge is the median of the per-round ratios. Start-up is timed
alone: `python -m copd.merge --help`, and a no-op merge of two one-element checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from merge_bench import check_average, mergekit_command, run_timed

REPO = Path(__file__).resolve().parents[1]
SETTLE_S = 3.0  # seconds of rest between rows


def copd_env(tree: Path) -> dict:
    return os.environ | {"PYTHONPATH": str(tree)}


def copd_cmd(*args: str) -> list[str]:  # -P: the tree on PYTHONPATH, not the current folder, provides copd
    return [sys.executable, "-P", "-m", "copd.merge", *args]


def steps(cmds: list[tuple[list[str], dict]], log: Path) -> dict:
    """Run (cmd, run_timed kwargs) one after the other: total wall, per-step walls, summed CPU, max peak RSS."""
    runs = [run_timed(cmd, log=log, **kw) for cmd, kw in cmds]
    if bad := [r for r in runs if r["rc"] != 0]:
        sys.exit(f"{cmds[runs.index(bad[0])][0][:3]} failed: " + log.read_text()[-2000:])
    return {"wall_s": sum(r["wall_s"] for r in runs), "steps_s": [r["wall_s"] for r in runs],
            "cpu_s": sum(r["cpu_s"] for r in runs), "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}  # fmt: skip


def settle(work: Path, shard_files: list[Path]) -> None:
    """Untimed, between rows: no output left, no dirty pages, the inputs warm in the page cache; then a pause, so
    that the device works off the discards of the deleted files (ext4 mounted with `discard`) before the next row."""
    for name in ("floor", "out_copd", "out_mergekit"):
        shutil.rmtree(work / name, ignore_errors=True)
    os.sync()
    time.sleep(SETTLE_S)
    subprocess.run(["cat", *map(str, shard_files)], stdout=subprocess.DEVNULL, check=True)


def floor_row(work: Path, shard_files: list[Path]) -> dict:
    (work / "floor").mkdir()
    with open(work / "floor" / "copy.bin", "wb") as f:
        cmds = [(["cat", *map(str, shard_files)], {}), (["cat", *map(str, shard_files[: len(shard_files) // 2])],
                {"stdout": f}), (["sync"], {})]  # fmt: skip
        return steps(cmds, work / "floor.log")


def copd_row(work: Path, inputs: list[Path], tree: Path) -> dict:
    out = work / "out_copd"
    cmd = copd_cmd("--method", "average", "--output", str(out), "--no-progress", *map(str, inputs))
    row = steps([(cmd, {"env": copd_env(tree)}), (["sync"], {})], work / "copd.log")
    if (err := check_average(inputs, out, "model.layers.0.self_attn.q_proj.weight")) != 0.0:
        sys.exit(f"copd.merge ({tree}) output differs from bf16(mean) by {err}")
    return row


def mergekit_row(work: Path, inputs: list[Path], venv: Path) -> dict:
    cmd = mergekit_command(venv, inputs, work / "out_mergekit", work)
    if isinstance(cmd, dict):
        return cmd
    try:
        return steps([(cmd, {}), (["sync"], {})], work / "mergekit.log")
    except SystemExit as failed:  # mergekit's own failure: a row that says why, not the end of the benchmark
        return {"error": str(failed)[-600:].replace("\n", " | ")}


def startup(work: Path, tree: Path, repeat: int = 5) -> dict:
    """Median wall of `python -m copd.merge --help` and of a no-op merge (two one-element checkpoints)."""
    tiny = []
    for i in range(2):
        (work / f"tiny{i}").mkdir(exist_ok=True)
        header = json.dumps({"w": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}}).encode().ljust(56)
        (work / f"tiny{i}" / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0\0")
        tiny.append(str(work / f"tiny{i}"))
    base = copd_cmd()
    noop = base + ["--no-progress", "--overwrite", "--output", str(work / "tiny_out"), *tiny]
    out = {}
    for name, cmd in [("help_s", base + ["--help"]), ("noop_merge_s", noop)]:
        out[name] = statistics.median(run_timed(cmd, env=copd_env(tree))["wall_s"] for _ in range(repeat))
    out["import_torch_s"] = statistics.median(
        run_timed([sys.executable, "-c", "import torch"])["wall_s"] for _ in range(repeat)
    )
    return out


def run_durable(work: Path, inputs: list[Path], shard_files: list[Path], repeat: int, before: Path | None,
                mergekit_venv: Path, mergekit_repeat: int) -> dict:  # fmt: skip
    """The durable rounds, then mergekit; medians and per-round ratios."""
    trees = {"copd": REPO} | ({"before": before} if before else {})
    rows = {"io_floor": [], **{name: [] for name in trees}}
    for _ in range(repeat):
        settle(work, shard_files)
        rows["io_floor"].append(floor_row(work, shard_files))
        for name, tree in trees.items():
            settle(work, shard_files)
            rows[name].append(copd_row(work, inputs, tree))
    mergekit = []
    for _ in range(mergekit_repeat):
        settle(work, shard_files)
        mergekit.append(mergekit_row(work, inputs, mergekit_venv))
    settle(work, shard_files)
    result = {"startup": {name: startup(work, tree) for name, tree in trees.items()}}
    for name, runs in rows.items():
        result[name] = summarize_steps(runs)
        if name != "io_floor":  # floor/merge within a round (back to back), then the median over rounds
            result[name]["floor_over"] = statistics.median(
                f["wall_s"] / r["wall_s"] for f, r in zip(rows["io_floor"], runs, strict=True)
            )
    result["mergekit"] = summarize_steps(mergekit)
    if "error" not in result["mergekit"]:
        result["mergekit"]["floor_over"] = result["io_floor"]["wall_s"] / result["mergekit"]["wall_s"]
    return result


def summarize_steps(runs: list[dict]) -> dict:
    if not runs or any("error" in r for r in runs):
        return {"error": next((r["error"] for r in runs if "error" in r), "not run")}
    out = {key: statistics.median(r[key] for r in runs) for key in ("wall_s", "cpu_s")}
    out["steps_s"] = [round(float(x), 2) for x in np.median([r["steps_s"] for r in runs], axis=0)]
    out["all_wall_s"] = [round(r["wall_s"], 2) for r in runs]
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    return out


def report_durable(r: dict, largest_mb: float) -> dict:
    """Print the table, the start-up figures and the targets; returns the targets."""
    print("\nwhole command, durable: shell wall from start to the end of a sync after it; inputs in the page cache")
    print(f"{'':<24}{'wall (s)':>9}{'floor/x':>9}{'CPU (s)':>9}{'RSS (MB)':>10}   steps (s)            all walls (s)")
    names = {"io_floor": "I/O floor (cat, sync)", "copd": "copd.merge average", "before": "copd.merge (before)",
             "mergekit": "mergekit linear"}  # fmt: skip
    for key, name in names.items():
        if key not in r:
            continue
        row = r[key]
        if "error" in row:
            print(f"{name:<24} not run: {row['error']}")
            continue
        ratio = row.get("floor_over", 1.0)
        steps_s = str(row["steps_s"])
        print(f"{name:<24}{row['wall_s']:>9.2f}{ratio:>9.2f}{row['cpu_s']:>9.2f}{row['peak_rss_mb']:>10.0f}   "
              f"{steps_s:<20} {row['all_wall_s']}")  # fmt: skip
    print("  steps: floor = read both, write one, sync; merges = the command, then the sync after it")
    for name, s in r["startup"].items():
        print(f"  start-up ({name}): --help {s['help_s']:.2f} s, no-op merge {s['noop_merge_s']:.2f} s "
              f"(import torch alone: {s['import_torch_s']:.2f} s)")  # fmt: skip
    ours = r["copd"]
    targets = {
        f"durable floor/merge >= 0.8 ({ours['floor_over']:.2f})": ours["floor_over"] >= 0.8,
        f"peak RSS <= 2x largest + 300 MB ({2 * largest_mb + 300:.0f} MB)": ours["peak_rss_mb"] <= 2 * largest_mb + 300,
    }
    for text, ok in targets.items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {text}")
    return targets
