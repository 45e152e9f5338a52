"""Patches that let verl 0.9.1 run on CPU, and an `hf` rollout (HF transformers generation as verl's rollout server).

Use:
    import verl_patches
    verl_patches.apply_all()                       # in the driver, before verl.workers / main_ppo is imported
    ray.init(runtime_env={"env_vars": verl_patches.worker_env()})   # every Ray worker applies them too
    overrides = verl_patches.cpu_overrides(n_workers=2)             # hydra overrides for a CPU run

Workers apply the patches through verl's own hook: `VERL_USE_EXTERNAL_MODULES=verl_patches.hook` makes
`import verl` import `verl_patches.hook`, which calls `apply_all()`. This package imports nothing heavy at import
time, so it may be imported before or after verl.
"""

from verl_patches.overrides import cpu_overrides, cpu_settings, worker_env

__all__ = ["apply_all", "cpu_overrides", "cpu_settings", "is_cpu", "worker_env"]

_applying = False
#: Env knob: comma-separated patch names apply_all() skips (to measure or bisect a patch; hf registration included).
DISABLE_ENV = "VERL_PATCHES_DISABLE"


def is_cpu() -> bool:
    """Whether verl runs on the CPU platform in this process (`VERL_PLATFORM=cpu`, or no accelerator found)."""
    from verl_patches.patches import is_cpu as _is_cpu

    return _is_cpu()


def apply_all() -> dict[str, bool]:
    """Apply every patch (idempotent); return {patch name: whether this call changed something}.

    Re-entrant calls (the first verl import inside a patch imports `verl_patches.hook`) return {} and leave the
    work to the outer call.
    """
    global _applying
    if _applying:
        return {}
    import os

    from verl_patches.patches import ALL_PATCHES

    skip = set(filter(None, os.environ.get(DISABLE_ENV, "").split(",")))
    unknown = skip - {patch.__name__ for patch in ALL_PATCHES}
    if unknown:
        raise ValueError(f"{DISABLE_ENV} names unknown patches {sorted(unknown)}; see verl_patches.patches.ALL_PATCHES")
    _applying = True
    try:
        return {patch.__name__: patch() for patch in ALL_PATCHES if patch.__name__ not in skip}
    finally:
        _applying = False
