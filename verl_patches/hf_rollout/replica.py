"""`HFReplica`: verl's `RolloutReplica` for the `hf` rollout (one `HFServer` actor per replica)."""

import asyncio
import uuid

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from verl.workers.rollout.replica import RolloutReplica

from verl_patches.hf_rollout.adapter import attach_server
from verl_patches.hf_rollout.server import HFServer


def role_key_of(worker_group) -> str | None:
    """The colocated role key ("actor_rollout", "b0_actor_rollout", ...) a spawned worker group calls, or None.

    A fused spawn records it as `sub_cls_name`; the default spawn rebinds `{key}_{method}` to `{method}`, so the
    key is the prefix whose `update_weights` is the group's `update_weights`.
    """
    if getattr(worker_group, "sub_cls_name", ""):
        return worker_group.sub_cls_name
    method = getattr(worker_group, "update_weights", None)
    suffix = "_update_weights"
    for name in dir(worker_group):
        if name.endswith(suffix) and name != suffix and getattr(worker_group, name) is method:
            return name[: -len(suffix)]
    return None


class HFReplica(RolloutReplica):
    """Launches one anonymous-by-uuid `HFServer` per replica beside the replica's trainer workers.

    Several server sets may live in one Ray namespace (K branches, each with its own LLMServerManager): the actor
    name and the load-balancer key carry a uuid, and the colocated adapters get the handle injected instead of
    looking the server up by name.
    """

    _role_key: str | None = None

    def rollout_worker_use_gpu(self) -> bool:
        return False

    async def init_hybrid(self, worker_group):
        self._role_key = role_key_of(worker_group)
        await super().init_hybrid(worker_group)

    def _actor_name(self) -> str:
        kind = "reward_" if self.is_reward_model else "teacher_" if self.is_teacher_model else ""
        return f"hf_server_{kind}{self.replica_rank}_{uuid.uuid4().hex[:8]}{self.name_suffix}"

    async def launch_servers(self):
        if len(self.workers) != self.world_size:
            raise RuntimeError(
                f"hf replica {self.replica_rank} got {len(self.workers)} workers, needs {self.world_size}"
            )
        node_id = await self.workers[0].__ray_call__.remote(lambda _actor: ray.get_runtime_context().get_node_id())
        name = self._actor_name()
        server = (
            ray.remote(HFServer)
            .options(
                name=name,
                num_cpus=0,  # the replica's placement-group bundles already hold its CPUs
                max_concurrency=self.max_concurrency,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
            )
            .remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        )
        await server.ready.remote()
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"hf://{ray.get_runtime_context().get_job_id()}/{name}"
        attached = await asyncio.gather(
            *[w.__ray_call__.remote(attach_server, server, self._role_key) for w in self.workers]
        )
        if self.workers and not attached[0]:
            raise RuntimeError(
                f"hf replica {self.replica_rank}: its leader worker holds no HFServerAdapter; "
                "set actor_rollout_ref.rollout.name=hf before init_model"
            )
