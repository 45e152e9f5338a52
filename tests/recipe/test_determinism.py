"""The pieces that make a resumed run draw the same samples: stable uids, per-sample seeds, the agent-loop entry."""

import pytest
from omegaconf import OmegaConf

from recipe.copd.agent_loop import AGENT_LOOPS_YAML, NAME, register_agent_loop, sample_seed
from recipe.copd.batches import stable_uids


def test_stable_uids_repeat_across_runs_and_differ_within_one():
    a = stable_uids(0, "add", 3, "native", 16)
    assert a == stable_uids(0, "add", 3, "native", 16)
    assert len(set(a)) == 16
    others = [
        stable_uids(1, "add", 3, "native", 16),
        stable_uids(0, "mul", 3, "native", 16),
        stable_uids(0, "add", 4, "native", 16),
        stable_uids(0, "add", 3, "cross:mul", 16),
    ]
    for other in others:
        assert not set(a) & set(other)
    assert all("_" not in uid for uid in a)  # verl's keys are {uid}_{session}_{index}


def test_sample_seeds_differ_per_session_and_repeat_per_run():
    seeds = [sample_seed(42, "u1", s) for s in range(8)]
    assert len(set(seeds)) == 8
    assert seeds == [sample_seed(42, "u1", s) for s in range(8)]
    assert sample_seed(42, "u2", 0) != seeds[0] and sample_seed(43, "u1", 0) != seeds[0]
    assert all(0 <= s < 2**63 for s in seeds)


def _cfg(**agent):
    return OmegaConf.create({"actor_rollout_ref": {"rollout": {"agent": {"default_agent_loop": NAME, **agent}}}})


def test_the_recipe_registers_its_agent_loop_when_the_user_has_no_file():
    cfg = _cfg(agent_loop_config_path=None)
    register_agent_loop(cfg)
    assert cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path == AGENT_LOOPS_YAML
    entries = OmegaConf.load(AGENT_LOOPS_YAML)
    assert [e.name for e in entries] == [NAME]
    assert entries[0]["_target_"] == "recipe.copd.agent_loop.CoPDSingleTurnAgentLoop"


def test_a_user_file_without_the_entry_is_refused(tmp_path):
    path = tmp_path / "loops.yaml"
    path.write_text("- name: mine\n  _target_: my.Loop\n")
    with pytest.raises(ValueError, match="copd_single_turn"):
        register_agent_loop(_cfg(agent_loop_config_path=str(path)))
    cfg = _cfg(agent_loop_config_path=str(path), default_agent_loop="mine")
    register_agent_loop(cfg)  # the user's own loop: left alone
    assert cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path == str(path)
