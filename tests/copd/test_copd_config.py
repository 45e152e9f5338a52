"""CoPD config: defaults, from_dict, one test per check (the message names the field to fix)."""

import dataclasses

import pytest

from copd.config import BranchConfig, CoPDConfig


def _two(**kw):
    return {"branches": [{"name": "text"}, {"name": "image"}], **kw}


def test_from_dict_defaults_and_properties():
    cfg = CoPDConfig.from_dict(
        _two(branches=[{"name": "text", "beta": 0.5, "train_files": "t.parquet"}, {"name": "im"}])
    )
    assert cfg.branch_names == ("text", "im")
    assert cfg.branches[0].train_files == ("t.parquet",)
    assert cfg.pairs == [("text", "im"), ("im", "text")]
    assert cfg.beta_of("text") == 0.5 and cfg.beta_of("im") == 1.0
    assert cfg.trainable_branches == ("text", "im")
    assert cfg.overlap_k == 16 and cfg.weighting == "token_mean" and cfg.cross_reward is False
    with pytest.raises(ValueError, match="no branch named 'video'"):
        cfg.beta_of("video")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.s_rl = 9


def test_branches_as_mapping_and_edges_as_lists():
    cfg = CoPDConfig.from_dict(
        {"branches": {"s": {}, "t": {"frozen": True, "init_path": "/ckpt"}}, "topology": "edges", "edges": [["s", "t"]]}
    )
    assert cfg.branch_names == ("s", "t") and cfg.edges == (("s", "t"),)
    assert cfg.pairs == [("s", "t")] and cfg.trainable_branches == ("s",)


def test_hub_topology_and_generated_edges_skip_frozen_students():
    names = [{"name": "image"}, {"name": "text"}, {"name": "video", "frozen": True, "init_path": "/v"}]
    cfg = CoPDConfig.from_dict({"branches": names, "topology": "hub", "hub": "text"})
    assert cfg.pairs == [("text", "image"), ("text", "video"), ("image", "text")]


def test_experts_baseline_allows_one_branch_and_no_pairs():
    cfg = CoPDConfig.from_dict({"branches": [{"name": "mixed"}], "s_opd": 0})
    assert cfg.pairs == []


@pytest.mark.parametrize(
    ("d", "field"),
    [
        (_two(foo=1), "foo"),  # unknown key: the message lists it (and the valid keys)
        ({"branches": [{"name": "a", "bta": 1}, {"name": "b"}]}, "bta"),
        ({}, "branches"),
        ({"branches": [{"name": "a"}]}, "branches"),  # K = 1 with s_opd > 0
        ({"branches": [{"name": "a"}, {"name": "a"}]}, "branches"),  # repeated names
        ({"branches": [{"name": "a b"}, {"name": "c"}]}, "name"),
        ({"branches": [{"name": "a", "beta": -0.1}, {"name": "b"}]}, "beta"),
        ({"branches": [{"name": "a", "frozen": True}, {"name": "b"}]}, "init_path"),
        ({"branches": [{"name": "a", "reward_name": ""}, {"name": "b"}]}, "reward_name"),
        ({"branches": [{"name": "a", "train_files": [1]}, {"name": "b"}]}, "train_files"),
        ({"branches": [{"name": n, "frozen": True, "init_path": "/c"} for n in "ab"]}, "frozen"),  # none trainable
        (_two(n_cycles=0), "n_cycles"),
        (_two(s_rl=-1), "s_rl"),
        (_two(s_opd=1.5), "s_opd"),
        (_two(s_rl=0, s_opd=0), "s_rl and s_opd"),
        (_two(schedule_mode="cosine"), "schedule_mode"),
        (_two(overlap_threshold=1.5), "overlap_threshold"),
        (_two(max_s_rl=4), "max_s_rl"),  # max_s_rl without adaptive mode
        (_two(schedule_mode="adaptive", max_s_rl=0), "max_s_rl"),
        (_two(schedule_mode="adaptive", s_rl=2, min_s_rl=3), "min_s_rl"),
        (_two(topology="ring"), "topology"),
        (_two(topology="hub"), "hub"),
        (_two(topology="hub", hub="video"), "hub"),
        (_two(hub="text"), "hub"),  # hub with topology pair
        (_two(topology="edges"), "edges"),
        (_two(edges=[["text", "image"]]), "edges"),  # edges with topology pair
        (_two(topology="edges", edges=[["text", "text"]]), "self-edge"),
        (
            {"branches": [{"name": "a"}, {"name": "b"}, {"name": "c"}], "topology": "edges", "edges": [["a", "b"]]},
            "on no edge",
        ),
        ({"branches": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}, "topology 'pair'"),
        (
            {
                "branches": [{"name": "s"}, {"name": "t", "frozen": True, "init_path": "/c"}],
                "topology": "edges",
                "edges": [["t", "s"]],
            },
            "frozen branch 't'",
        ),
        (_two(overlap_k=0), "overlap_k"),
        (_two(metrics_interval=-1), "metrics_interval"),
        (_two(delta_clamp=0.0), "delta_clamp"),
        (_two(weighting="mean"), "weighting"),
        (_two(cross_reward="yes"), "cross_reward"),
        (_two(placement="spread"), "placement"),
        (_two(merge_method="soup"), "merge_method"),
        (_two(merge_method="weighted"), "merge_weights"),
        (_two(merge_weights=[1.0]), "merge_weights"),
        (_two(merge_weights=[1.0, -1.0]), "merge_weights"),
        (_two(merge_weights=[0.0, 0.0]), "merge_weights"),
        (_two(merge_base=1), "merge_base"),
        (_two(teacher_guard="on"), "teacher_guard"),
        (_two(uniform_guard_tol=0.0), "uniform_guard_tol"),
    ],
)
def test_each_check_names_its_field(d, field):
    with pytest.raises(ValueError, match=field):
        CoPDConfig.from_dict(d)


def test_unknown_key_message_lists_valid_keys():
    with pytest.raises(ValueError, match="valid keys are .*'overlap_k'"):
        CoPDConfig.from_dict(_two(overlapk=4))


def test_frozen_teacher_may_have_prompts_for_its_students():
    # a frozen teacher's train_files are the prompts students sample on (cross batch); it is never trained
    b = BranchConfig(name="expert", frozen=True, init_path="/ckpt", train_files=["image.parquet"])
    assert b.train_files == ("image.parquet",)


def test_adaptive_schedule_accepts_max_s_rl_and_weighted_merge_accepts_weights():
    cfg = CoPDConfig.from_dict(
        _two(schedule_mode="adaptive", max_s_rl=6, merge_method="weighted", merge_weights=[2, 1], delta_clamp=10.0)
    )
    assert cfg.max_s_rl == 6 and cfg.merge_weights == (2, 1)
