"""The run's records: the JSONL sink, the progress log the driver echoes, the progress line, the copd.run config."""

import json

import numpy as np
import pytest

from copd.schedule import Phase, PhasePosition
from recipe.copd.metrics import FileFollower, MetricsSink, ProgressLog, progress_line
from recipe.copd.run_config import RunConfig


def test_sink_keeps_scalars_only(tmp_path):
    sink = MetricsSink(str(tmp_path / "run" / "metrics.jsonl"))
    sink.append(3, {"a": 1, "b": np.float32(0.5), "c": "rl", "skip": [1, 2]})
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text()) == {"step": 3, "a": 1, "b": 0.5, "c": "rl"}


def test_follower_returns_complete_new_lines_once(tmp_path, capsys):
    path = tmp_path / "progress.log"
    path.write_text("old line\n")
    follower = FileFollower(str(path))
    log = ProgressLog(str(path))
    log.write("[copd] step 1/2")
    assert capsys.readouterr().out == "[copd] step 1/2\n"
    with open(path, "a") as f:
        f.write("half a li")  # a line still being written
    assert follower.new_lines() == ["[copd] step 1/2"]
    assert follower.new_lines() == []
    with open(path, "a") as f:
        f.write("ne\n")
    assert follower.new_lines() == ["half a line"]
    assert FileFollower(str(tmp_path / "missing.log")).new_lines() == []


def test_progress_line_names_phase_rewards_and_overlaps():
    pos = PhasePosition(global_step=2, cycle=0, phase=Phase.OPD, step_in_phase=0)
    line = progress_line(3, 10, pos, {"add": 0.4125, "mul": None}, {"add<-mul": 0.95}, 7.06)
    assert line == "[copd] step 3/10 cycle 1 opd | add: reward 0.412 | mul | O_k add<-mul 0.950 | 7.1s"


def test_run_config_rejects_unknown_keys_and_bad_values():
    assert RunConfig.from_dict({"toy": {"enable": True}}).toy.enable
    with pytest.raises(ValueError, match="validate_merge"):
        RunConfig.from_dict({"validate_merge": False})
    with pytest.raises(ValueError, match=r"copd.run.toy.*n_tset"):
        RunConfig.from_dict({"toy": {"n_tset": 3}})
    with pytest.raises(ValueError, match="cross_batch_size"):
        RunConfig.from_dict({"cross_batch_size": 0})
    with pytest.raises(ValueError, match="worker_logs"):
        RunConfig.from_dict({"worker_logs": "yes"})
    with pytest.raises(ValueError, match="inline_reward"):
        RunConfig.from_dict({"inline_reward": "on"})


def test_inline_reward_setting():
    from omegaconf import OmegaConf

    from recipe.copd.agent_loop import inline_reward_enabled

    rule = OmegaConf.create({"reward": {"reward_model": {"enable": False}}})
    model = OmegaConf.create({"reward": {"reward_model": {"enable": True}}})
    assert inline_reward_enabled("auto", rule, on_cpu=True) and not inline_reward_enabled("auto", rule, on_cpu=False)
    assert inline_reward_enabled(True, rule, on_cpu=False) and not inline_reward_enabled(False, rule, on_cpu=True)
    assert not inline_reward_enabled("auto", model, on_cpu=True)  # a reward model needs verl's reward workers
    with pytest.raises(ValueError, match="reward_model.enable"):
        inline_reward_enabled(True, model, on_cpu=True)
