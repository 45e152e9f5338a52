"""``copd.placement=auto`` resolved for the platform (``recipe.copd.platform_setup.resolve_placement``), and the
yaml's default; the split run it picks on CPU runs in every K=2 e2e test."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from recipe.copd.platform_setup import resolve_placement


def _config(placement: str, k: int = 2, ranks: int = 1):
    branches = [{"name": f"b{i}"} for i in range(k)]
    return OmegaConf.create(
        {"copd": {"placement": placement, "branches": branches}, "trainer": {"n_gpus_per_node": ranks}}
    )


@pytest.mark.parametrize(
    ("on_cpu", "k", "ranks", "placement", "n_gpus"),
    [(True, 2, 1, "split", 2), (True, 3, 2, "split", 6), (True, 1, 1, "colocate", 1),
     (False, 2, 8, "colocate", 8), (False, 1, 4, "colocate", 4)],
)  # fmt: skip
def test_auto_is_split_on_cpu_with_each_branch_keeping_its_ranks(on_cpu, k, ranks, placement, n_gpus):
    config = _config("auto", k, ranks)
    note = resolve_placement(config, on_cpu)
    assert config.copd.placement == placement and config.trainer.n_gpus_per_node == n_gpus
    assert (note is not None) == (placement == "split")
    if note:
        assert note.startswith("[copd] placement auto -> split") and f"{k} branches x {ranks} rank" in note


@pytest.mark.parametrize("placement", ["colocate", "split"])
def test_a_given_placement_is_left_alone(placement):
    config = _config(placement, 2, 2)
    assert resolve_placement(config, on_cpu=True) is None
    assert config.copd.placement == placement and config.trainer.n_gpus_per_node == 2


def test_the_embedded_default_asks_for_auto():
    from pathlib import Path

    import recipe.copd.config as config_pkg

    base = OmegaConf.load(Path(config_pkg.__file__).parent / "copd_base.yaml")
    assert base.copd.placement == "auto"


def test_override_keys_reads_hydras_command_line_forms():
    from recipe.copd.platform_setup import override_keys

    got = override_keys(["a.b=1", "+c=x=y", "++d.e=[1,2]", "~f.g", "copd.s_rl=3"])
    assert got == ["a.b", "c", "d.e", "f.g", "copd.s_rl"]


def test_cpu_settings_leave_the_users_own_keys_alone(monkeypatch):
    from recipe.copd import platform_setup

    monkeypatch.setattr(platform_setup.verl_patches, "apply_all", lambda: None)
    monkeypatch.setattr(platform_setup.verl_patches, "is_cpu", lambda: True)
    monkeypatch.setattr(
        platform_setup.verl_patches,
        "cpu_settings",
        lambda n: {"transfer_queue.units": 2, "ray_kwargs.ray_init.include_dashboard": False, "trainer.device": "cpu"},
    )
    config = OmegaConf.create(
        {"trainer": {"n_gpus_per_node": 1, "device": "cuda"}, "transfer_queue": {"units": 1},
         "ray_kwargs": {"ray_init": {"include_dashboard": True}}}
    )  # fmt: skip
    platform_setup.apply_platform(config, keep=["transfer_queue.units", "ray_kwargs"])
    assert config.transfer_queue.units == 1 and config.ray_kwargs.ray_init.include_dashboard is True
    assert config.trainer.device == "cpu"  # not given by the user: the CPU setting applies


def test_a_kept_gpu_rollout_is_refused_on_cpu(monkeypatch):
    from recipe.copd import platform_setup

    monkeypatch.setattr(platform_setup.verl_patches, "apply_all", lambda: None)
    monkeypatch.setattr(platform_setup.verl_patches, "is_cpu", lambda: True)
    monkeypatch.setattr(platform_setup.verl_patches, "cpu_settings", lambda n: {"actor_rollout_ref.rollout.name": "hf"})
    config = OmegaConf.create({"trainer": {"n_gpus_per_node": 1}, "actor_rollout_ref": {"rollout": {"name": "vllm"}}})
    with pytest.raises(ValueError, match="rollout.name=vllm needs an accelerator"):
        platform_setup.check_kept_rollout(config, ["actor_rollout_ref.rollout.name"], on_cpu=True)
    platform_setup.check_kept_rollout(config, ["actor_rollout_ref.rollout.name"], on_cpu=False)  # a GPU machine
    platform_setup.check_kept_rollout(config, [], on_cpu=True)  # not the user's: the CPU setting will replace it
    platform_setup.apply_platform(config, keep=[])
    assert config.actor_rollout_ref.rollout.name == "hf"
