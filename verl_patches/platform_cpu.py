"""A CPU platform for verl's platform registry (verl 0.9.1 ships cuda, npu and rocm only).

verl reaches the device through `verl.plugin.platform.get_platform()`: its `device_name` names the torch device
(`init_device_mesh`, `.to(device)`), its `device_module` stands in for `torch.cuda` (seeds, memory stats,
`synchronize`, `empty_cache`), `communication_backend_name` picks the process-group backend and `ray_resource_name`
/ `ray_resource_options` decide what a worker asks Ray for. Here the "accelerator" is one CPU slot: a placement
group bundle of `{"CPU": 1}` per rank, and colocated workers share it through fractional `num_cpus`, exactly as
they share a GPU through fractional `num_gpus`.
"""

import types
from contextlib import contextmanager
from typing import Any

import psutil
import torch
from verl.plugin.platform import PlatformBase

#: Name under which the platform is registered and which `VERL_PLATFORM=cpu` selects.
PLATFORM_NAME = "cpu"


def _host_mem_info(*_args, **_kwargs) -> tuple[int, int]:
    """(free, total) bytes of host memory, the CPU analogue of `torch.cuda.mem_get_info`."""
    vm = psutil.virtual_memory()
    return vm.available, vm.total


def _zero(*_args, **_kwargs) -> int:
    return 0


def _noop(*_args, **_kwargs) -> None:
    return None


def build_cpu_device_module() -> types.ModuleType:
    """A `torch.cuda`-shaped module over `torch.cpu`: device queries answer for one CPU device, memory statistics
    are zero (allocator stats do not exist on CPU), seeding and RNG state go to the global torch generator."""
    mod = types.ModuleType("verl_patches.cpu_device")
    for name in dir(torch.cpu):
        if not name.startswith("_"):
            setattr(mod, name, getattr(torch.cpu, name))
    overrides: dict[str, Any] = {
        "is_available": lambda: True,
        "is_initialized": lambda: True,
        "current_device": lambda: "cpu",  # as torch.cpu.current_device(); verl passes it to .to()/device=
        "device_count": lambda: 1,
        "set_device": _noop,
        "synchronize": _noop,
        "empty_cache": _noop,
        "reset_peak_memory_stats": _noop,
        "reset_max_memory_allocated": _noop,
        "memory_allocated": _zero,
        "max_memory_allocated": _zero,
        "memory_reserved": _zero,
        "max_memory_reserved": _zero,
        "mem_get_info": _host_mem_info,
        "manual_seed": torch.manual_seed,
        "manual_seed_all": torch.manual_seed,
        "get_rng_state": torch.get_rng_state,
        "set_rng_state": torch.set_rng_state,
        "get_device_name": lambda *a, **k: "cpu",
        "get_device_properties": lambda *a, **k: types.SimpleNamespace(name="cpu", total_memory=_host_mem_info()[1]),
        "get_device_capability": lambda *a, **k: (None, None),
    }
    for name, fn in overrides.items():
        setattr(mod, name, fn)
    return mod


class PlatformCPU(PlatformBase):
    """verl platform whose device is the host CPU (gloo collectives, Ray resource "CPU")."""

    _device_module = build_cpu_device_module()

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return self._device_module

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        """Auto-detection picks the CPU only when no other registered platform reports itself available."""
        from verl.plugin.platform import PlatformRegistry

        for name in PlatformRegistry.registered_names():
            cls = PlatformRegistry.get(name)
            if name != PLATFORM_NAME and cls is not None and cls().is_platform_available(use_smi_check=use_smi_check):
                return False
        return True

    def current_device(self) -> str:
        """ "cpu", not an index: verl uses get_device_id() as a device (`model.to(get_device_id())`), and the
        integer 0 would mean an accelerator device to torch."""
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None  # CPU has no caching allocator to configure

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "VERL_CPU_VISIBLE_DEVICES"  # a name nothing else reads: never hide GPUs from a CPU process

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "CPU"

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        """Ray rejects `resources={"CPU": n}`: CPU must be asked for with the `num_cpus` keyword."""
        return {"num_cpus": num_gpus}

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None
