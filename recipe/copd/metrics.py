"""What a CoPD run reports: a JSONL sink of every step's metrics and the one console line per step."""

from __future__ import annotations

import json
import os

import numpy as np

from copd.schedule import PhasePosition


class MetricsSink:
    """Appends one JSON row per step (scalars only) to ``path``: the run's full record (``metrics.jsonl``).

    verl's console logger is off by default (``trainer.logger: []``): this file, the plots and the progress line
    are the run's output; ``trainer.logger=[console]`` (or tensorboard, wandb, ...) brings verl's backends back.
    """

    def __init__(self, path: str):
        self.path = path

    def append(self, step: int, metrics: dict) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        row = {"step": step}
        for k, v in metrics.items():
            if isinstance(v, (int, float, np.floating, np.integer, str)):
                row[k] = v.item() if isinstance(v, (np.floating, np.integer)) else v
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


class ProgressLog:
    """The run's progress lines, printed and appended to ``path`` (``progress.log``): the driver echoes the file
    when Ray keeps the workers' own output off the console (``copd.run.worker_logs=false``)."""

    def __init__(self, path: str):
        self.path = path

    def write(self, line: str) -> None:
        print(line, flush=True)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


class FileFollower:
    """New lines of a growing file since construction (``tail -f`` without the process)."""

    def __init__(self, path: str):
        self.path = path
        self.offset = os.path.getsize(path) if os.path.exists(path) else 0

    def new_lines(self) -> list[str]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            f.seek(self.offset)
            text = f.read()
        complete = text[: text.rfind("\n") + 1]  # a line still being written waits for the next call
        self.offset += len(complete.encode())
        return complete.splitlines()


def progress_line(
    step: int, total: int, pos: PhasePosition, rewards: dict[str, float | None], overlaps: dict, seconds: float
) -> str:
    """``[copd] step 3/10 cycle 1  rl | add: reward 0.412 | mul: reward 0.300 | O_k add<-mul 0.953 | 7.1s``."""
    parts = [f"[copd] step {step}/{total} cycle {pos.cycle + 1} {pos.phase.value:>3}"]
    for name, score in rewards.items():
        parts.append(f"{name}: reward {score:.3f}" if score is not None else name)
    parts += [f"O_k {tag} {v:.3f}" for tag, v in overlaps.items()]
    return " | ".join(parts) + f" | {seconds:.1f}s"
