"""The end of a CoPD run: every branch exported to Hugging Face format, the trainable ones merged (the paper's
parameter average by default) into ``merged/``."""

from __future__ import annotations

import os

from copd.config import CoPDConfig
from copd.merge import merge_checkpoints


def export_branches(branches: dict, out_dir: str) -> dict[str, str]:
    """Write each branch's current weights to ``out_dir/hf/branch_{name}``; returns name -> folder."""
    paths = {}
    for name, branch in branches.items():
        path = os.path.join(out_dir, "hf", f"branch_{name}")
        branch.actor_rollout_wg.export_hf(path)
        paths[name] = path
    return paths


def merge_branches(copd: CoPDConfig, paths: dict[str, str], out: str, base_model: str) -> str:
    """Merge the trainable branches' folders into ``out`` per ``copd.merge_method`` / ``merge_weights``.

    Frozen teachers are not merged (their ``merge_weights`` entries are dropped); a single trainable branch is
    copied through the merge (the merge of a model with itself is the identity). ``task_arithmetic`` and ``ties``
    take the base model as the reference.
    """
    trainable = [b.name for b in copd.branches if not b.frozen]
    inputs = [paths[name] for name in trainable]
    if len(inputs) == 1:
        return str(merge_checkpoints(inputs * 2, out, method="average", overwrite=True, progress=False))
    weights = None
    if copd.merge_weights is not None:
        weights = [w for w, b in zip(copd.merge_weights, copd.branches, strict=True) if not b.frozen]
    base = base_model if copd.merge_method in ("task_arithmetic", "ties") else None
    merged = merge_checkpoints(
        inputs, out, method=copd.merge_method, weights=weights, base=base, overwrite=True, progress=False
    )
    return str(merged)
