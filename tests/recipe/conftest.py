"""Shared by the end-to-end recipe tests: a tiny run's overrides and one warm-started toy per test session."""

import shutil
from pathlib import Path

import pytest

# a short warm start (strict val accuracy ~0.05 / 0.03 on the toy's format task): a few non-zero rewards in a tiny run,
# enough for the plumbing the e2e tests check; the demo's warm start stops on accuracy instead
WARM_START_STEPS = 300
N_TRAIN, N_VAL, N_TEST = 64, 8, 16

TINY = [
    "data.train_batch_size=4",
    "actor_rollout_ref.rollout.n=4",
    "actor_rollout_ref.actor.ppo_mini_batch_size=4",
    "actor_rollout_ref.actor.ppo_epochs=1",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
    f"copd.run.toy.warm_start_steps={WARM_START_STEPS}",
    f"copd.run.toy.n_train={N_TRAIN}",
    f"copd.run.toy.n_val={N_VAL}",
    f"copd.run.toy.n_test={N_TEST}",
    "trainer.logger=[console,file]",
]


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory) -> Path:
    """The toy's data and warm-started model, built once per session (the recipe then finds them cached)."""
    from recipe.copd.run_config import ToyConfig
    from recipe.copd.toy.prepare import build_toy_inputs

    work = tmp_path_factory.mktemp("toy_cache")
    toy = ToyConfig(n_train=N_TRAIN, n_val=N_VAL, n_test=N_TEST, warm_start_steps=WARM_START_STEPS)
    build_toy_inputs(str(work), toy)
    return work


@pytest.fixture
def toy_workdir(toy_cache):
    """A function that copies the cached toy into a fresh workdir and returns it."""

    def make(dest: Path) -> Path:
        shutil.copytree(toy_cache, dest)
        return dest

    return make


CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PRESET_ENV = ("COPD_DATA", "COPD_TEXT_EXPERT", "COPD_IMAGE_EXPERT", "COPD_VIDEO_EXPERT")


def pytest_generate_tests(metafunc):
    """A test with a ``preset_name`` argument runs once per preset in configs/ (``common/`` holds no preset)."""
    if "preset_name" in metafunc.fixturenames:
        names = sorted(
            str(p.relative_to(CONFIGS).with_suffix("")) for p in CONFIGS.rglob("*.yaml") if "common" not in p.parts
        )
        metafunc.parametrize("preset_name", names)


@pytest.fixture
def compose_preset(monkeypatch, tmp_path):
    """A function composing a preset of configs/ with hydra, its environment variables pointed at ``tmp_path``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    for var in PRESET_ENV:
        monkeypatch.setenv(var, str(tmp_path))

    def compose_(name: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
            return compose(config_name=name)

    return compose_
