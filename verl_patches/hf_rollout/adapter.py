"""`HFServerAdapter`: the rollout object inside each trainer worker (`ActorRolloutRefWorker.rollout`).

verl's naive weight sync (`ActorRolloutRefWorker.update_weights(mode="naive")`, the only mode the V1 trainer
uses) calls `resume(["weights"])`, `update_weights(generator)` and `resume(["kv_cache"])` on it. The adapter
does not look its server up by actor name (K server sets in one Ray job would collide); `HFReplica` hands it the
server handle through `attach_server` right after launching the server.
"""

import os

from verl.workers.rollout.base import BaseRollout


class HFServerAdapter(BaseRollout):
    """Drives one `HFServer` from the trainer side: sleep/wake and weight updates (rank 0 of a replica)."""

    def __init__(self, config, model_config, device_mesh=None, replica_rank: int = -1, **kwargs):
        super().__init__(config, model_config, device_mesh)
        c = self.config
        rollout_world_size = c.tensor_model_parallel_size * c.data_parallel_size * c.pipeline_model_parallel_size
        rank = int(os.environ.get("RANK", "0"))
        self.replica_rank = rank // rollout_world_size if replica_rank == -1 else replica_rank
        self.is_leader_rank = rank % rollout_world_size == 0
        self.sleep_level = 2
        self.bucket_bytes = max(1, c.checkpoint_engine.update_weights_bucket_megabytes) << 20
        self.server_handle = None

    def _server(self):
        if self.server_handle is None:
            raise RuntimeError(
                f"hf rollout adapter (replica {self.replica_rank}) has no server: HFReplica.launch_servers attaches "
                "it; build servers with LLMServerManager.create(worker_group=...) after init_model"
            )
        return self.server_handle

    async def resume(self, tags: list[str]):
        if self.is_leader_rank:
            await self._server().wake_up.remote(tags=tags)

    async def release(self):
        if self.is_leader_rank:
            await self._server().sleep.remote()

    async def update_weights(
        self, weights, wire_format: str = "named_tensors", global_steps: int | None = None, peft_config=None, **kwargs
    ):
        """Stream `(hf_name, tensor)` pairs to the server in buckets of `update_weights_bucket_megabytes`.

        Every rank drains the generator (FSDP2 gathers each full tensor collectively); only the leader sends.
        """
        if wire_format != "named_tensors":
            raise NotImplementedError(f"hf rollout takes full named tensors, got wire_format={wire_format!r}")
        if peft_config is not None:
            raise NotImplementedError(
                "hf rollout cannot load LoRA adapters: set actor_rollout_ref.model.lora.merge=True"
            )
        bucket, bucket_bytes = [], 0
        for name, tensor in weights:
            if not self.is_leader_rank:
                continue
            cpu = tensor.detach().to("cpu", copy=True).contiguous()
            bucket.append((name, cpu))
            bucket_bytes += cpu.numel() * cpu.element_size()
            if bucket_bytes >= self.bucket_bytes:
                await self._server().update_weights.remote(bucket, last=False)
                bucket, bucket_bytes = [], 0
        if self.is_leader_rank:
            await self._server().update_weights.remote(bucket, last=True, global_steps=global_steps)

    def generate_sequences(self, prompts):
        raise NotImplementedError("hf rollout is server mode only: generate through LLMServerClient")


def attach_server(actor, server, role_key: str | None) -> int:
    """Run inside a worker actor (via `__ray_call__`): give its HF adapter(s) the server handle.

    `actor` is a colocated `WorkerDict` (its `worker_dict` maps role keys to workers) or a plain worker; a worker
    holds the adapter as `.rollout` (ActorRolloutRefWorker) or `.server_adapter` (CheckpointEngineWorker).
    `role_key` picks one worker of a `WorkerDict` (K branches colocated in one process). Returns how many
    adapters got the handle.
    """
    holders = [actor]
    if hasattr(actor, "worker_dict"):
        holders = [actor.worker_dict[role_key]] if role_key else list(actor.worker_dict.values())
    adapters = [getattr(h, "rollout", None) or getattr(h, "server_adapter", None) for h in holders]
    adapters = [a for a in adapters if isinstance(a, HFServerAdapter)]
    if len(adapters) > 1:
        raise RuntimeError("several hf adapters in one colocated worker: pass the worker group's role key")
    for adapter in adapters:
        adapter.server_handle = server
    return len(adapters)
