"""The Ray side of a run: start Ray (if the caller has not), run the CoPD trainer in a task runner actor like
verl's ``TaskRunnerV1``, and leave nothing behind (placement groups removed, the runner killed, Ray shut down when
this module started it)."""

from __future__ import annotations

import os

import ray
from omegaconf import DictConfig, OmegaConf

import verl_patches
from copd.config import CoPDConfig
from recipe.copd.run_config import RunConfig

#: Known-harmless warnings, filtered in every Ray worker at their source: verl's engine registry warns once per
#: process for each optional engine that is not installed (torchtitan, veomni, automodel, mindspeed, megatron).
QUIET_WARNINGS = "ignore::UserWarning:verl.workers.engine"


def worker_env() -> dict[str, str]:
    """Environment of every Ray worker of a run: verl_patches' (patches, thread pins) plus the recipe's own."""
    env = verl_patches.worker_env()
    env["TRANSFER_QUEUE_ENABLE"] = "1"
    env["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), QUIET_WARNINGS]))
    env.setdefault("TQDM_DISABLE", os.environ.get("TQDM_DISABLE", "1"))  # verl's fit() bar: the progress line says it
    return env


@ray.remote(num_cpus=1)
class CoPDTaskRunner:
    """Runs the CoPD trainer inside the Ray job, like verl's TaskRunnerV1."""

    def run(self, config: DictConfig, copd: CoPDConfig, run: RunConfig) -> dict:
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
            trainer = CoPDTrainer(config, copd, run)
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


def run_copd(config: DictConfig, copd: CoPDConfig, run: RunConfig) -> dict:
    """Start Ray (if needed) and train; returns the trainer's result (HF folders of branches, merged)."""
    from verl.trainer.constants_ppo import get_ppo_ray_runtime_env

    out = os.path.abspath(config.trainer.default_local_dir)
    if config.trainer.resume_mode == "disable" and os.path.exists(os.path.join(out, "metrics.jsonl")):
        os.remove(os.path.join(out, "metrics.jsonl"))
    started = not ray.is_initialized()
    if started:
        runtime_env = OmegaConf.to_container(OmegaConf.create(get_ppo_ray_runtime_env(config)))
        runtime_env.setdefault("env_vars", {}).update(worker_env())
        kwargs = OmegaConf.to_container(config.ray_kwargs.get("ray_init", {}), resolve=True)
        kwargs.pop("runtime_env", None)
        ray.init(runtime_env=runtime_env, **{k: v for k, v in kwargs.items() if v is not None})
    runner = CoPDTaskRunner.remote()
    try:
        return ray.get(runner.run.remote(config, copd, run))
    finally:
        ray.kill(runner)  # its worker groups, servers and reward workers go with it
        if started:
            ray.shutdown()
