"""The embedded default's inputs: the two-skill data and the warm-started tiny model (both cached on disk), and the
branches' files, reward and model path filled into the config."""

from __future__ import annotations

import os
import time

from omegaconf import DictConfig, open_dict

from recipe.copd.run_config import ToyConfig

REWARD_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reward.py")


def build_toy_inputs(workdir: str, toy: ToyConfig) -> tuple[dict, str]:
    """The toy's data files `{skill: {split: path}}` and warm-started model folder under `workdir` (cached)."""
    from recipe.copd.toy.tasks import build_toy_data
    from recipe.copd.toy.warmstart import warm_start

    files = build_toy_data(
        os.path.join(workdir, "data"), n_train=toy.n_train, n_val=toy.n_val, n_test=toy.n_test, seed=toy.seed
    )
    model = warm_start(
        os.path.join(workdir, "model"), steps=toy.warm_start_steps, time_budget_s=toy.warm_start_time_s, seed=toy.seed
    )
    return files, str(model)


def prepare_toy(config: DictConfig, toy: ToyConfig) -> dict:
    """Build (or find cached) the toy's data and model; point every branch at its skill. Returns the data files."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per model load otherwise
    workdir = os.path.abspath(toy.workdir)
    t0 = time.time()
    files, model = build_toy_inputs(workdir, toy)
    print(f"[copd] toy task and warm-started model ready in {time.time() - t0:.1f}s ({workdir})", flush=True)
    with open_dict(config):
        for branch in config.copd.branches:
            skill = str(branch.get("data_source") or branch.name).split("/")[-1]  # copd_toy/add -> add
            if skill not in files:
                raise ValueError(
                    f"toy branch {branch.name!r}: data_source must be copd_toy/<skill>, skill in {sorted(files)}"
                )
            branch.train_files = [str(files[skill]["train"])]
            branch.val_files = [str(files[skill]["val"])]
            branch.reward_path = REWARD_PATH
        config.actor_rollout_ref.model.path = str(model)
    return files
