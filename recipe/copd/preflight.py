"""Everything that can reject a run's input, done before Ray or any model starts: the ``copd:`` and ``copd.run``
knobs, the files the branches name (opened and read by ``checks``), the rollout backend, the model. Each failure is
one actionable ``ValueError`` line (``recipe.copd.main`` prints it and exits 2)."""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf, open_dict

from copd.config import CoPDConfig
from recipe.copd.run_config import RunConfig

RECIPE_KEYS = ("run",)  # recipe-level settings under `copd:` that are not algorithm knobs


@dataclass(frozen=True)
class Prepared:
    copd: CoPDConfig  # the validated algorithm knobs
    run: RunConfig  # the recipe's own settings (copd.run)
    toy_files: dict | None  # the embedded default's data files per skill and split; None for a user's run


def copd_config_from(config: DictConfig) -> CoPDConfig:
    """The validated algorithm config from the hydra node ``copd`` (recipe keys removed)."""
    node = OmegaConf.to_container(config.copd, resolve=True)
    for key in RECIPE_KEYS:
        node.pop(key, None)
    return CoPDConfig.from_dict(node)


def run_config_from(config: DictConfig) -> RunConfig:
    """The validated ``copd.run`` node."""
    return RunConfig.from_dict(OmegaConf.to_container(config.copd.get("run") or {}, resolve=True))


def bypass_old_log_prob(config: DictConfig) -> bool:
    """verl's ``algorithm.rollout_correction.bypass_mode``: old_log_probs are the rollout's, no forward pass."""
    return bool((config.algorithm.get("rollout_correction", None) or {}).get("bypass_mode", False))


def check_verl_settings(config: DictConfig) -> None:
    """verl settings that only fail deep inside a step, checked before anything is built (the toy included)."""
    if bypass_old_log_prob(config) and not config.actor_rollout_ref.rollout.get("calculate_log_probs", False):
        raise ValueError(
            "algorithm.rollout_correction.bypass_mode=true takes old_log_probs from the rollout's log-probs, which "
            "the rollout returns only with actor_rollout_ref.rollout.calculate_log_probs=true: set it"
        )


def check_inputs(config: DictConfig, copd: CoPDConfig) -> None:
    """Fail fast, before Ray starts, on files that do not exist and on backends that cannot hold K branches."""
    for b in copd.branches:
        for path in (*b.train_files, *b.val_files):
            if not os.path.exists(path):
                raise ValueError(f"branch {b.name}: data file not found: {path}")
        if b.init_path and not os.path.isdir(b.init_path):
            raise ValueError(f"branch {b.name}: init_path is not a folder: {b.init_path}")
        if b.reward_path and not os.path.exists(b.reward_path):
            raise ValueError(f"branch {b.name}: reward_path not found: {b.reward_path}")
    rollout = config.actor_rollout_ref.rollout
    trainable = copd.trainable_branches
    if len(trainable) > 1 and rollout.name not in ("vllm", "hf"):
        raise ValueError(
            f"actor_rollout_ref.rollout.name={rollout.name} names its servers by replica rank only, so "
            f"{len(trainable)} trainable branches would collide; use rollout.name=vllm (or hf on CPU)"
        )
    if len(trainable) > 1 and rollout.get("disaggregation", {}).get("enabled", False):
        raise ValueError(
            "actor_rollout_ref.rollout.disaggregation.enabled=true: verl's PD replicas name their servers by "
            "replica rank only, so several trainable branches would collide; set it to false"
        )
    model = str(config.actor_rollout_ref.model.path)
    needs_base = any(not b.init_path for b in copd.branches)
    looks_local = model.startswith((".", "/", "~")) or model.count("/") != 1  # "org/name" is a hub id
    if needs_base and looks_local and not os.path.isdir(model):
        raise ValueError(f"actor_rollout_ref.model.path is not a folder: {model}")


def check_micro_batches(config: DictConfig, copd: CoPDConfig, run) -> None:
    """Without dynamic batch sizes verl splits a pass into micro-batches of a fixed size and asserts that the rows
    divide evenly: a branch's native rows (n x data.train_batch_size) and each cross batch's rows
    (n x cross batch) must be multiples of the micro-batch sizes times the branch's data-parallel ranks. Checked
    here so the run stops before Ray starts, with the numbers, instead of inside the first update."""
    actor, rollout, trainer = config.actor_rollout_ref.actor, config.actor_rollout_ref.rollout, config.trainer
    ranks = int(trainer.n_gpus_per_node) * int(trainer.nnodes)
    if copd.placement == "split":
        ranks //= max(1, len(copd.branches))
    n, native = int(rollout.n), int(config.data.train_batch_size)
    cross = run.cross_batch_size or native
    micro = {}  # the fixed sizes (a pass with dynamic batch sizes packs by tokens instead)
    if not actor.get("use_dynamic_bsz", False):
        micro["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu"] = actor.get("ppo_micro_batch_size_per_gpu")
    if not rollout.get("log_prob_use_dynamic_bsz", False):
        key = "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu"
        micro[key] = rollout.get("log_prob_micro_batch_size_per_gpu")
    rows = {"native": n * native}
    if copd.pairs:
        rows["cross"] = n * cross
    for key, size in micro.items():
        if size is None:
            continue
        for what, count in rows.items():
            if count % (int(size) * max(1, ranks)):
                raise ValueError(
                    f"{key}={size} does not divide a step's {what} rows ({count} = rollout.n {n} x "
                    f"{'data.train_batch_size' if what == 'native' else 'the cross batch'} "
                    f"{count // n}) over {max(1, ranks)} rank(s): verl needs whole micro-batches; pick a divisor"
                )


def prepare(config: DictConfig, keep: Collection[str] = ()) -> Prepared:
    """Validate, build the toy if it is the run (cached), and fill in what the run needs; ``config`` is updated.
    ``keep``: keys the user set on the command line, which the CPU settings leave alone (``apply_platform``)."""
    from recipe.copd.agent_loop import register_agent_loop
    from recipe.copd.checks import check_copd_keys, check_data_and_models
    from recipe.copd.platform_setup import apply_platform, check_kept_rollout, resolve_placement
    from recipe.copd.reward import route_rewards

    check_copd_keys(OmegaConf.to_container(config.copd, resolve=True))
    run = run_config_from(config)
    copd_config_from(config)  # validate the knobs before building anything
    check_verl_settings(config)
    import verl_patches

    check_kept_rollout(config, keep, verl_patches.is_cpu())  # before the toy's warm start
    toy_files = None
    if run.toy.enable:
        from recipe.copd.toy.prepare import prepare_toy

        toy_files = prepare_toy(config, run.toy)
    note = resolve_placement(config, verl_patches.is_cpu())
    if note:
        print(note, flush=True)
    copd = copd_config_from(config)
    check_inputs(config, copd)
    check_data_and_models(config, copd)  # opens every data file and model folder
    check_micro_batches(config, copd, run)
    apply_platform(config, keep)  # verl_patches before any verl worker module is imported
    register_agent_loop(config)
    route_rewards(config, copd)
    with open_dict(config):
        config.trainer.default_local_dir = os.path.abspath(config.trainer.default_local_dir)
    return Prepared(copd, run, toy_files)
