"""What the presets promise, checked without running: step budgets, distillation directions, ablations, keys."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from recipe.copd.preflight import copd_config_from

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def preset(monkeypatch, tmp_path):
    for var in ("COPD_DATA", "COPD_TEXT_EXPERT", "COPD_IMAGE_EXPERT", "COPD_VIDEO_EXPERT"):
        monkeypatch.setenv(var, str(tmp_path))

    def load(name):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
            cfg = compose(config_name=name)
        return cfg, copd_config_from(cfg)

    return load


def test_copd_total_is_the_sum_of_the_experts(preset):
    _, pair = preset("qwen3vl_text_image")
    _, hub = preset("qwen3vl_text_image_video_hub")
    _, experts = preset("baselines/experts")
    _, video = preset("baselines/expert_video")
    per_expert = {b.name: experts.total_steps for b in experts.branches} | {"video": video.total_steps}
    assert pair.total_steps == per_expert["text"] + per_expert["image"] == 200
    assert hub.total_steps == sum(per_expert.values()) == 300
    assert pair.s_rl / pair.s_opd == hub.s_rl / hub.s_opd == 1.5  # the paper's best ratio
    assert preset("baselines/mixed_rlvr")[1].total_steps == pair.total_steps


@pytest.mark.parametrize(
    ("name", "student", "teacher"),
    [("baselines/static_opd_v2t", "text", "image"), ("baselines/static_opd_t2v", "image", "text")],
)
def test_static_opd_both_directions_from_the_base(preset, name, student, teacher):
    cfg, copd = preset(name)
    spec = {b.name: b for b in copd.branches}
    assert copd.pairs == [(student, teacher)]
    assert spec[teacher].frozen and spec[teacher].init_path and not spec[student].init_path  # student = the base
    assert not spec[student].frozen and copd.s_rl == 0 and copd.total_steps == 100
    assert cfg.actor_rollout_ref.model.path == "Qwen/Qwen3-VL-4B-Instruct"


def test_mopd_student_learns_from_every_frozen_expert(preset):
    _, copd = preset("baselines/mopd")
    frozen = [b.name for b in copd.branches if b.frozen]
    assert sorted(frozen) == ["image", "text", "video"]
    assert sorted(copd.pairs) == [("student", t) for t in sorted(frozen)]


@pytest.mark.parametrize(
    ("name", "kept"),
    [("ablations/wo_image_to_text_opd", ("image", "text")), ("ablations/wo_text_to_image_opd", ("text", "image"))],
)
def test_table3_ablations_drop_one_direction(preset, name, kept):
    _, full = preset("qwen3vl_text_image")
    _, ablation = preset(name)
    assert sorted(full.pairs) == [("image", "text"), ("text", "image")]
    assert ablation.pairs == [kept]
    assert ablation.schedule().phases() == full.schedule().phases()  # same budget and phases as the full run
    assert all(not b.frozen for b in ablation.branches)


def test_hub_topology_and_keys(preset):
    cfg, copd = preset("qwen3vl_text_image_video_hub")
    assert sorted(copd.pairs) == [("image", "text"), ("text", "image"), ("text", "video"), ("video", "text")]
    assert {b.data_source for b in copd.branches} == {"text", "image", "video"}
    assert cfg.reward.custom_reward_function.path == "pkg://recipe.copd.reward"
    assert cfg.data.image_patch_size == 16 and cfg.actor_rollout_ref.model.use_remove_padding
