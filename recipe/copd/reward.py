"""Per-branch verifiable rewards through verl's single reward loop, routed by ``data_source``.

verl 0.9.1 has one reward function per job (``reward.custom_reward_function``). CoPD gives each branch
its own reward r_k: the recipe points verl at this ``compute_score`` and passes, as reward kwargs, a
table ``routes = {data_source: {"path": ..., "name": ...}}`` built from ``copd.branches``. Rows whose
data source has no route use the built-in scorers of ``recipe.copd.scorers`` when they know the data
source (the presets' ``text``/``image``/``video`` and every benchmark of ``recipe.copd.data``), else
verl's ``default_compute_score``. The presets point verl here with ``pkg://recipe.copd.reward``.
"""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from typing import Any

from recipe.copd import scorers


@cache
def _load(path: str, name: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"reward function file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"copd_reward_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, name):
        raise AttributeError(f"reward function {name!r} not found in {path}")
    return getattr(module, name)


def compute_score(data_source, solution_str, ground_truth, extra_info=None, routes: dict | None = None, **kwargs: Any):
    """verl's custom reward signature; dispatches on ``data_source``: ``routes``, then the built-in scorers."""
    route = (routes or {}).get(data_source)
    if route is not None:
        return _load(route["path"], route.get("name") or "compute_score")(
            data_source, solution_str, ground_truth, extra_info
        )
    if data_source in scorers.DEFAULT_KIND or (extra_info or {}).get("answer_type"):
        return scorers.score(data_source, solution_str, ground_truth, extra_info)
    from verl.utils.reward_score import default_compute_score

    return default_compute_score(data_source, solution_str, ground_truth, extra_info)


def route_rewards(config, copd) -> None:
    """Point verl's reward loop at this router when any branch names its own reward file (``reward_path``)."""
    from omegaconf import open_dict

    routes = {
        b.data_source: {"path": os.path.abspath(b.reward_path), "name": b.reward_name}
        for b in copd.branches
        if b.reward_path and b.data_source
    }
    if not routes:
        return
    with open_dict(config):
        config.reward.custom_reward_function.path = os.path.abspath(__file__)
        config.reward.custom_reward_function.name = "compute_score"
        config.reward.custom_reward_function.reward_kwargs = {"routes": routes}
