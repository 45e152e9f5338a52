"""The device platform of a run: on a machine without an accelerator, verl_patches' CPU platform and the settings
a CPU run of verl needs (``verl_patches.cpu_settings``), applied to the composed config."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

import verl_patches


def apply_platform(config: DictConfig) -> None:
    """Apply verl_patches in this process; on CPU also set ``cpu_settings`` for the configured worker count."""
    verl_patches.apply_all()
    if not verl_patches.is_cpu():
        return
    with open_dict(config):
        for key, value in verl_patches.cpu_settings(int(config.trainer.n_gpus_per_node)).items():
            OmegaConf.update(config, key, value, force_add=True)
