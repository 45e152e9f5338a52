"""Each patch: its target exists in the pinned verl, it does what it says, a second application is a no-op,
and every CPU patch is inert when the platform is not the CPU."""

import json
import os
import socket
import subprocess
import sys
import time
import types

import pytest
import torch

import verl_patches
from verl_patches import patches

verl_patches.apply_all()

TARGETS = [
    ("verl.plugin.platform.platform_manager", "PlatformRegistry"),
    ("verl.plugin.platform.platform_manager", "set_platform"),
    ("verl.utils.distributed", "initialize_global_process_group_ray"),
    ("verl.single_controller.ray.base", "RayResourcePool.get_placement_groups"),
    ("verl.single_controller.ray.base", "ResourcePoolManager._check_resource_available"),
    ("verl.trainer.ppo.v1.replay_buffer", "ReplayBuffer.__init__"),
    ("verl.trainer.ppo.v1.replay_buffer", "ReplayBuffer._wait_for_next_poll"),
    ("verl.utils.torch_functional", "logprobs_from_logits_v2"),
    ("verl.workers.rollout.replica", "RolloutReplicaRegistry"),
    ("verl.workers.rollout.base", "_ROLLOUT_REGISTRY"),
    ("verl.utils.tensordict_utils", "maybe_fix_3d_position_ids"),
]


def run_python(code: str, **env) -> dict:
    """Run `code` in a fresh interpreter (so patches start unapplied); return the JSON it prints last."""
    proc = subprocess.run(
        [sys.executable, "-c", code], env=os.environ | env, capture_output=True, text=True, timeout=240, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module,attr", TARGETS)
def test_patch_targets_exist_in_pinned_verl(module, attr):
    assert patches._target(module, attr) is not None
    assert patches._source_has("verl.workers.engine.base", "VERL_ENGINE_DEVICE")


def test_missing_target_raises_with_the_fix():
    with pytest.raises(patches.PatchTargetMissing, match="pin verl==0.9.1"):
        patches._target("verl.utils.distributed", "no_such_function")


def test_second_application_changes_nothing():
    assert verl_patches.apply_all() == {patch.__name__: False for patch in patches.ALL_PATCHES}


def test_disable_knob_rejects_unknown_names(monkeypatch):
    monkeypatch.setenv(verl_patches.DISABLE_ENV, "no_such_patch")
    with pytest.raises(ValueError, match="unknown patches"):
        verl_patches.apply_all()


def test_cpu_platform_is_current_and_shaped_like_cuda():
    from verl.plugin.platform import get_platform
    from verl.utils.device import get_device_id, get_device_name, get_nccl_backend, get_torch_device

    from verl_patches.platform_cpu import PlatformCPU

    assert verl_patches.is_cpu() and isinstance(get_platform(), PlatformCPU)
    assert (get_device_name(), get_nccl_backend(), get_platform().ray_resource_name()) == ("cpu", "gloo", "CPU")
    assert get_platform().ray_resource_options(0.5) == {"num_cpus": 0.5}  # Ray rejects resources={"CPU": ...}
    assert torch.zeros(2).to(get_device_id()).device.type == "cpu"  # verl moves models with .to(get_device_id())
    free, total = get_torch_device().mem_get_info()
    assert 0 < free <= total and get_torch_device().memory_allocated() == 0


def test_fsdp_engine_selected_through_verl_knob():
    assert (os.environ["VERL_ENGINE_DEVICE"], os.environ["VERL_ENGINE_VENDOR"]) == ("cuda", "nvidia")


def test_process_group_backend_is_plain_gloo(monkeypatch):
    import torch.distributed as dist
    from verl.utils.distributed import initialize_global_process_group_ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    initialize_global_process_group_ray()  # verl 0.9.1 would ask torch for "cpu:gloo,cpu:gloo" and fail
    try:
        assert dist.get_backend() == "gloo"
    finally:
        dist.destroy_process_group()


def test_fsdp_engine_knob_set_by_the_caller_is_kept(monkeypatch):
    monkeypatch.setenv("VERL_ENGINE_DEVICE", "npu")
    monkeypatch.delenv("VERL_ENGINE_VENDOR")
    assert not patches.select_fsdp_engine_on_cpu()
    assert os.environ["VERL_ENGINE_DEVICE"] == "npu" and "VERL_ENGINE_VENDOR" not in os.environ


def test_platform_set_by_the_caller_is_kept(monkeypatch):
    from verl.plugin.platform import get_platform, platform_manager

    theirs = types.SimpleNamespace(is_available=lambda: True)  # set_platform(...) by the caller, available
    monkeypatch.setattr(platform_manager, "_current_platform", theirs)
    assert not patches.register_cpu_platform()
    assert get_platform() is theirs


def test_resource_pools_leave_caller_pools_alone(monkeypatch):
    import ray
    from verl.single_controller.ray.base import RayResourcePool, ResourcePoolManager

    pool = RayResourcePool(process_on_nodes=[2], use_gpu=False, max_colocate_count=10)
    assert (pool.use_gpu, pool.max_colocate_count) == (False, 10)
    manager = ResourcePoolManager(resource_pool_spec={"pool": [2]}, mapping={})  # max_colocate_count 3: 4 CPUs a rank
    monkeypatch.setattr(ray._private.state, "available_resources_per_node", lambda: {"n": {"CPU": 8.0}})
    manager._check_resource_available()  # verl 0.9.1 counts GPUs only: "Total available GPUs 0"
    monkeypatch.setattr(ray._private.state, "available_resources_per_node", lambda: {"n": {"CPU": 7.0}})
    with pytest.raises(ValueError, match="ray_init.num_cpus"):
        manager._check_resource_available()


def test_replay_buffer_waits_in_proportion(monkeypatch):
    from omegaconf import OmegaConf
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    buffer = ReplayBuffer("sync", OmegaConf.create({}), None, "drop", {})  # verl's default poll_interval
    now = time.time()
    buffer._wait_for_next_poll("train", now - 1.0)  # 1 s into sample(): wait 0.2 * 1 s
    buffer._wait_for_next_poll("train", now)  # just started: the floor
    buffer._wait_for_next_poll("train", now - 30.0)  # long wait: capped at verl's 2.0 s
    assert slept[0] == pytest.approx(0.2, abs=0.01)
    assert slept[1] == pytest.approx(patches.POLL_FLOOR_S, abs=1e-3)
    assert slept[2] == 2.0 and buffer.poll_interval == 2.0
    explicit = ReplayBuffer("sync", OmegaConf.create({}), None, "drop", {}, poll_interval=2.0)
    explicit._wait_for_next_poll("train", now)  # the caller's choice: exactly its interval
    assert slept[3] == 2.0


def test_hf_rollout_name_taken_by_someone_else_is_not_replaced(monkeypatch):
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    monkeypatch.setitem(RolloutReplicaRegistry._registry, "hf", lambda: object)
    with pytest.raises(RuntimeError, match="VERL_PATCHES_DISABLE=register_hf_rollout"):
        patches.register_hf_rollout()


def test_hf_rollout_registered_in_both_registries():
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import get_rollout_replica_class

    from verl_patches.hf_rollout.adapter import HFServerAdapter
    from verl_patches.hf_rollout.replica import HFReplica

    assert get_rollout_class("hf", "async") is HFServerAdapter
    assert get_rollout_replica_class("hf") is HFReplica


def test_worker_env_and_hook_reach_a_fresh_process():
    env = verl_patches.worker_env()
    assert env["VERL_USE_EXTERNAL_MODULES"] == "verl_patches.hook" and env["OMP_NUM_THREADS"] == "1"
    assert env["VERL_PLATFORM"] == "cpu"
    # a process that only imports verl (as every Ray worker does) gets the patches through verl's hook
    code = (
        "import json, verl; from verl.utils.device import get_device_name; "
        "from verl.workers.rollout.base import _ROLLOUT_REGISTRY as r; "
        "print(json.dumps([get_device_name(), ('hf', 'async') in r]))"
    )
    assert run_python(code, **env) == ["cpu", True]


def test_cpu_patches_are_inert_on_another_platform():
    code = (
        "import json, verl_patches; applied = verl_patches.apply_all(); "
        "from verl.plugin.platform import get_platform; "
        "from verl.single_controller.ray.base import RayResourcePool as P; "
        "print(json.dumps([applied, get_platform().device_name, hasattr(P.__init__, '__verl_patches__')]))"
    )
    applied, device, pool_patched = run_python(code, VERL_PLATFORM="nvidia", VERL_USE_EXTERNAL_MODULES="")
    everywhere = {"register_hf_rollout", "fix_3d_position_ids"}  # additive / a bug fix
    assert applied == {p.__name__: p.__name__ in everywhere for p in patches.ALL_PATCHES}
    assert device == "cuda" and not pool_patched


def test_cpu_overrides_compose_with_verl_config():
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(sys.modules["verl"].__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=verl_patches.cpu_overrides(2))
    rollout, actor = cfg.actor_rollout_ref.rollout, cfg.actor_rollout_ref.actor
    assert (rollout.name, rollout.tensor_model_parallel_size, cfg.trainer.n_gpus_per_node) == ("hf", 1, 2)
    assert (actor.strategy, actor.fsdp_config.mixed_precision.param_dtype) == ("fsdp2", "fp32")
    assert cfg.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    assert cfg.ray_kwargs.ray_init.num_cpus >= 16 and cfg.reward.num_workers == 1
    assert cfg.data.filter_overlong_prompts_workers is None  # null, not the string "None": no datasets fork pool
    with pytest.raises(ValueError, match="n_workers"):
        verl_patches.cpu_overrides(0)


def _equal_length_position_ids(rows: int = 8, length: int = 60):
    """mRoPE position ids of `rows` equal-length rows as TransferQueue's and verl's decoders rebuild them
    (`as_nested_tensor` of the rows: ragged on dim 1 when every row has the same shape)."""
    from tensordict import TensorDict

    want = [torch.arange(4 * length).view(4, length) + i for i in range(rows)]
    pos = torch.nested.as_nested_tensor(want, layout=torch.jagged)
    return want, TensorDict({"position_ids": pos}, batch_size=[rows])


def test_stock_fix_breaks_equal_length_position_ids():
    """The CI failure of 2026-12-03, in a process without the patches: verl's fix makes the batch unreadable."""
    code = (
        "import json, torch; from verl.utils import tensordict_utils as tu; "
        "pos = torch.nested.as_nested_tensor([torch.zeros(4, 60)] * 8, layout=torch.jagged); "
        "td = __import__('tensordict').TensorDict({'position_ids': pos}, batch_size=[8]); "
        "tu.maybe_fix_3d_position_ids(td)\n"
        "try: td['position_ids'].unbind(); print(json.dumps('ok'))\n"
        "except RuntimeError as e: print(json.dumps(str(e)))"
    )
    err = run_python(code, VERL_USE_EXTERNAL_MODULES="")
    assert "split_with_sizes expects split_sizes to sum exactly to 60" in err, err


def test_fix_3d_position_ids_keeps_equal_length_rows():
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine import base

    assert base.maybe_fix_3d_position_ids is tu.maybe_fix_3d_position_ids  # the engine calls the patched one
    want, td = _equal_length_position_ids()
    tu.maybe_fix_3d_position_ids(td)
    assert td["position_ids"]._ragged_idx == 2
    assert all(torch.equal(a, b) for a, b in zip(td["position_ids"].unbind(), want, strict=True))
    halves = tu.chunk_tensordict(td, 2)  # what the engine does next (micro-batches)
    assert all(torch.equal(a, b) for a, b in zip(halves[1]["position_ids"].unbind(), want[4:], strict=True))


def test_fix_3d_position_ids_leaves_ragged_rows_to_verl():
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu

    want = [torch.arange(4 * n).view(4, n) for n in (5, 7, 9)]
    td = TensorDict({"position_ids": tu.nested_tensor_from_tensor_list(want, ragged_idx=2)}, batch_size=[3])
    before = td["position_ids"]
    tu.maybe_fix_3d_position_ids(td)
    assert td["position_ids"] is before and before._ragged_idx == 2
    assert all(torch.equal(a, b) for a, b in zip(td["position_ids"].unbind(), want, strict=True))
