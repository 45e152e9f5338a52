"""Joint checkpoints are atomic: a crash while saving leaves the previous checkpoint as the one resume picks.

Orchestration logic only: the worker groups are fakes that write (or fail to write) a file.
"""

import json
import os
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from copd.config import BranchConfig
from copd.schedule import PhaseSchedule
from recipe.copd import checkpoint as ckpt


class FakeWorkerGroup:
    def __init__(self, fail=False):
        self.fail, self.loaded = fail, []

    def save_checkpoint(self, path, hdfs_path, step, keep):
        if self.fail:
            raise RuntimeError("killed while saving")
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "model.pt"), "w") as f:
            f.write(str(step))

    def load_checkpoint(self, path, hdfs_path, delete):
        self.loaded.append(path)


class FakeLoader:
    def __init__(self):
        self.state = {"pos": 0}

    def state_dict(self):
        return dict(self.state)

    def load_state_dict(self, state):
        self.state = dict(state)


def _trainer(root, fail=False, resume_mode="disable"):
    branches = {}
    for name in ("a", "b"):
        spec = BranchConfig(name=name, train_files=("x.parquet",))
        branches[name] = SimpleNamespace(
            spec=spec, has_data=True, actor_rollout_wg=FakeWorkerGroup(fail), train_dataloader=FakeLoader(),
            train_dataloader_it=None, cross_streams={},
        )  # fmt: skip
    cfg = OmegaConf.create({"trainer": {"default_local_dir": str(root), "resume_mode": resume_mode}})
    return SimpleNamespace(config=cfg, branches=branches, schedule=PhaseSchedule(2, 3, 2), global_steps=0)


def test_save_then_resume_restores_step_schedule_and_positions(tmp_path):
    t = _trainer(tmp_path)
    for _ in range(4):
        t.schedule.advance()
    t.global_steps = 4
    t.branches["a"].train_dataloader.state = {"pos": 7}
    ckpt.save(t)
    assert (tmp_path / "latest_checkpointed_iteration.txt").read_text() == "4"
    assert json.loads((tmp_path / "global_step_4" / "copd_state.json").read_text())["global_steps"] == 4

    r = _trainer(tmp_path, resume_mode="auto")
    ckpt.load(r)
    assert r.global_steps == 4 and r.schedule.current() == t.schedule.current()  # mid Phase II of cycle 1
    assert r.branches["a"].train_dataloader.state == {"pos": 7}
    assert r.branches["b"].actor_rollout_wg.loaded == [str(tmp_path / "global_step_4" / "branch_b" / "actor")]


def test_crash_while_saving_keeps_previous_checkpoint(tmp_path):
    t = _trainer(tmp_path)
    t.global_steps = 2
    ckpt.save(t)
    t.global_steps = 3
    t.branches["b"].actor_rollout_wg.fail = True
    with pytest.raises(RuntimeError, match="killed"):
        ckpt.save(t)
    assert not (tmp_path / "global_step_3").exists()
    assert (tmp_path / "latest_checkpointed_iteration.txt").read_text() == "2"
    r = _trainer(tmp_path, resume_mode="auto")
    ckpt.load(r)
    assert r.global_steps == 2


def test_resume_rejects_other_branches(tmp_path):
    t = _trainer(tmp_path)
    t.global_steps = 1
    ckpt.save(t)
    r = _trainer(tmp_path, resume_mode="auto")
    r.branches["c"] = r.branches.pop("b")
    with pytest.raises(ValueError, match="branches"):
        ckpt.load(r)


@pytest.mark.parametrize("where", ["worker", "driver", "tracker"])
def test_disk_full_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch, where):
    """ENOSPC at the worker's write, the driver's torch.save or the tracker: the previous checkpoint stays the one
    resume picks, nothing partial is left, and the error says the disk is full."""
    import errno

    from recipe.copd.runner import RunFailed

    t = _trainer(tmp_path)
    t.global_steps = 2
    ckpt.save(t)
    t.global_steps = 3
    full = OSError(errno.ENOSPC, "No space left on device")

    def fail(*args, **kwargs):
        raise full

    if where == "worker":
        monkeypatch.setattr(t.branches["b"].actor_rollout_wg, "save_checkpoint", fail)
    elif where == "driver":
        monkeypatch.setattr(ckpt.torch, "save", fail)
    else:
        monkeypatch.setattr(ckpt.os, "fsync", fail)
    with pytest.raises(RunFailed, match="no space left on device.*global_step_2 stays the one resume picks"):
        ckpt.save(t)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step_2", "latest_checkpointed_iteration.txt"]
    assert (tmp_path / "latest_checkpointed_iteration.txt").read_text() == "2"
    r = _trainer(tmp_path, resume_mode="auto")
    ckpt.load(r)
    assert r.global_steps == 2
