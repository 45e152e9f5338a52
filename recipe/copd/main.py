"""Hydra entry of the CoPD recipe: ``python -m recipe.copd.main [overrides]``.

With no arguments it runs the embedded default on a CPU machine: it builds a two-skill toy task and a tiny
Qwen3 (cached), trains two co-evolving branches through verl's workers, merges them, and prints a table of
held-out accuracy per skill with plots of reward and overlap per step. The same trainer runs on GPUs
with vLLM from a preset in ``configs/``.
"""

from __future__ import annotations

import os
import sys
import time

import hydra
import ray
from omegaconf import DictConfig, OmegaConf, open_dict

import verl_patches
from copd.config import CoPDConfig

RECIPE_KEYS = ("run",)  # recipe-level settings under `copd:` that are not algorithm knobs


def copd_config_from(config: DictConfig) -> CoPDConfig:
    """The validated algorithm config from the hydra node ``copd`` (recipe keys removed)."""
    node = OmegaConf.to_container(config.copd, resolve=True)
    for key in RECIPE_KEYS:
        node.pop(key, None)
    return CoPDConfig.from_dict(node)


def prepare_toy(config: DictConfig) -> dict:
    """Build the embedded default's data and warm-started model (cached on disk); fill in the paths."""
    from recipe.copd.toy.tasks import build_toy_data
    from recipe.copd.toy.warmstart import warm_start

    toy = config.copd.run.toy
    workdir = os.path.abspath(toy.workdir)
    t0 = time.time()
    files = build_toy_data(os.path.join(workdir, "data"), n_train=toy.n_train, n_val=toy.n_val, n_test=toy.n_test)
    model = warm_start(os.path.join(workdir, "model"), steps=toy.warm_start_steps)
    print(f"[copd] toy task and warm-started model ready in {time.time() - t0:.1f}s ({workdir})", flush=True)
    reward_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "toy", "reward.py")
    with open_dict(config):
        for branch in config.copd.branches:
            skill = str(branch.get("data_source") or branch.name).split("/")[-1]  # copd_toy/add -> add
            if skill not in files:
                raise ValueError(
                    f"toy branch {branch.name!r}: data_source must be copd_toy/<skill>, skill in {sorted(files)}"
                )
            branch.train_files = [str(files[skill]["train"])]
            branch.val_files = [str(files[skill]["val"])]
            branch.reward_path = reward_path
        config.actor_rollout_ref.model.path = str(model)
    return files


def apply_platform(config: DictConfig) -> None:
    """On a machine without an accelerator: verl's CPU settings (patches + the overrides they need)."""
    verl_patches.apply_all()
    if not verl_patches.is_cpu():
        return
    n_workers = int(config.trainer.n_gpus_per_node)
    with open_dict(config):
        for override in verl_patches.cpu_overrides(n_workers):
            key, value = override.lstrip("+").split("=", 1)
            OmegaConf.update(config, key, _parse(value), force_add=True)


def _parse(value: str):
    import yaml

    return yaml.safe_load(value)


def route_rewards(config: DictConfig, copd: CoPDConfig) -> None:
    """Point verl's reward loop at the per-branch router when any branch names its own reward."""
    routes = {
        b.data_source: {"path": os.path.abspath(b.reward_path), "name": b.reward_name}
        for b in copd.branches
        if b.reward_path and b.data_source
    }
    if not routes:
        return
    router = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reward.py")
    with open_dict(config):
        config.reward.custom_reward_function.path = router
        config.reward.custom_reward_function.name = "compute_score"
        config.reward.custom_reward_function.reward_kwargs = {"routes": routes}


AGENT_LOOPS_YAML = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config", "agent_loops.yaml")


def register_agent_loop(config: DictConfig) -> None:
    """Point verl's agent-loop registry at CoPD's loops (``copd_single_turn``) unless the user has their own file."""
    agent = config.actor_rollout_ref.rollout.agent
    if agent.get("agent_loop_config_path"):
        if agent.get("default_agent_loop") == "copd_single_turn":
            names = [str(c.get("name")) for c in OmegaConf.load(agent.agent_loop_config_path)]
            if "copd_single_turn" not in names:
                raise ValueError(
                    f"default_agent_loop=copd_single_turn is not in {agent.agent_loop_config_path}: add the entry of "
                    f"{AGENT_LOOPS_YAML} to it, or set actor_rollout_ref.rollout.agent.default_agent_loop"
                )
        return
    with open_dict(config):
        agent.agent_loop_config_path = AGENT_LOOPS_YAML


def check_inputs(config: DictConfig, copd: CoPDConfig) -> None:
    """Fail fast, before Ray starts, on files that do not exist."""
    for b in copd.branches:
        for path in (*b.train_files, *b.val_files):
            if not os.path.exists(path):
                raise ValueError(f"branch {b.name}: data file not found: {path}")
        if b.init_path and not os.path.isdir(b.init_path):
            raise ValueError(f"branch {b.name}: init_path is not a folder: {b.init_path}")
        if b.reward_path and not os.path.exists(b.reward_path):
            raise ValueError(f"branch {b.name}: reward_path not found: {b.reward_path}")
    rollout = config.actor_rollout_ref.rollout
    trainable = [b.name for b in copd.branches if not b.frozen]
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


@ray.remote(num_cpus=1)
class CoPDTaskRunner:
    """Runs the CoPD trainer inside the Ray job, like verl's TaskRunnerV1."""

    def run(self, config: DictConfig, copd: CoPDConfig) -> dict:
        import transfer_queue as tq
        from verl.utils.logging_utils import configure_verl_logging

        from recipe.copd.setup import build_agent_loops
        from recipe.copd.trainer import CoPDTrainer

        configure_verl_logging()
        OmegaConf.resolve(config)
        config.transfer_queue.enable = True
        tq.init(config.transfer_queue)
        trainer, ok = None, False
        try:
            trainer = CoPDTrainer(config, copd)
            trainer.init()
            result = trainer.fit(build_agent_loops(trainer))
            ok = True
            return result
        finally:
            tracking = getattr(trainer, "logger", None)
            if tracking is not None:
                tracking.finish(exit_code=0 if ok else 1)
            tq.close()
            release_placement_groups(trainer)


def release_placement_groups(trainer) -> None:
    """Remove the trainer's placement groups: they live as long as the Ray job, so a second run in the same job
    (the toy's baseline, a notebook) would otherwise find their CPUs/GPUs taken."""
    manager = getattr(trainer, "resource_pool_manager", None)
    for pool in getattr(manager, "resource_pool_dict", {}).values():
        for pg in getattr(pool, "pgs", None) or []:
            ray.util.remove_placement_group(pg)


def run_copd(config: DictConfig, copd: CoPDConfig) -> dict:
    """Start Ray (if needed) and train; returns the trainer's result (HF folders of branches, merged)."""
    from verl.trainer.constants_ppo import get_ppo_ray_runtime_env

    out = os.path.abspath(config.trainer.default_local_dir)
    if config.trainer.resume_mode == "disable" and os.path.exists(os.path.join(out, "metrics.jsonl")):
        os.remove(os.path.join(out, "metrics.jsonl"))
    started = not ray.is_initialized()
    if started:
        runtime_env = OmegaConf.to_container(OmegaConf.create(get_ppo_ray_runtime_env(config)))
        runtime_env.setdefault("env_vars", {}).update(verl_patches.worker_env())
        runtime_env["env_vars"]["TRANSFER_QUEUE_ENABLE"] = "1"
        kwargs = OmegaConf.to_container(config.ray_kwargs.get("ray_init", {}), resolve=True)
        kwargs.pop("runtime_env", None)
        ray.init(runtime_env=runtime_env, **{k: v for k, v in kwargs.items() if v is not None})
    runner = CoPDTaskRunner.remote()
    try:
        return ray.get(runner.run.remote(config, copd))
    finally:
        ray.kill(runner)  # its worker groups, servers and reward workers go with it
        if started:
            ray.shutdown()


def prepare(config: DictConfig) -> tuple[CoPDConfig, dict | None]:
    """Everything that can reject the input, before Ray or any model starts (the toy build is cached)."""
    toy = config.copd.run.get("toy", {}).get("enable", False)
    copd_config_from(config)  # validate the knobs before building anything
    files = prepare_toy(config) if toy else None
    copd = copd_config_from(config)
    check_inputs(config, copd)
    register_agent_loop(config)
    apply_platform(config)
    route_rewards(config, copd)
    with open_dict(config):
        config.trainer.default_local_dir = os.path.abspath(config.trainer.default_local_dir)
    return copd, files


def run_baseline(config: DictConfig, copd: CoPDConfig) -> str:
    """The same branches trained independently for the same number of steps (S_OPD = 0), then averaged."""
    import dataclasses

    from copd.merge import merge_checkpoints

    steps = copd.n_cycles * ((copd.max_s_rl or copd.s_rl) + copd.s_opd)
    experts = dataclasses.replace(copd, n_cycles=1, s_rl=steps, s_opd=0, schedule_mode="fixed", max_s_rl=None)
    cfg = OmegaConf.create(OmegaConf.to_container(config, resolve=True))
    with open_dict(cfg):
        cfg.trainer.default_local_dir = os.path.join(config.trainer.default_local_dir, "baseline_experts")
    print(f"[copd] baseline: the branches trained independently for {steps} steps (no OPD), then averaged", flush=True)
    result = run_copd(cfg, experts)
    out = os.path.join(config.trainer.default_local_dir, "baseline_average")
    merge_checkpoints(list(result["branches"].values()), out, method="average", overwrite=True, progress=False)
    return out


def main_with_config(config: DictConfig) -> dict:
    t0 = time.time()
    try:
        copd, files = prepare(config)
    except (ValueError, FileNotFoundError) as err:  # bad input: one actionable line, no traceback
        print(f"copd: error: {err}", file=sys.stderr)
        sys.exit(2)
    result = run_copd(config, copd)
    if files is not None and config.copd.run.toy.get("baseline", False):
        result["baseline_average"] = run_baseline(config, copd)
    if files is not None:
        from recipe.copd.report import toy_report

        toy_report(config, copd, result, files, time.time() - t0)
    return result


@hydra.main(config_path="config", config_name="copd_trainer", version_base=None)
def main(config: DictConfig) -> None:
    main_with_config(config)


if __name__ == "__main__":
    main()
