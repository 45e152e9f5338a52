"""Build the K branches' verl components: worker groups, rollout servers, checkpoint engines, reward loop.

Placement (``copd.placement``):
- ``colocate`` (default): one resource pool; every branch's worker lives in the same process per device
  (verl's ``create_colocated_worker_cls``), so branches share the devices. With FSDP param/optimizer
  offload only the active branch holds device memory, and each branch's rollout servers sleep outside
  its own rollout (the driver wakes them with fresh weights right before use).
- ``split``: one resource pool per branch on disjoint devices (``trainer.n_gpus_per_node`` is divided
  evenly among the branches).
- ``auto`` (the yaml's default): resolved before the run (``platform_setup.resolve_placement``): colocate on
  accelerators, split on CPU with every branch keeping ``trainer.n_gpus_per_node`` ranks.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import ray
from omegaconf import DictConfig, open_dict
from verl.checkpoint_engine import CheckpointEngineManager
from verl.experimental.reward_loop import RewardLoopManager
from verl.single_controller.ray import RayClassWithInitArgs, RayWorkerGroup, ResourcePoolManager
from verl.single_controller.ray.base import create_colocated_worker_cls
from verl.trainer.ppo.utils import need_reference_policy
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.rollout.llm_server import LLMServerManager
from verl.workers.rollout.replica import get_rollout_replica_class

import verl_patches
from recipe.copd.agent_loop import agent_loop_worker_class, branch_llm_client, inline_reward_enabled, single_server
from recipe.copd.worker import CoPDActorRolloutRefWorker

logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


def _resource_pools(trainer) -> tuple[ResourcePoolManager, dict[str, object]]:
    """The resource-pool manager and branch name -> resource pool, per ``copd.placement``."""
    cfg = trainer.config.trainer
    names = list(trainer.branches)
    if trainer.copd.placement not in ("colocate", "split"):  # auto: recipe.copd.platform_setup.resolve_placement
        raise ValueError(f"copd.placement={trainer.copd.placement!r} was not resolved to colocate or split")
    if trainer.copd.placement == "colocate":
        spec = {"copd_pool": [cfg.n_gpus_per_node] * cfg.nnodes}
        mapping = {name: "copd_pool" for name in names}
    else:
        per_branch = cfg.n_gpus_per_node // len(names)
        if per_branch < 1:
            raise ValueError(
                f"copd.placement=split needs trainer.n_gpus_per_node >= K={len(names)}, got {cfg.n_gpus_per_node}"
            )
        spec = {f"copd_pool_{name}": [per_branch] * cfg.nnodes for name in names}
        mapping = {name: f"copd_pool_{name}" for name in names}
    manager = ResourcePoolManager(resource_pool_spec=spec, mapping=mapping)
    manager.create_resource_pool()
    return manager, {name: manager.get_resource_pool(name) for name in names}


def server_name_prefix(rollout_name: str, branch: str) -> str:
    """The Ray actor-name prefix of one branch's rollout servers ("vllm_copd_add_" for vLLM, branch "add").

    verl names a vLLM server ``{prefix}server_{replica_rank}_{node_rank}`` on both sides (the replica that
    launches it, the worker adapter that looks it up), so K branches with the same replica ranks would take the
    same names. Both sides call ``_get_server_name_prefix()``, the hook verl leaves for this; the branch name
    goes there.
    """
    return f"{rollout_name}_copd_{branch}_"


def with_server_name_prefix(base: type, prefix: str, branch: str) -> type:
    """A subclass of the replica class ``base`` whose servers are named with ``prefix`` (``base`` if it has no hook:
    the hf rollout's uuid names and injected handles already keep branches apart)."""
    if not hasattr(base, "_get_server_name_prefix"):
        return base
    return type(f"{base.__name__}_{branch}", (base,), {"_get_server_name_prefix": lambda self: prefix})


def branch_replica_class(rollout_config, branch: str) -> type:
    """verl's rollout replica class for ``rollout_config.name``, with the branch in its servers' names."""
    base = get_rollout_replica_class(rollout_config.name, disaggregation_enabled=rollout_config.disaggregation.enabled)
    return with_server_name_prefix(base, server_name_prefix(rollout_config.name, branch), branch)


class BranchLLMServerManager(LLMServerManager):
    """verl's ``LLMServerManager`` with a given replica class (``branch_replica_class``: the branch in its servers'
    names), through verl's own hook (``rollout_replica_class`` set before ``__init__``). Replica ranks still start
    at 0, so each replica picks its own slice of the branch's worker group."""

    def __init__(self, *args, replica_class: type, **kwargs):
        self.rollout_replica_class = replica_class
        super().__init__(*args, **kwargs)

    async def _init_global_load_balancer(self) -> None:
        """verl's balancer actor, except for one server: the branch then routes with ``SingleServerClient``
        (``branch_llm_client``), which never calls it, so the actor would only start a process and idle."""
        if single_server(self):
            self.global_load_balancer = None
            return
        await super()._init_global_load_balancer()


def _role(branch, config) -> str:
    if branch.spec.frozen:
        return "actor"  # a frozen teacher only scores: no rollout servers
    return "actor_rollout_ref" if need_reference_policy(config) else "actor_rollout"


def build_branch_components(trainer) -> tuple[ResourcePoolManager, RewardLoopManager]:
    """Create and initialise every branch's worker group, servers and checkpoint engine, attached to each
    ``BranchTrainer``; returns the shared resource-pool manager and reward loop."""
    pool_manager, pools = _resource_pools(trainer)
    by_pool: dict[object, dict[str, RayClassWithInitArgs]] = {}
    for name, branch in trainer.branches.items():
        cls = RayClassWithInitArgs(
            cls=ray.remote(CoPDActorRolloutRefWorker),
            config=branch.config.actor_rollout_ref,
            role=_role(branch, trainer.config),
        )
        by_pool.setdefault(pools[name], {})[name] = cls
    groups = {}
    for pool, class_dict in by_pool.items():
        group = RayWorkerGroup(
            resource_pool=pool,
            ray_cls_with_init=create_colocated_worker_cls(class_dict=class_dict),
            device_name=trainer.config.trainer.device,
        )
        groups.update(group.spawn(prefix_set=class_dict.keys()))
    at_once = trainer.copd.placement == "split"
    each_branch(lambda name: groups[name].init_model(), list(trainer.branches), at_once)

    # one reward loop for every branch: its workers have fixed names, and rewards route by data_source
    reward_loop = RewardLoopManager(config=_reward_loop_config(trainer), rm_resource_pool=None)
    for name, branch in trainer.branches.items():
        branch.attach(groups[name], reward_loop, trainer.replay_buffer, pool_manager)
    trainable = [b for b in trainer.branches.values() if not b.spec.frozen]
    components = each_branch(lambda b: _rollout_components(b, pools[b.name]), trainable, at_once)
    for branch, parts in zip(trainable, components, strict=True):
        branch.attach_rollout(*parts)
        logger.info("branch %s: %d rollout replicas", branch.name, len(branch.llm_server_manager.get_replicas()))
    return pool_manager, reward_loop


def each_branch(fn: Callable[[T], R], items: list[T], at_once: bool) -> list[R]:
    """``[fn(x) for x in items]``, in one thread per item when ``at_once``.

    Set-up on disjoint pools (``placement=split``) runs concurrently: each branch's worker processes import,
    load the model and start their servers side by side instead of in turn. Colocated branches share devices
    (two inference engines starting at once on one GPU would race for its memory), so they set up in turn.
    """
    if not at_once or len(items) < 2:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=len(items), thread_name_prefix="copd-setup") as pool:
        return list(pool.map(fn, items))


def _inline_reward(trainer) -> bool:
    """Whether the agent loops score in their own process (``copd.run.inline_reward`` on this platform)."""
    return inline_reward_enabled(trainer.run.inline_reward, trainer.config, verl_patches.is_cpu())


def _reward_loop_config(trainer) -> DictConfig:
    """The reward loop's config: the trainer's, with no reward worker actors when the agent loops score inline
    (``copd.run.inline_reward``): they would start, hold memory and never be called. The agent loops still get a
    handle list (empty, not None: verl reads None as "score after the rollout") that they replace with their own
    in-process scorer."""
    if not _inline_reward(trainer):
        return trainer.config
    config = copy.deepcopy(trainer.config)
    with open_dict(config):
        config.reward.num_workers = 0
    return config


def _rollout_components(branch, pool) -> tuple[LLMServerManager, CheckpointEngineManager]:
    """A trainable branch's rollout servers (named after the branch) and the checkpoint engine that syncs them."""
    rollout = branch.config.actor_rollout_ref.rollout
    replica_class = branch_replica_class(rollout, branch.name)
    if hasattr(replica_class, "_get_server_name_prefix"):  # the worker-side adapter looks up the same name
        branch.actor_rollout_wg.copd_set_server_name_prefix(server_name_prefix(rollout.name, branch.name))
    servers = BranchLLMServerManager.create(
        config=branch.config, worker_group=branch.actor_rollout_wg, rollout_resource_pool=pool,
        replica_class=replica_class,
    )  # fmt: skip
    engine_cfg = omega_conf_to_dataclass(rollout.checkpoint_engine)
    engine_cfg.backend = "naive"  # as verl's V1 trainer does
    engine = CheckpointEngineManager(
        config=engine_cfg, actor_wg=branch.actor_rollout_wg, replicas=servers.get_replicas()
    )
    engine.sleep_replicas()
    return servers, engine


def build_agent_loops(trainer) -> dict:
    """One verl agent loop manager per trainable branch, all sharing the reward loop workers."""
    from verl.trainer.ppo.v1 import AgentLoopManagerTQ

    worker_class = agent_loop_worker_class(_inline_reward(trainer))

    class CoPDAgentLoopManagerTQ(AgentLoopManagerTQ):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.agent_loop_workers_class = worker_class

    def create(branch):
        return CoPDAgentLoopManagerTQ.create(
            config=branch.config,
            llm_client=branch_llm_client(branch.llm_server_manager),
            teacher_client=None,
            reward_loop_worker_handles=trainer.reward_loop_manager.reward_loop_worker_handles,
        )

    trainable = [b for b in trainer.branches.values() if not b.spec.frozen]
    managers = each_branch(create, trainable, trainer.copd.placement == "split")
    return {b.name: m for b, m in zip(trainable, managers, strict=True)}
