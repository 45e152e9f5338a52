"""The device platform of a run: on a machine without an accelerator, verl_patches' CPU platform and the settings
a CPU run of verl needs (``verl_patches.cpu_settings``), applied to the composed config except where the command
line set the key; and ``copd.placement=auto`` resolved for the platform."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from omegaconf import DictConfig, OmegaConf, open_dict

import verl_patches


def apply_platform(config: DictConfig, keep: Collection[str] = ()) -> None:
    """Apply verl_patches in this process; on CPU also set ``cpu_settings`` for the configured worker count,
    except the keys in ``keep`` (the user's command-line overrides, ``override_keys``) and the keys below them."""
    verl_patches.apply_all()
    if not verl_patches.is_cpu():
        return
    with open_dict(config):
        for key, value in verl_patches.cpu_settings(int(config.trainer.n_gpus_per_node)).items():
            if not any(key == k or key.startswith(f"{k}.") for k in keep):
                OmegaConf.update(config, key, value, force_add=True)


def check_kept_rollout(config: DictConfig, keep: Collection[str], on_cpu: bool) -> None:
    """On CPU the rollout is verl_patches' ``hf``; a GPU engine the user named on the command line is refused in one
    line (``preflight.prepare`` calls it before the toy's warm start)."""
    rollout = OmegaConf.select(config, "actor_rollout_ref.rollout.name", default="hf")
    kept = any(k in ("actor_rollout_ref", "actor_rollout_ref.rollout", "actor_rollout_ref.rollout.name") for k in keep)
    if on_cpu and kept and rollout != "hf":
        raise ValueError(
            f"actor_rollout_ref.rollout.name={rollout} needs an accelerator; on this CPU machine the recipe runs "
            "verl_patches' hf rollout: drop the override"
        )


def override_keys(overrides: Iterable[str]) -> list[str]:
    """The config keys of hydra command-line overrides (``a.b=1``, ``+a.b=1``, ``++a.b=1``, ``~a.b``)."""
    keys = []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~").strip()
        if key:
            keys.append(key)
    return keys


def resolve_placement(config: DictConfig, on_cpu: bool) -> str | None:
    """``copd.placement=auto`` made concrete in ``config``; returns a one-line note of the choice (None when the
    placement was given).

    On an accelerator: ``colocate`` (the branches share the devices, each branch's rollout servers sleep outside
    its own rollout). On CPU with K >= 2 branches: ``split`` with ``trainer.n_gpus_per_node`` multiplied by K, so
    every branch keeps the ranks it would have had colocated, in worker processes of its own: there is no device
    memory to share, and in their own processes the branches' log-prob passes and updates run at once (colocated
    workers share one process per rank, whose calls Ray runs one at a time). The toy's 2-branch step: see
    docs/LOG.md 2026-12-04."""
    if config.copd.get("placement") != "auto":
        return None
    k = len(config.copd.branches)
    with open_dict(config):
        if on_cpu and k >= 2:
            ranks = int(config.trainer.n_gpus_per_node)
            config.copd.placement = "split"
            config.trainer.n_gpus_per_node = ranks * k
            return f"[copd] placement auto -> split on CPU: {k} branches x {ranks} rank(s), each in its own processes"
        config.copd.placement = "colocate"
    return None
