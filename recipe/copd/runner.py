"""The Ray side of a run: start Ray (if the caller has not), run the CoPD trainer in a task runner actor like
verl's ``TaskRunnerV1``, and leave nothing behind (placement groups removed, the runner killed, Ray shut down when
this module started it)."""

from __future__ import annotations

import os
import sys

import ray
from omegaconf import DictConfig, OmegaConf

import verl_patches
from copd.config import CoPDConfig
from recipe.copd.metrics import FileFollower
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
    if config.trainer.resume_mode == "disable":  # a fresh run starts fresh records
        for name in ("metrics.jsonl", "progress.log"):
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
    started = not ray.is_initialized()
    echo = started and not run.worker_logs  # the workers' output stays in Ray's logs; the driver echoes progress
    follower = FileFollower(os.path.join(out, "progress.log"))
    if started:
        runtime_env = OmegaConf.to_container(OmegaConf.create(get_ppo_ray_runtime_env(config)))
        runtime_env.setdefault("env_vars", {}).update(worker_env())
        kwargs = OmegaConf.to_container(config.ray_kwargs.get("ray_init", {}), resolve=True)
        kwargs.pop("runtime_env", None)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        kwargs.setdefault("logging_level", "warning")  # Ray's own INFO lines ("Started a local Ray instance")
        ray.init(runtime_env=runtime_env, log_to_driver=not echo, **kwargs)
    runner = CoPDTaskRunner.remote()
    try:
        result = runner.run.remote(config, copd, run)
        while echo and not ray.wait([result], timeout=1.0)[0]:
            for line in follower.new_lines():
                print(line, flush=True)
        return ray.get(result)
    except Exception:
        if echo:
            print(f"copd: the run failed; every Ray worker's output is in {_worker_logs()} "
                  "(copd.run.worker_logs=true streams it to the console)", file=sys.stderr, flush=True)  # fmt: skip
        raise
    finally:
        for line in follower.new_lines() if echo else []:
            print(line, flush=True)
        ray.kill(runner)  # its worker groups, servers and reward workers go with it
        if started:
            ray.shutdown()


def _worker_logs() -> str:
    """The folder of the current Ray session's worker logs."""
    return os.path.join(ray.get_runtime_context().get_temp_dir(), "session_latest", "logs")
