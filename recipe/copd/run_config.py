"""The recipe's own settings under ``copd.run`` (not algorithm knobs), as frozen dataclasses that reject unknown keys
like the rest of ``copd:`` (a typo such as ``copd.run.validate_merge=false`` fails before anything starts)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from copd.config import known_keys


@dataclass(frozen=True)
class ToyConfig:
    enable: bool = False  # build the embedded two-skill task, tiny model and warm start (the default run)
    workdir: str = "outputs/copd_toy"  # data, warm-started model and run outputs of the toy
    n_train: int = 2000  # training problems per skill
    n_val: int = 64  # validation problems per skill (verl's validation and the warm start's stopping rule)
    n_test: int = 1000  # held-out problems per skill of the closing table (one standard error <= 0.016)
    warm_start_steps: int = 1500  # a maximum: the warm start anneals and stops once it reaches its target accuracy
    warm_start_time_s: int = 300  # the warm start's time budget (then it anneals and stops): bounded on slow machines
    seed: int = 1  # seeds the warm start (weights, batches, answer styles) and the training problems (1: see
    # copd_base.yaml)
    baseline: bool = False  # also train the branches independently (S_OPD = 0) and report their plain average

    def __post_init__(self):
        for name in ("enable", "baseline"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"copd.run.toy.{name}={getattr(self, name)!r} must be true or false")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"copd.run.toy.seed={self.seed!r} must be an integer >= 0")
        for name in ("n_train", "n_val", "n_test", "warm_start_steps", "warm_start_time_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"copd.run.toy.{name}={value!r} must be an integer >= 1")


@dataclass(frozen=True)
class RunConfig:
    cross_batch_size: int | None = None  # prompts per cross batch (None: data.train_batch_size)
    validate_merged: bool = True  # validate the merged model through the rollout on every branch's val data
    worker_logs: bool = False  # stream every Ray worker's output (verl's prints and logs) to the console; false:
    # they stay in Ray's session logs (/tmp/ray/session_latest/logs) and the console shows one line per step
    inline_reward: bool | str = "auto"  # score rule rewards in the agent-loop worker (verl's RewardLoopWorker in
    # that process) instead of one Ray call per sample to the reward workers; auto: on CPU only
    concurrent_rollouts: bool | str = "auto"  # every branch generates at once (one wake, one sample of the replay
    # buffer) instead of one after another; auto: with copd.placement=split (disjoint devices) or the hf rollout
    # (its servers hold their own weights); colocated vLLM servers take turns (they share the GPUs' memory)
    toy: ToyConfig = field(default_factory=ToyConfig)  # the embedded default

    def __post_init__(self):
        size = self.cross_batch_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"copd.run.cross_batch_size={size!r} must be an integer >= 1, or null")
        for name in ("validate_merged", "worker_logs"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"copd.run.{name}={getattr(self, name)!r} must be true or false")
        if self.inline_reward not in (True, False, "auto"):
            raise ValueError(f"copd.run.inline_reward={self.inline_reward!r} must be true, false or auto")
        if self.concurrent_rollouts not in (True, False, "auto"):
            raise ValueError(f"copd.run.concurrent_rollouts={self.concurrent_rollouts!r} must be true, false or auto")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> RunConfig:
        kwargs = known_keys(cls, d or {}, "copd.run")
        kwargs["toy"] = ToyConfig(**known_keys(ToyConfig, kwargs.get("toy") or {}, "copd.run.toy"))
        return cls(**kwargs)
