"""Every patch against stock verl on CPU: the verl API it touches, called as stock verl code calls it, once without
and once with `apply_all()` (each run in its own process, under a timeout), gives the same result wherever stock
verl already works on CPU. The only differences are the ones README.md lists, all where stock verl fails on CPU."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

#: Both runs together (side by side): 150 s at load 11 on 2 cores, over 300 s at load 30-60; a hang never ends.
TIMEOUT_S = 600
PROBE = Path(__file__).with_name("stock_cpu_probe.py")
#: Set in this process by the patches other test modules apply; a fresh process must start without them.
PATCH_ENV = ("VERL_PLATFORM", "VERL_ENGINE_DEVICE", "VERL_ENGINE_VENDOR", "VERL_PATCHES_DISABLE")


def _env(mode: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PATCH_ENV}
    # patched: every Ray worker applies the patches too, as with verl_patches.worker_env()
    env["VERL_USE_EXTERNAL_MODULES"] = "verl_patches.hook" if mode == "patched" else ""
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def runs() -> tuple[dict, dict]:
    """(stock, patched) observations; a run that hangs fails the tests after TIMEOUT_S, leaving no process."""
    procs = {
        mode: subprocess.Popen(
            [sys.executable, str(PROBE), mode],
            env=_env(mode),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its Ray processes share its process group: killed with it on a timeout
        )
        for mode in ("stock", "patched")
    }
    deadline = time.monotonic() + TIMEOUT_S
    results = {}
    try:
        for mode, proc in procs.items():
            try:
                stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"the {mode} run did not finish within {TIMEOUT_S} s (hang)")
            assert proc.returncode == 0, f"{mode} run failed:\n{stderr[-3000:]}"
            results[mode] = json.loads(stdout.strip().splitlines()[-1])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    return results["stock"], results["patched"]


def test_register_cpu_platform(runs):
    stock, patched = (r["register_cpu_platform"] for r in runs)
    for key in ("seeded_rand", "rng_state_keys", "rng_restored"):  # what already worked on CPU
        assert patched[key] == stock[key], key
    assert stock["rng_restored"]
    # the platform itself: stock verl names an absent accelerator on a CPU machine
    keys = ("device_name", "nccl_backend", "resource_name", "visible_devices_keyword", "is_device_available")
    assert [stock[k] for k in keys] == ["cuda", "nccl", "GPU", "CUDA_VISIBLE_DEVICES", False]
    assert [patched[k] for k in keys] == ["cpu", "gloo", "CPU", "VERL_CPU_VISIBLE_DEVICES", True]


def test_select_fsdp_engine_on_cpu(runs):
    stock, patched = (r["select_fsdp_engine_on_cpu"] for r in runs)
    assert patched == stock  # the class stock verl picks on CPU (device "cuda"), also on the CPU platform


def test_patch_process_group_backend(runs):
    stock, patched = (r["patch_process_group_backend"] for r in runs)
    assert patched["explicit_gloo"] == stock["explicit_gloo"] == "gloo [1.0, 1.0]"
    # the default backend: stock verl asks for NCCL, which a CPU torch lacks
    assert stock["default"].startswith("error") and patched["default"] == "gloo [1.0, 1.0]"


def test_patch_replay_buffer_poll(runs):
    stock, patched = (r["patch_replay_buffer_poll"] for r in runs)
    assert patched["explicit_0.05"] == stock["explicit_0.05"] == 0.05  # a caller's poll_interval is kept
    assert patched["explicit_2.0"] == stock["explicit_2.0"] == 2.0
    assert stock["default"] == 2.0 and patched["default"] == 0.2  # verl's fixed default: 0.2 x 1 s waited


def test_batch_logprobs_on_cpu(runs):
    stock, patched = (r["batch_logprobs_on_cpu"] for r in runs)
    assert not stock.pop("patched") and patched.pop("patched")
    assert patched == stock  # the same log-probs and gradients, to the bit (fp32 chunked, bf16 verl's own)


def test_register_hf_rollout(runs):
    stock, patched = (r["register_hf_rollout"] for r in runs)
    assert patched["vllm_adapter"] == stock["vllm_adapter"]
    assert patched["replicas"] == sorted([*stock["replicas"], "hf"])
    assert patched["adapters"] == sorted([*stock["adapters"], ["hf", "async"]])


def test_patch_resource_pools(runs):
    stock, patched = (r["patch_resource_pools"] for r in runs)
    # the example: ray.init(num_cpus=100), RayResourcePool([4], use_gpu=False), four results
    assert stock["four_workers"] == [[rank, 4, 2 * rank, {}] for rank in range(4)]
    for key in ("cluster_cpus", "four_workers", "four_bundles", "colocated", "colocated_bundles"):
        assert patched[key] == stock[key], key
    # where stock verl cannot run on CPU: ResourcePoolManager counts GPUs, use_gpu=True pools ask for a GPU
    assert stock["manager"] == "error: Total available GPUs 0" and "device_pool_two_groups" not in stock
    assert patched["manager"] == [{"0": {"CPU": 4.0}, "1": {"CPU": 4.0}}]  # max_colocate_count + 1 per rank
    assert patched["device_pool_two_groups"] == [[[0, 1, 0, {"CPU": 0.5}]]] * 2  # a second group does not wait
