"""The Ray side of a run: start Ray (if the caller has not), run the CoPD trainer in a task runner actor like
verl's ``TaskRunnerV1``, and leave nothing behind (placement groups removed, the runner killed, Ray shut down when
this module started it)."""

from __future__ import annotations

import os
import re

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


class RunFailed(RuntimeError):
    """A run that stopped on a fault it can name in one line (a dead worker: its branch and role)."""


def actor_roles(trainer) -> dict[str, list[str]]:
    """Ray actor id (hex) -> what it is to the run ("branch mul: rollout server"), for every actor the trainer holds."""
    roles: dict[str, list[str]] = {}

    def add(handle, what: str) -> None:
        actor_id = getattr(handle, "_actor_id", None)
        if actor_id is not None:
            roles.setdefault(actor_id.hex(), []).append(what)

    for name, b in (getattr(trainer, "branches", None) or {}).items():
        for w in getattr(getattr(b, "actor_rollout_wg", None), "workers", None) or []:
            add(w, f"branch {name}: actor worker")
        manager = getattr(b, "llm_server_manager", None)
        for replica in manager.get_replicas() if manager is not None else []:
            for server in getattr(replica, "servers", None) or []:
                add(server, f"branch {name}: rollout server")
        for w in getattr(getattr(b, "agent_loop_manager", None), "agent_loop_workers", None) or []:
            add(w, f"branch {name}: agent loop worker")
    for w in getattr(getattr(trainer, "reward_loop_manager", None), "reward_loop_worker_handles", None) or []:
        add(w, "reward loop worker (all branches)")
    return roles


def _chain(err: BaseException | None):
    """``err`` and the exceptions behind it (a Ray task error's ``cause``, then ``__cause__`` / ``__context__``)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        inner = getattr(err, "cause", None) if isinstance(err, ray.exceptions.RayTaskError) else None
        err = inner or err.__cause__ or err.__context__


def dead_actor(err: BaseException) -> ray.exceptions.RayActorError | None:
    """The first ``RayActorError`` in ``err``'s chain."""
    return next((e for e in _chain(err) if isinstance(e, ray.exceptions.RayActorError)), None)


def root_cause_line(err: BaseException) -> str:
    """``Type: first line`` of the innermost exception that is not a Ray wrapper."""
    inner = [e for e in _chain(err) if not isinstance(e, ray.exceptions.RayTaskError)] or [err]
    text = str(inner[0]).strip().splitlines()
    return f"{type(inner[0]).__name__}: {text[0] if text else ''}"


def dead_actor_line(err: BaseException, roles: dict[str, list[str]]) -> str | None:
    """One line naming the dead worker's branch and role, or None when ``err`` is no actor death."""
    dead = dead_actor(err)
    if dead is None:
        return None
    actor_id = getattr(dead, "actor_id", None)
    msg = str(getattr(dead, "error_msg", "") or dead)
    cls = re.search(r"class_name: (\S+)", msg)
    what = " and ".join(sorted(set(roles.get(actor_id or "", []))))
    what = what or f"a Ray actor of the run ({cls.group(1) + ', ' if cls else ''}id {actor_id})"
    if getattr(dead, "_actor_init_failed", False):
        last = [line.strip() for line in msg.splitlines() if line.strip()]
        return f"{what} failed to start: {last[-1] if last else 'no reason given'}"
    return (
        f"{what} died (its process was killed, or ran out of memory); the run stopped: resume it with "
        "trainer.resume_mode=auto from the last complete checkpoint"
    )


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
        except Exception as err:
            line = dead_actor_line(err, actor_roles(trainer))
            if line is not None:
                raise RunFailed(line) from None
            raise
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
    except ray.exceptions.RayTaskError as err:  # the runner raised: give its own exception, not Ray's wrapper
        cause = getattr(err, "cause", None)
        if isinstance(cause, RunFailed):
            raise RunFailed(str(cause)) from None
        line = dead_actor_line(err, {}) or f"the run failed: {root_cause_line(err)}"
        raise RunFailed(line) from err
    except ray.exceptions.RayActorError as err:  # the runner itself died
        raise RunFailed(f"the run's driver actor died: {str(err).strip().splitlines()[0]}") from None
    finally:
        for line in follower.new_lines() if echo else []:
            print(line, flush=True)
        ray.kill(runner)  # its worker groups, servers and reward workers go with it
        if started:
            ray.shutdown()
