"""The patches verl 0.9.1 needs to run end to end on a CPU-only machine, one function each.

Every patch was written for verl 0.9.1 (pinned), is idempotent (a second call returns False and changes nothing),
checks that its target still exists (`PatchTargetMissing` otherwise, with the fix in the message) and returns
True when it changed something. All of them are no-ops unless the CPU platform is active (`is_cpu()`), except
`register_hf_rollout`, which only adds the rollout name "hf" to verl's two rollout registries, and
`fix_3d_position_ids`, a bug fix for VLM batches whose rows all have the same length. Where stock verl
already runs on CPU (explicit `ray.init(num_cpus=...)`, pools the caller builds, explicit settings) the patches
leave the caller's choices alone; README.md lists, per patch, what it changes for code that is not ours.

Imports of verl happen inside the functions: `verl_patches.hook` is imported by verl's own `import verl`
(`VERL_USE_EXTERNAL_MODULES`), so a top-level `import verl...` here would be circular.
"""

import functools
import importlib
import importlib.abc
import importlib.util
import os
import sys
import time

from verl_patches.vision_cpu import provide_qwen_vl_utils_without_torchvision

#: The verl release these patches were written against and tested with.
VERL_VERSION = "0.9.1"
#: Attribute set on every wrapper, so a second application can see the first.
MARK = "__verl_patches__"
#: Replay-buffer polling: wait this fraction of the time already spent waiting, at least POLL_FLOOR_S.
POLL_RATIO = 0.2
POLL_FLOOR_S = 0.01

_is_cpu_cache: bool | None = None
_deferred: set[str] = set()  # modules whose patch waits for their first import


class PatchTargetMissing(RuntimeError):
    """A patch target is gone: verl changed. Update the patch for the new version or pin verl==0.9.1."""


def _target(module_name: str, attr: str):
    """Import `module_name` and return `module.attr`, or raise PatchTargetMissing naming the fix."""
    module = importlib.import_module(module_name)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            import verl

            raise PatchTargetMissing(
                f"verl_patches targets {module_name}.{attr}, written for verl {VERL_VERSION}, but verl "
                f"{verl.__version__} has no such attribute: pin verl=={VERL_VERSION} or update verl_patches/patches.py"
            )
        obj = getattr(obj, part)
    return obj


def _source_has(module_name: str, text: str) -> bool:
    """Whether a module's source file contains `text`, found without importing the module or its packages
    (`importlib.util.find_spec` would import the parent packages, e.g. the heavy `verl.workers.engine`)."""
    top, *rest = module_name.split(".")
    spec = importlib.util.find_spec(top)
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(root, *rest[:-1], rest[-1] + ".py") if rest else os.path.join(root, "__init__.py")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                return text in f.read()
    return False


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds one module through the other finders and runs `callback` right after the module executes."""

    def __init__(self, module_name: str, callback):
        self.module_name, self.callback = module_name, callback

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.module_name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_patch(module):
            exec_module(module)
            _deferred.discard(fullname)
            self.callback()

        spec.loader.exec_module = exec_then_patch
        return spec


def _when_imported(module_name: str, apply) -> bool:
    """Run `apply()` now if `module_name` is imported, else right after its first import (keeps heavy verl
    modules out of processes that never use them). Returns False when the patch is already pending."""
    if module_name in sys.modules:
        return apply()
    if module_name in _deferred:
        return False
    _deferred.add(module_name)
    sys.meta_path.insert(0, _AfterImport(module_name, apply))
    return True


def is_cpu() -> bool:
    """Whether this process runs verl on the CPU platform: `VERL_PLATFORM=cpu`, or no accelerator platform that
    verl knows (cuda, npu, rocm, ...) reports itself available (the same probe verl's auto-detection uses)."""
    global _is_cpu_cache
    if _is_cpu_cache is None:
        forced = os.environ.get("VERL_PLATFORM", "").strip().lower()
        if forced:
            _is_cpu_cache = forced == "cpu"
        else:
            from verl.plugin.platform import PlatformRegistry

            _is_cpu_cache = not any(
                PlatformRegistry.get(name)().is_platform_available(use_smi_check=True)
                for name in PlatformRegistry.registered_names()
                if name != "cpu"
            )
    return _is_cpu_cache


def register_cpu_platform() -> bool:
    """Register `PlatformCPU` as "cpu" in verl's `PlatformRegistry` and make it the current platform.

    Why: verl 0.9.1 has no CPU platform; on a CPU box `get_device_name()` says "cuda" and FSDP fails in
    `init_device_mesh("cuda")`. Must run before `verl.workers.engine` is imported, which caches the device name.
    A platform the caller set with `set_platform` and that is available stays current.
    """
    if not is_cpu():
        return False
    from verl.plugin.platform import platform_manager

    from verl_patches.platform_cpu import PLATFORM_NAME, PlatformCPU

    registry = _target("verl.plugin.platform.platform_manager", "PlatformRegistry")
    _target("verl.plugin.platform.platform_manager", "set_platform")
    changed = registry.get(PLATFORM_NAME) is not PlatformCPU
    if changed:
        registry.register(platform=PLATFORM_NAME)(PlatformCPU)
    current = platform_manager._current_platform
    # unset, or verl's fallback to an accelerator that is absent ("Falling back to 'nvidia'")
    if current is None or (not isinstance(current, PlatformCPU) and not current.is_available()):
        platform_manager.set_platform(PlatformCPU())
        changed = True
    return changed


def select_fsdp_engine_on_cpu() -> bool:
    """Let `EngineRegistry` hand out the FSDP/FSDP2 engine on the CPU platform.

    Why: verl 0.9.1 registers the FSDP engine for devices cuda and npu only (`transformer_impl.py`), although its
    code reaches the device only through the platform. verl's own override knob `VERL_ENGINE_DEVICE` /
    `VERL_ENGINE_VENDOR` (read by `EngineRegistry.get_engine_cls`) selects the cuda registration, the one stock verl
    picks on a CPU box (its device there is "cuda"); setting it in this process (children inherit it) avoids
    importing the heavy engine package here. A caller who set either variable keeps its choice.
    """
    if not is_cpu():
        return False
    if not _source_has("verl.workers.engine.base", "VERL_ENGINE_DEVICE"):
        raise PatchTargetMissing(
            f"verl.workers.engine.base no longer reads VERL_ENGINE_DEVICE (written for verl {VERL_VERSION}): "
            "register the FSDP engine for device 'cpu' instead, or pin verl==0.9.1"
        )
    if os.environ.get("VERL_ENGINE_DEVICE") or os.environ.get("VERL_ENGINE_VENDOR"):
        return False  # set by the caller, or by an earlier application
    os.environ["VERL_ENGINE_DEVICE"], os.environ["VERL_ENGINE_VENDOR"] = "cuda", "nvidia"
    return True


def patch_process_group_backend() -> bool:
    """Make `initialize_global_process_group_ray` use plain "gloo" on CPU.

    Why: verl 0.9.1 builds `f"cpu:gloo,{device}:{backend}"`, i.e. "cpu:gloo,cpu:gloo" on CPU, which torch rejects
    ("Duplicate device type cpu"). Also rebinds the name in `verl.workers.engine_workers` if that module was already
    imported (it does `from verl.utils.distributed import ...`).
    """
    if not is_cpu():
        return False
    import sys

    original = _target("verl.utils.distributed", "initialize_global_process_group_ray")
    if getattr(original, MARK, False):
        return False

    @functools.wraps(original)
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return original(timeout_second=timeout_second, backend=backend or "gloo")

    setattr(initialize_global_process_group_ray, MARK, True)
    sys.modules["verl.utils.distributed"].initialize_global_process_group_ray = initialize_global_process_group_ray
    workers = sys.modules.get("verl.workers.engine_workers")
    if workers is not None:
        workers.initialize_global_process_group_ray = initialize_global_process_group_ray
    return True


def patch_resource_pools() -> bool:
    """`use_gpu=True` resource pools on CPU: a bundle holds the rank's device CPU beside verl's helper CPUs, and
    `ResourcePoolManager` checks the pools against Ray's CPUs instead of GPUs.

    Why: on a GPU a bundle is `{"CPU": max_colocate_count, "GPU": 1}`; on the CPU platform the device resource is
    "CPU" too, so verl's `bundle[device] = 1` overwrote the helper CPUs: `{"CPU": 1}`. A rank's colocated workers
    hold that CPU (`num_cpus=1/max_colocate_count` each), and the 1-CPU `get_master_addr_port` task that every
    further worker group on the pool schedules in bundle 0 waited forever. Here the bundle is built as verl builds
    a `use_gpu=False` one with `max_colocate_count + 1` CPUs: one for the device, `max_colocate_count` for helpers,
    as on a GPU. `ResourcePoolManager._check_resource_available` counts GPU/NPU only and raises "Total available
    GPUs 0" on CPU; here it counts those CPUs. `use_gpu=False` pools are left exactly as verl builds them.
    """
    if not is_cpu():
        return False
    pool_cls = _target("verl.single_controller.ray.base", "RayResourcePool")
    manager_cls = _target("verl.single_controller.ray.base", "ResourcePoolManager")
    original_pgs = _target("verl.single_controller.ray.base", "RayResourcePool.get_placement_groups")
    _target("verl.single_controller.ray.base", "ResourcePoolManager._check_resource_available")
    if getattr(original_pgs, MARK, False):
        return False

    @functools.wraps(original_pgs)
    def get_placement_groups(self, *args, **kwargs):
        if not self.use_gpu or self.pgs is not None:
            return original_pgs(self, *args, **kwargs)
        colocate = self.max_colocate_count
        self.use_gpu, self.max_colocate_count = False, colocate + 1  # verl's CPU-only bundle: {"CPU": colocate + 1}
        try:
            return original_pgs(self, *args, **kwargs)
        finally:
            self.use_gpu, self.max_colocate_count = True, colocate

    def _check_resource_available(self):
        import ray

        available = sum(node.get("CPU", 0) for node in ray._private.state.available_resources_per_node().values())
        required = sum(sum(nodes) for nodes in self.resource_pool_spec.values()) * (self.max_colocate_count + 1)
        if available < required:
            raise ValueError(
                f"Ray has {available} CPUs free but the resource pools need {required} (max_colocate_count + 1 = "
                f"{self.max_colocate_count + 1} per rank): raise ray_kwargs.ray_init.num_cpus (logical CPUs may "
                "exceed the cores) or lower trainer.n_gpus_per_node"
            )

    setattr(get_placement_groups, MARK, True)
    pool_cls.get_placement_groups = get_placement_groups
    manager_cls._check_resource_available = _check_resource_available
    return True


def patch_replay_buffer_poll() -> bool:
    """Make the V1 replay buffer's wait for rollouts proportionate to the rollout time, where the caller left
    `poll_interval` at verl's default.

    Why: `ReplayBuffer.sample` polls TransferQueue and sleeps a fixed `poll_interval` (2.0 s, not configurable
    from the trainer config) whenever the batch is not complete yet, so a step's `timing_s/gen` is never below
    2.0 s, even when the generation of a tiny batch takes 0.1 s. On CPU, a buffer built without `poll_interval`
    waits `POLL_RATIO` of the time spent so far in this `sample` call (at least `POLL_FLOOR_S`, at most 2.0 s):
    the overshoot stays under ~20% of the generation time and the number of polls grows only logarithmically.
    A buffer built with an explicit `poll_interval` sleeps exactly that, as in stock verl.
    """
    if not is_cpu():
        return False
    return _when_imported("verl.trainer.ppo.v1.replay_buffer", _proportionate_replay_buffer_poll)


#: Attribute a patched ReplayBuffer carries when its `poll_interval` is verl's default (not the caller's).
ADAPTIVE_POLL = "_verl_patches_adaptive_poll"


def _proportionate_replay_buffer_poll() -> bool:
    import inspect

    buffer_cls = _target("verl.trainer.ppo.v1.replay_buffer", "ReplayBuffer")
    original_init = _target("verl.trainer.ppo.v1.replay_buffer", "ReplayBuffer.__init__")
    original = _target("verl.trainer.ppo.v1.replay_buffer", "ReplayBuffer._wait_for_next_poll")
    if getattr(original, MARK, False):
        return False
    signature = inspect.signature(original_init)

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        setattr(self, ADAPTIVE_POLL, "poll_interval" not in signature.bind(self, *args, **kwargs).arguments)

    @functools.wraps(original)
    def _wait_for_next_poll(self, partition_id: str, last_debug_time: float) -> float:
        if not getattr(self, ADAPTIVE_POLL, False):
            return original(self, partition_id, last_debug_time)
        # `last_debug_time` is the start of this sample() call (or of the last debug print, once a minute).
        full_interval = self.poll_interval
        self.poll_interval = min(full_interval, max(POLL_FLOOR_S, POLL_RATIO * (time.time() - last_debug_time)))
        try:
            return original(self, partition_id, last_debug_time)
        finally:
            self.poll_interval = full_interval

    setattr(__init__, MARK, True)
    setattr(_wait_for_next_poll, MARK, True)
    buffer_cls.__init__ = __init__
    buffer_cls._wait_for_next_poll = _wait_for_next_poll
    return True


#: fp32 log-prob rows per `logsumexp` call on CPU: a chunk's temporaries stay under this many elements (64 MiB).
LOGSUMEXP_CHUNK_ELEMS = 1 << 24


def batch_logprobs_on_cpu() -> bool:
    """Compute `logprobs_from_logits_v2`'s fp32 log-partition in row chunks instead of one row at a time, on CPU.

    Why: without flash-attn's cross entropy (never on CPU) verl's `logprobs_from_logits` falls back to
    `logprobs_from_logits_v2`, which for fp32 logits calls `torch.logsumexp` once per row of the batch (a Python
    loop that bounds peak GPU memory). On CPU the loop, not the arithmetic, was 18% of a toy `compute_log_prob` call
    and 10% of an update (py-spy, docs/LOG.md 2026-12-03). Here the rows go in chunks of at most
    `LOGSUMEXP_CHUNK_ELEMS` logits, so the memory bound stays and the result is bitwise the same (the same
    reduction per row; tested). bf16/fp16 logits and 1-D inputs take verl's own path.
    """
    if not is_cpu():
        return False
    return _when_imported("verl.utils.torch_functional", _chunked_logprobs_from_logits_v2)


def _replace_function(module_name: str, attr: str, make_wrapper, users: tuple[str, ...] = ()) -> bool:
    """Set `module.attr` to `make_wrapper(original)` (marked, `functools.wraps`), once; `users`: modules that
    bound the name at their import (`from module import attr`) and are already imported get the wrapper too."""
    module = sys.modules[module_name]
    original = _target(module_name, attr)
    if getattr(original, MARK, False):
        return False
    wrapper = functools.wraps(original)(make_wrapper(original))
    setattr(wrapper, MARK, True)
    setattr(module, attr, wrapper)
    for name in users:
        user = sys.modules.get(name)
        if user is not None and getattr(user, attr, None) is original:
            setattr(user, attr, wrapper)
    return True


def _chunked_logprobs_from_logits_v2() -> bool:
    import torch

    def make_wrapper(original):
        def logprobs_from_logits_v2(logits, labels):
            if logits.dtype not in (torch.float32, torch.float64) or logits.dim() < 2 or len(logits) == 0:
                return original(logits, labels)
            rows = max(1, LOGSUMEXP_CHUNK_ELEMS // max(1, logits[0].numel()))
            logsumexp_values = torch.cat([torch.logsumexp(chunk, dim=-1) for chunk in logits.split(rows)])
            return torch.gather(logits, dim=-1, index=labels.unsqueeze(-1)).squeeze(-1) - logsumexp_values

        return logprobs_from_logits_v2

    return _replace_function("verl.utils.torch_functional", "logprobs_from_logits_v2", make_wrapper)


#: Modules that bind `maybe_fix_3d_position_ids` by name at import (`from verl.utils.tensordict_utils import ...`).
POSITION_IDS_FIX_USERS = (
    "verl.workers.engine_workers",
    "verl.workers.engine.base",
    "verl.workers.engine_workers_tinker",
)


def fix_3d_position_ids() -> bool:
    """Make `maybe_fix_3d_position_ids` right when every row of a VLM batch has the same length. A bug fix: also
    active off the CPU.

    Why: mRoPE `position_ids` are a jagged (B, 4, j) tensor, ragged on its last dim (`_ragged_idx` 2). verl's and
    TransferQueue's decoders rebuild nested tensors with `torch.nested.as_nested_tensor(rows)`, which picks the
    ragged dim itself: when all B rows have the same shape (4, L) it makes them ragged on dim 1 (values (4B, L),
    offsets every 4 rows). `maybe_fix_3d_position_ids` (the engine calls it on every batch) then sets
    `_ragged_idx = 2` on that layout, and the first `unbind` fails with "split_with_sizes expects split_sizes to sum
    exactly to L ... got [4, 4, ...]". It happened in CI to a 3-branch Qwen3-VL rehearsal whose 8 text rows all
    ran to the length cap. Here a batch whose offsets index the first dim of its values (the layout
    `as_nested_tensor` made) is rebuilt row by row, ragged on the last dim; any other batch goes to verl's fix.
    """
    return _when_imported("verl.utils.tensordict_utils", _ragged_last_position_ids)


def _ragged_last_position_ids() -> bool:
    module = sys.modules["verl.utils.tensordict_utils"]

    def make_wrapper(original):
        def maybe_fix_3d_position_ids(data):
            pos = data["position_ids"] if "position_ids" in data.keys() else None
            if (
                pos is not None
                and pos.is_nested
                and pos.dim() == 3
                and pos._ragged_idx == 1
                and int(pos.offsets()[-1]) == pos.values().shape[0]
            ):
                data["position_ids"] = module.nested_tensor_from_tensor_list(list(pos.unbind()), ragged_idx=2)
                return
            original(data)

        return maybe_fix_3d_position_ids

    return _replace_function(
        "verl.utils.tensordict_utils", "maybe_fix_3d_position_ids", make_wrapper, users=POSITION_IDS_FIX_USERS
    )


def register_hf_rollout() -> bool:
    """Register the `hf` rollout: `RolloutReplicaRegistry` ("hf" -> HFReplica) and the adapter registry
    `_ROLLOUT_REGISTRY[("hf", "async")]` (-> HFServerAdapter). Additive: also active on GPU."""
    from verl_patches.hf_rollout import ADAPTER_FQN, load_replica_class

    replicas = _target("verl.workers.rollout.replica", "RolloutReplicaRegistry")
    adapters = _target("verl.workers.rollout.base", "_ROLLOUT_REGISTRY")
    if replicas._registry.get("hf") is load_replica_class and adapters.get(("hf", "async")) == ADAPTER_FQN:
        return False
    theirs = (replicas._registry.get("hf", load_replica_class), adapters.get(("hf", "async"), ADAPTER_FQN))
    if theirs != (load_replica_class, ADAPTER_FQN):
        raise RuntimeError(
            f"rollout name 'hf' is already registered elsewhere ({theirs}); verl_patches will not replace it: "
            "rename that rollout or set VERL_PATCHES_DISABLE=register_hf_rollout"
        )
    replicas.register("hf", load_replica_class)
    adapters[("hf", "async")] = ADAPTER_FQN
    return True


#: Every patch, in the order apply_all() runs them (the platform first: later imports read it).
ALL_PATCHES = (
    register_cpu_platform,
    select_fsdp_engine_on_cpu,
    patch_process_group_backend,
    patch_resource_pools,
    patch_replay_buffer_poll,
    batch_logprobs_on_cpu,
    register_hf_rollout,
    fix_3d_position_ids,
    provide_qwen_vl_utils_without_torchvision,  # verl_patches/vision_cpu.py
)
