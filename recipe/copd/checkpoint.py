"""Joint, atomic checkpoints of all CoPD branches.

Layout under ``trainer.default_local_dir``::

    global_step_N/
      copd_state.json            schedule state, global step, branch names
      rng.pt                     driver RNG (python, numpy, torch)
      branch_{name}/actor/       verl's engine checkpoint (model, optimizer, scheduler, worker RNG)
      branch_{name}/data.pt      the branch's native dataloader position
      branch_{name}/cross_{teacher}.pt   the position of its cross prompt stream on each teacher's data
    latest_checkpointed_iteration.txt    verl's tracker, written last

A checkpoint is written into ``global_step_N.tmp`` and renamed when complete, and the tracker is
replaced atomically afterwards, so a kill during saving never leaves a checkpoint that resume would
pick up half written (resume only follows the tracker).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import shutil

import numpy as np
import torch
from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path

logger = logging.getLogger(__name__)
TRACKER = "latest_checkpointed_iteration.txt"


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or what it wraps: a Ray task error from a worker) is a full disk (ENOSPC)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left on device" in str(err):
            return True
        err = getattr(err, "cause", None) or err.__cause__ or err.__context__
    return False


def save(trainer) -> str:
    """Save every branch, the schedule, the data positions and the RNG for ``trainer.global_steps``.

    A failure while saving (a full disk, a dead worker) removes the partial folder and leaves the tracker on the
    previous checkpoint; a full disk is raised as one line that says so.
    """
    root = os.path.abspath(trainer.config.trainer.default_local_dir)
    final = os.path.join(root, f"global_step_{trainer.global_steps}")
    try:
        _save_into(trainer, root, final)
    except BaseException as err:
        shutil.rmtree(final + ".tmp", ignore_errors=True)
        if not disk_full(err):
            raise
        from recipe.copd.runner import RunFailed

        previous = find_latest_ckpt_path(root)
        keep = f"{os.path.basename(previous)} stays the one resume picks" if previous else "there is no earlier one"
        raise RunFailed(
            f"checkpoint {os.path.basename(final)} not saved: no space left on device under {root} (the partial "
            f"folder was removed; {keep}); free space, then resume with trainer.resume_mode=auto"
        ) from None
    _prune(root, trainer.config.trainer.get("max_actor_ckpt_to_keep"))
    logger.info("saved CoPD checkpoint %s", final)
    return final


def _save_into(trainer, root: str, final: str) -> None:
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name, branch in trainer.branches.items():
        bdir = os.path.join(tmp, f"branch_{name}")
        os.makedirs(bdir, exist_ok=True)
        if not branch.spec.frozen:
            branch.actor_rollout_wg.save_checkpoint(os.path.join(bdir, "actor"), None, trainer.global_steps, None)
        if branch.has_data:
            torch.save(branch.train_dataloader.state_dict(), os.path.join(bdir, "data.pt"))
        for teacher, stream in branch.cross_streams.items():
            torch.save(stream.state_dict(), os.path.join(bdir, f"cross_{teacher}.pt"))
    state = {
        "global_steps": trainer.global_steps,
        "schedule": trainer.schedule.state_dict(),
        "branches": list(trainer.branches),
    }
    with open(os.path.join(tmp, "copd_state.json"), "w") as f:
        json.dump(state, f, indent=1)
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(rng, os.path.join(tmp, "rng.pt"))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    try:
        _atomic_write_text(os.path.join(root, TRACKER), str(trainer.global_steps))
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)  # complete, but the tracker does not name it: not kept
        raise


def _prune(root: str, keep) -> None:
    if not keep:
        return
    steps = sorted(int(d.split("_")[-1]) for d in os.listdir(root) if d.startswith("global_step_") and d[12:].isdigit())
    for step in steps[: -int(keep)]:
        shutil.rmtree(os.path.join(root, f"global_step_{step}"), ignore_errors=True)


def find_resume_folder(trainer) -> str | None:
    """The folder to resume from per ``trainer.resume_mode`` (disable / auto / resume_path), or None."""
    cfg = trainer.config.trainer
    if cfg.resume_mode == "disable":
        return None
    if cfg.resume_mode == "resume_path":
        path = cfg.resume_from_path
        if not isinstance(path, str) or "global_step_" not in path:
            raise ValueError(f"trainer.resume_from_path must name a global_step_N folder, got {path!r}")
        return os.path.abspath(path)
    if cfg.resume_mode != "auto":
        raise ValueError(f"trainer.resume_mode must be disable, auto or resume_path, got {cfg.resume_mode!r}")
    return find_latest_ckpt_path(os.path.abspath(cfg.default_local_dir))


def load(trainer) -> None:
    """Resume all branches jointly (mid-phase included); sets ``trainer.global_steps``."""
    trainer.global_steps = 0
    folder = find_resume_folder(trainer)
    if folder is None:
        return
    with open(os.path.join(folder, "copd_state.json")) as f:
        state = json.load(f)
    if state["branches"] != list(trainer.branches):
        raise ValueError(f"checkpoint {folder} has branches {state['branches']}, config has {list(trainer.branches)}")
    trainer.global_steps = int(state["global_steps"])
    trainer.schedule.load_state_dict(state["schedule"])
    trainer.total_training_steps = trainer.global_steps + trainer.schedule.remaining_steps
    for name, branch in trainer.branches.items():
        bdir = os.path.join(folder, f"branch_{name}")
        if not branch.spec.frozen:
            branch.actor_rollout_wg.load_checkpoint(os.path.join(bdir, "actor"), None, False)
        if branch.has_data:
            branch.train_dataloader.load_state_dict(torch.load(os.path.join(bdir, "data.pt"), weights_only=False))
            branch.train_dataloader_it = None
        for teacher, stream in branch.cross_streams.items():
            stream.load_state_dict(torch.load(os.path.join(bdir, f"cross_{teacher}.pt"), weights_only=False))
    rng = torch.load(os.path.join(folder, "rng.pt"), weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    logger.info("resumed CoPD from %s at step %d", folder, trainer.global_steps)
