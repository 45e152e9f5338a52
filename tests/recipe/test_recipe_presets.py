"""Every preset in configs/ composes with hydra and passes CoPD's config validation (no Ray, no model)."""

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from recipe.copd.preflight import copd_config_from, run_config_from

ROOT = Path(__file__).resolve().parents[2]


def test_preset_composes_and_validates(preset_name, compose_preset):
    cfg = compose_preset(preset_name)
    copd = copd_config_from(cfg)
    run_config_from(cfg)  # copd.run: unknown keys would raise
    assert len(copd.branches) >= 1
    assert cfg.actor_rollout_ref.rollout.name == "vllm"


def test_embedded_default_composes():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "recipe" / "copd" / "config"), version_base=None):
        cfg = compose(config_name="copd_trainer")
    copd = copd_config_from(cfg)
    assert [b.name for b in copd.branches] == ["add", "mul"] and copd.pairs == [("add", "mul"), ("mul", "add")]
