"""The toy's "experts + merge" baseline: the same branches trained independently for CoPD's step budget (S_OPD = 0),
then averaged (the paper's plain-average row)."""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf, open_dict

from copd.config import CoPDConfig
from copd.merge import merge_checkpoints
from recipe.copd.run_config import RunConfig
from recipe.copd.runner import run_copd


def run_baseline(config: DictConfig, copd: CoPDConfig, run: RunConfig) -> str:
    """Train ``copd.experts()`` into ``<run>/baseline_experts`` and average the experts into ``baseline_average``."""
    experts = copd.experts()
    cfg = OmegaConf.create(OmegaConf.to_container(config, resolve=True))
    with open_dict(cfg):
        cfg.trainer.default_local_dir = os.path.join(config.trainer.default_local_dir, "baseline_experts")
    print(f"[copd] baseline: the branches trained independently for {experts.s_rl} steps (no OPD), then averaged")
    result = run_copd(cfg, experts, run)
    out = os.path.join(config.trainer.default_local_dir, "baseline_average")
    merge_checkpoints(list(result["branches"].values()), out, method="average", overwrite=True, progress=False)
    return out
