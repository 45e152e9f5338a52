"""Stock verl code on CPU, the way other teams call it; prints one JSON object of what it observed.

`python stock_cpu_probe.py stock|patched`: `patched` applies `verl_patches.apply_all()` first and lets every Ray
worker apply them too (`VERL_USE_EXTERNAL_MODULES`, as `worker_env()` does); `stock` runs verl untouched.
test_verl_patches_with_without.py runs both, each in its own process under a timeout, and compares them.
"""

import json
import os
import socket
import sys
import time


def probe_platform() -> dict:
    """register_cpu_platform: what verl's device helpers answer, and seeding / RNG checkpoints that work on CPU."""
    import torch
    from verl.utils import device
    from verl.utils.checkpoint.checkpoint_manager import BaseCheckpointManager

    torch.manual_seed(3)
    device.manual_seed(3)  # verl's seeding (workers/engine/utils.py) always pairs it with torch.manual_seed
    device.manual_seed_all(3)
    seeded = torch.rand(3).tolist()
    state = BaseCheckpointManager.get_rng_state()
    expected = torch.rand(3).tolist()
    torch.rand(5)
    BaseCheckpointManager.load_rng_state(state)
    return {
        "device_name": device.get_device_name(),
        "nccl_backend": device.get_nccl_backend(),
        "resource_name": device.get_resource_name(),
        "visible_devices_keyword": device.get_visible_devices_keyword(),
        "is_device_available": device.is_device_available(),
        "seeded_rand": seeded,
        "rng_state_keys": sorted(state),
        "rng_restored": torch.rand(3).tolist() == expected,
    }


def probe_engine() -> dict:
    """select_fsdp_engine_on_cpu: the engine class verl's registry hands out for FSDP."""
    from verl.workers.engine import EngineRegistry

    cls = EngineRegistry.get_engine_cls("language_model", "fsdp")
    return {"fsdp": f"{cls.__module__}.{cls.__qualname__}"}


def _all_reduce_world_of_one(backend: str | None) -> str:
    import torch
    import torch.distributed as dist
    from verl.utils.distributed import initialize_global_process_group_ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        initialize_global_process_group_ray(timeout_second=30, backend=backend)
    except Exception as e:  # stock verl on CPU: the default backend names the absent accelerator
        return f"error: {type(e).__name__}"
    try:
        x = torch.ones(2)
        dist.all_reduce(x)
        return f"{dist.get_backend()} {x.tolist()}"
    finally:
        dist.destroy_process_group()


def probe_process_group() -> dict:
    """patch_process_group_backend: an explicit backend (works in stock verl) and the default one."""
    return {"explicit_gloo": _all_reduce_world_of_one("gloo"), "default": _all_reduce_world_of_one(None)}


def probe_replay_buffer() -> dict:
    """patch_replay_buffer_poll: how long one poll of a V1 ReplayBuffer sleeps, 1 s into a sample() call."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.v1 import replay_buffer

    slept = []
    real_sleep = replay_buffer.time.sleep
    replay_buffer.time.sleep = slept.append
    try:
        for kwargs in ({"poll_interval": 0.05}, {"poll_interval": 2.0}, {}):
            buffer = replay_buffer.ReplayBuffer("sync", OmegaConf.create({}), None, "drop", {}, **kwargs)
            buffer._wait_for_next_poll("train", time.time() - 1.0)
            assert buffer.poll_interval == kwargs.get("poll_interval", 2.0)
    finally:
        replay_buffer.time.sleep = real_sleep
    return {"explicit_0.05": slept[0], "explicit_2.0": slept[1], "default": round(slept[2], 2)}


def probe_rollout_registries() -> dict:
    """register_hf_rollout: the rollout names verl's two registries know, and what a stock name resolves to."""
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    return {
        "replicas": sorted(RolloutReplicaRegistry._registry),
        "adapters": sorted(map(list, _ROLLOUT_REGISTRY)),
        "vllm_adapter": _ROLLOUT_REGISTRY[("vllm", "async")],
    }


def probe_worker_groups() -> dict:
    """patch_resource_pools (and the platform inside workers): verl's single-controller API on CPU as stock verl's
    own CPU tests use it: ray.init(num_cpus=100), caller-sized use_gpu=False pools, two groups on one pool; then
    what stock verl cannot do on CPU: a ResourcePoolManager, two groups on one use_gpu=True pool."""
    import ray
    from ray.util import placement_group_table, remove_placement_group
    from verl.single_controller.base import Worker
    from verl.single_controller.base.decorator import Dispatch, register
    from verl.single_controller.ray.base import (
        RayClassWithInitArgs,
        RayResourcePool,
        RayWorkerGroup,
        ResourcePoolManager,
    )

    @ray.remote
    class SomeWorker(Worker):
        @register(dispatch_mode=Dispatch.ALL_TO_ALL)
        def some_method(self, x):
            return [self.rank, self.world_size, x * self.rank, ray.get_runtime_context().get_assigned_resources()]

    def bundles(pool) -> list:
        return [placement_group_table(pg)["bundles"] for pg in pool.get_placement_groups()]

    def group(pool, prefix: str) -> RayWorkerGroup:
        return RayWorkerGroup(
            resource_pool=pool, ray_cls_with_init=RayClassWithInitArgs(cls=SomeWorker), name_prefix=prefix
        )

    env = {"env_vars": {"VERL_USE_EXTERNAL_MODULES": os.environ.get("VERL_USE_EXTERNAL_MODULES", "")}}
    ray.init(num_cpus=100, include_dashboard=False, runtime_env=env)
    pools = []
    try:
        out = {"cluster_cpus": ray.cluster_resources().get("CPU")}
        pools.append(RayResourcePool([4], use_gpu=False))
        out["four_workers"] = group(pools[-1], "g").execute_all_sync("some_method", x=2)
        out["four_bundles"] = bundles(pools[-1])
        pools.append(RayResourcePool([1], use_gpu=False, max_colocate_count=2))  # two groups share one bundle
        out["colocated"] = [group(pools[-1], p).execute_all_sync("some_method", x=1) for p in ("a", "b")]
        out["colocated_bundles"] = bundles(pools[-1])
        manager = ResourcePoolManager(resource_pool_spec={"rpm": [2]}, mapping={}, max_colocate_count=3)
        try:
            manager.create_resource_pool()
            pools.append(manager.resource_pool_dict["rpm"])
            out["manager"] = bundles(pools[-1])
            # use_gpu=True pools: unschedulable in stock verl on CPU (a GPU bundle), so patched runs only
            pools.append(RayResourcePool([1], use_gpu=True, max_colocate_count=2))
            out["device_pool_two_groups"] = [group(pools[-1], p).execute_all_sync("some_method", x=1) for p in "cd"]
        except ValueError as e:  # stock verl on CPU: "Total available GPUs 0 ..."
            out["manager"] = f"error: {str(e).split(' is ')[0]}"
        return out
    finally:
        for pool in pools:
            for pg in pool.pgs or []:
                remove_placement_group(pg)
        ray.shutdown()


def probe_logprobs() -> dict:
    """batch_logprobs_on_cpu: verl's `logprobs_from_logits` (its fp32 v2 fallback on CPU) on fixed logits."""
    import torch
    from verl.utils import torch_functional

    gen = torch.Generator().manual_seed(0)
    out = {}
    for name, shape in {"B_T_V": (5, 7, 33), "N_V": (9, 33)}.items():
        logits = torch.randn(shape, generator=gen)
        labels = torch.randint(0, shape[-1], shape[:-1], generator=gen)
        for dtype in (torch.float32, torch.bfloat16):
            lp = torch_functional.logprobs_from_logits(logits.to(dtype), labels)
            out[f"{name}_{str(dtype).split('.')[-1]}"] = lp.float().flatten().tolist()
    leaf = torch.randn((4, 6, 33), generator=gen, requires_grad=True)  # the update's path: gradients flow
    torch_functional.logprobs_from_logits(leaf, torch.zeros((4, 6), dtype=torch.long)).sum().backward()
    out["grad"] = leaf.grad.flatten().tolist()
    out["patched"] = bool(getattr(torch_functional.logprobs_from_logits_v2, "__verl_patches__", False))
    return out


PROBES = {
    "register_cpu_platform": probe_platform,
    "select_fsdp_engine_on_cpu": probe_engine,
    "patch_process_group_backend": probe_process_group,
    "patch_replay_buffer_poll": probe_replay_buffer,
    "batch_logprobs_on_cpu": probe_logprobs,
    "register_hf_rollout": probe_rollout_registries,
    "patch_resource_pools": probe_worker_groups,
}


def main(mode: str) -> None:
    if mode == "patched":
        import verl_patches

        verl_patches.apply_all()
    elif mode != "stock":
        sys.exit(f"usage: {sys.argv[0]} stock|patched (got {mode!r})")
    results = {name: probe() for name, probe in PROBES.items()}
    print(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:2] or [""])
