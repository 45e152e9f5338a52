"""Where a command's CPU goes, process by process: run it, sample /proc once a second, print CPU-seconds per
process kind (Ray actors by class: ``ray::WorkerDict``, ``ray::HFServer`` ...) and how busy the machine was.

    python benchmarks/process_cpu.py -- python -m recipe.copd.main
    python benchmarks/process_cpu.py --json-out cpu.json -- python -m recipe.copd.main copd.run.toy.workdir=/tmp/d

A run's CPU-seconds move far less with a shared machine's speed than its wall time does, so two versions of the
code compare better by this total (run them back to back, alternating). Linux only (/proc). Every process that
runs during the command is counted, the command's or not: run it on an otherwise quiet machine. A process that
starts and ends between two samples is missed (a Ray worker lives for the whole run). Last line:
``total CPU-s: X  wall: Y s  mean busy: Z``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_kind(cmdline: str) -> str:
    """A short name for a process: a Ray actor's class (``ray::HFServer.generate`` -> ``HFServer``), else the
    first 60 characters of its command line."""
    m = re.match(r"ray::(\w+)", cmdline)
    return m.group(1) if m else " ".join(cmdline.split())[:60]


def read_cpu_seconds(pid: str) -> float | None:
    """utime + stime of a process in seconds, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def read_cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", " ").strip()
    except OSError:
        return ""


def machine_busy() -> tuple[int, int]:
    """(total, idle + iowait) jiffies of /proc/stat's first line."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values), values[3] + values[4]


def aggregate(cpu: dict[str, float], names: dict[str, str]) -> list[tuple[str, int, float]]:
    """(kind, processes, CPU-seconds) per process kind, most CPU first."""
    seconds: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for pid, c in cpu.items():
        kind = process_kind(names.get(pid, "?"))
        seconds[kind] += c
        count[kind] += 1
    return sorted(((k, count[k], round(v, 2)) for k, v in seconds.items()), key=lambda r: -r[2])


def measure(command: list[str], period_s: float = 1.0) -> dict:
    """Run ``command``; returns {rows, total_cpu_s, wall_s, mean_busy, busy_by_10s, returncode}."""
    baseline = {pid: read_cpu_seconds(pid) for pid in os.listdir("/proc") if pid.isdigit()}
    cpu: dict[str, float] = {}
    names: dict[str, str] = {}
    busy: list[tuple[float, float]] = []
    t0 = time.monotonic()
    last = machine_busy()
    proc = subprocess.Popen(command)
    while True:
        done = proc.poll() is not None
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or pid == str(os.getpid()):
                continue
            c = read_cpu_seconds(pid)
            if c is None:
                continue
            name = read_cmdline(pid)
            if name:  # a process on its way out has an empty command line: keep the last one seen
                names[pid] = name
            cpu[pid] = c - (baseline.get(pid) or 0.0)
        now = machine_busy()
        total, idle = now[0] - last[0], now[1] - last[1]
        last = now
        busy.append((time.monotonic() - t0, 1.0 - idle / max(total, 1)))
        if done:
            break
        time.sleep(period_s)
    wall = time.monotonic() - t0
    rows = [r for r in aggregate(cpu, names) if r[2] >= 0.05]
    windows: dict[int, list[float]] = defaultdict(list)
    for t, b in busy:
        windows[int(t // 10) * 10].append(b)
    return {
        "command": command,
        "returncode": proc.returncode,
        "wall_s": round(wall, 1),
        "total_cpu_s": round(sum(r[2] for r in rows), 1),
        "mean_busy": round(sum(b for _, b in busy) / max(1, len(busy)), 3),
        "busy_by_10s": {t: round(sum(v) / len(v), 2) for t, v in sorted(windows.items())},
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--period", type=float, default=1.0, help="seconds between samples (default 1)")
    parser.add_argument("--top", type=int, default=20, help="rows to print (default 20)")
    parser.add_argument("--json-out", default=None, help="also write the figures here")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --, e.g. -- python -m recipe.copd.main")
    if not os.path.exists("/proc/stat"):
        parser.error("needs Linux's /proc")
    result = measure(command, args.period)
    print(f"\nCPU-seconds per process kind ({' '.join(command)}; exit {result['returncode']}):")
    for kind, n, seconds in result["rows"][: args.top]:
        print(f"{seconds:9.1f}  x{n:<3d} {kind}")
    print("machine busy per 10 s: " + " ".join(f"{t}:{b:.2f}" for t, b in result["busy_by_10s"].items()))
    if args.json_out:
        tmp = f"{args.json_out}.tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, args.json_out)
    total, wall, busy = result["total_cpu_s"], result["wall_s"], result["mean_busy"]
    print(f"total CPU-s: {total:.1f}  wall: {wall:.1f} s  mean busy: {busy:.2f}")
    return 0 if result["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
