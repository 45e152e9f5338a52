"""What a CPU run of verl needs besides the patches: worker environment variables and hydra overrides."""

#: Modules verl imports in every process that imports verl (`verl/__init__.py` reads VERL_USE_EXTERNAL_MODULES).
HOOK_MODULE = "verl_patches.hook"
#: Env knob: torch threads of each hf rollout server process.
HF_THREADS_ENV = "VERL_PATCHES_HF_THREADS"
#: Logical CPUs Ray advertises on a CPU run: every verl actor (task runner, agent-loop and reward workers,
#: TransferQueue storage units, load balancer) asks Ray for a CPU; they mostly wait, so logical CPUs may exceed cores.
MIN_LOGICAL_CPUS = 16
#: CPUs one trainer rank's bundle holds on CPU: verl's ResourcePoolManager max_colocate_count (3) + the rank's device
#: CPU (see patches.patch_resource_pools); HELPER_CPUS for the actors outside the pools.
POOL_CPUS_PER_RANK = 4
HELPER_CPUS = 12


def _physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or 1


def worker_env(threads_per_process: int = 1) -> dict[str, str]:
    """Env vars for `ray.init(runtime_env={"env_vars": ...})` so that every Ray worker applies the patches and
    pins its threads (trainer ranks, rollout servers and helpers share few cores; oversubscribed torch threads
    slow a 2-core machine 10-20x). Also needed on GPU for the `hf` rollout name (the CPU patches stay inert there).
    """
    import os

    import verl_patches

    threads = str(threads_per_process)
    env = {
        "VERL_USE_EXTERNAL_MODULES": _merged_modules(os.environ.get("VERL_USE_EXTERNAL_MODULES", "")),
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        HF_THREADS_ENV: os.environ.get(HF_THREADS_ENV, threads),
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_DEDUP_LOGS": "0",
        # TransferQueue asks for 8 threads per put/get and logs a warning each time a machine has fewer cores
        "TQ_NUM_THREADS": os.environ.get("TQ_NUM_THREADS", str(min(8, _physical_cores()))),
    }
    pythonpath = _project_root()
    if os.environ.get("PYTHONPATH"):
        pythonpath += os.pathsep + os.environ["PYTHONPATH"]
    env["PYTHONPATH"] = pythonpath
    if verl_patches.is_cpu():
        env["VERL_PLATFORM"] = "cpu"
    return env


#: Keys of `cpu_settings` that verl's ppo_trainer config does not declare (hydra needs `++` to add them).
_ADDED_KEYS = (
    "ray_kwargs.ray_init.include_dashboard",
    "actor_rollout_ref.model.override_config.attn_implementation",
    "actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype",
    "actor_rollout_ref.ref.fsdp_config.mixed_precision.param_dtype",
)


def cpu_settings(n_workers: int) -> dict[str, object]:
    """What a CPU run of verl needs, as {dotted config key: value}: `n_workers` trainer ranks on one node, fp32
    FSDP2 with sdpa attention and no torch.compile, the `hf` rollout with one replica per rank, one agent-loop and
    one reward worker, two TransferQueue storage units, no Ray dashboard and enough logical Ray CPUs for all of
    verl's helper actors.
    Task settings (data, model path, batch sizes) stay with the caller. Apply with
    `OmegaConf.update(cfg, key, value, force_add=True)`, or as hydra overrides with `cpu_overrides`.
    """
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ValueError(f"n_workers must be an integer >= 1, got {n_workers!r}")
    settings: dict[str, object] = {
        "trainer.device": "cpu",
        "trainer.nnodes": 1,
        "trainer.n_gpus_per_node": n_workers,
        "ray_kwargs.ray_init.num_cpus": max(MIN_LOGICAL_CPUS, POOL_CPUS_PER_RANK * n_workers + HELPER_CPUS),
        "transfer_queue.backend.SimpleStorage.num_data_storage_units": 2,
        # Ray's dashboard: ~10 processes of its own (head modules, agent) that start with the cluster and poll
        # while it runs; a CPU run's cores go to the workers instead (`ray_kwargs.ray_init.include_dashboard=true`
        # on the command line keeps it)
        "ray_kwargs.ray_init.include_dashboard": False,
        "reward.num_workers": 1,
        "data.dataloader_num_workers": 0,
        # no `datasets` worker pool for the long-prompt filter: datasets forks one for any num_proc >= 1, and a fork
        # in a process that already runs threads (a Ray actor, a test process) can deadlock; CPU data is small
        "data.filter_overlong_prompts_workers": None,
        "actor_rollout_ref.model.use_fused_kernels": False,
        "actor_rollout_ref.model.override_config.attn_implementation": "sdpa",
        "actor_rollout_ref.rollout.name": "hf",
        "actor_rollout_ref.rollout.dtype": "float32",
        "actor_rollout_ref.rollout.tensor_model_parallel_size": 1,
        "actor_rollout_ref.rollout.agent.num_workers": 1,
    }
    for role in ("actor", "ref"):
        settings.update(
            {
                f"actor_rollout_ref.{role}.strategy": "fsdp2",
                f"actor_rollout_ref.{role}.use_torch_compile": False,
                f"actor_rollout_ref.{role}.fsdp_config.use_torch_compile": False,  # the engine's own switch (entropy)
                f"actor_rollout_ref.{role}.fsdp_config.dtype": "float32",
                f"actor_rollout_ref.{role}.fsdp_config.mixed_precision.param_dtype": "fp32",
            }
        )
    return settings


def cpu_overrides(n_workers: int) -> list[str]:
    """`cpu_settings` as hydra overrides (for `verl.trainer.main_ppo` or a compose of `ppo_trainer`); later
    overrides win, so a caller may append its own to change any of these."""
    settings = cpu_settings(n_workers)
    return [f"{'++' if k in _ADDED_KEYS else ''}{k}={'null' if v is None else v}" for k, v in settings.items()]


def _merged_modules(existing: str) -> str:
    """`existing` (comma-separated module list) with HOOK_MODULE added once."""
    modules = [m for m in existing.split(",") if m]
    return ",".join(modules if HOOK_MODULE in modules else [*modules, HOOK_MODULE])


def _project_root() -> str:
    """The directory holding the `verl_patches` package (so workers import it without an install)."""
    import os

    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
