"""Every CoPD knob as a frozen dataclass, checked on construction.

`CoPDConfig.from_dict(d)` takes the `copd:` node as plain containers (the caller converts hydra's DictConfig
with `OmegaConf.to_container(cfg, resolve=True)`) and rejects unknown keys.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from copd import topology
from copd.advantages import WEIGHTINGS, CoPDAdvantageEstimator
from copd.schedule import PhaseSchedule, check_schedule

PLACEMENTS = ("colocate", "split", "auto")
MERGE_METHODS = ("average", "weighted", "task_arithmetic", "ties")
_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class BranchConfig:
    name: str  # branch name, [A-Za-z0-9_-]+; used in metric keys (branch{name}/...)
    train_files: tuple[str, ...] = ()  # prompts D_k (frozen: only what students sample on); empty = no data
    val_files: tuple[str, ...] = ()  # parquet files for this branch's validation
    beta: float = 1.0  # beta_k (Eq. 8): scale of the teacher signal for this branch as a student
    data_source: str | None = None  # `data_source` value of this branch's rows (routes rewards and validation)
    reward_path: str | None = None  # python file with this branch's verifiable reward (None = verl's default)
    reward_name: str = "compute_score"  # function name in reward_path
    frozen: bool = False  # loaded from init_path, scores students, never updated (static OPD teachers)
    init_path: str | None = None  # HF checkpoint folder to start from instead of the base model; needed if frozen

    def __post_init__(self):
        object.__setattr__(self, "train_files", _as_str_tuple("train_files", self.train_files))
        object.__setattr__(self, "val_files", _as_str_tuple("val_files", self.val_files))
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ValueError(f"branch name={self.name!r} must match [A-Za-z0-9_-]+ (e.g. 'math', 'code_1')")
        if isinstance(self.beta, bool) or not isinstance(self.beta, int | float) or not math.isfinite(self.beta):
            raise ValueError(f"branch {self.name}: beta={self.beta!r} must be a finite number >= 0")
        if self.beta < 0:
            raise ValueError(f"branch {self.name}: beta={self.beta} must be >= 0 (0 turns distillation off)")
        _require_bool(f"branch {self.name}: frozen", self.frozen)
        if not self.reward_name:
            raise ValueError(f"branch {self.name}: reward_name must be a non-empty function name")
        if self.frozen and not self.init_path:
            raise ValueError(f"branch {self.name}: frozen=True needs init_path (the checkpoint it teaches from)")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BranchConfig:
        """Build from a plain dict; unknown keys raise."""
        return cls(**known_keys(cls, d, f"branch {d.get('name', '?')}"))


@dataclass(frozen=True)
class CoPDConfig:
    branches: tuple[BranchConfig, ...]  # the K branches; K >= 2 unless s_opd == 0 (experts / mixed baselines)
    n_cycles: int = 1  # N: number of (Phase I, Phase II) cycles
    s_rl: int = 3  # S_RL: Phase I steps per cycle (branch-specific GRPO); 0 = pure OPD
    s_opd: int = 2  # S_OPD: Phase II steps per cycle (mutual OPD); 0 = per-branch RLVR only
    schedule_mode: str = "fixed"  # "fixed" or "adaptive" (Phase I ends once overlap < overlap_threshold)
    overlap_threshold: float = 0.9  # adaptive mode: end Phase I when top-k overlap drops below this, in (0, 1]
    max_s_rl: int | None = None  # adaptive mode: longest Phase I (None = s_rl)
    min_s_rl: int = 1  # adaptive mode: shortest Phase I
    topology: str = "pair"  # "pair" (K=2), "hub" (hub-and-spoke), "all" (every ordered pair), "edges" (explicit)
    hub: str | None = None  # hub branch name; required for topology "hub" only
    edges: tuple[tuple[str, str], ...] = ()  # (student, teacher) pairs; required for topology "edges" only
    overlap_k: int = 16  # k of the top-k overlap metric (the paper does not report it)
    metrics_interval: int = 0  # behavioural metrics every N steps in Phase I; 0 = only in Phase II
    delta_clamp: float | None = None  # clamp delta to [-c, c] before beta; None = no clamp
    weighting: str = "token_mean"  # "token_mean" over native+cross tokens, or "per_batch" (equal sub-batch weight)
    cross_reward: bool = False  # cross rows also get their verifiable reward's GRPO advantage (Alg. 1: no)
    placement: str = "colocate"  # "colocate" (branches share GPUs), "split" (one resource pool per branch) or
    # "auto" (the recipe resolves it before the run: colocate on accelerators, split on CPU)
    merge_method: str = "average"  # "average" (paper), "weighted", "task_arithmetic" or "ties"
    merge_weights: tuple[float, ...] | None = None  # one non-negative weight per branch (sum > 0); None = uniform
    teacher_guard: bool = True  # refuse teacher log-probs that look uniform (a teacher without its weights)
    uniform_guard_tol: float = 0.05  # teacher is broken if |logp - log(1/V)| <= tol*log(V) on every token

    def __post_init__(self):
        object.__setattr__(self, "branches", tuple(self.branches))
        object.__setattr__(self, "edges", tuple(tuple(e) for e in self.edges))
        if self.merge_weights is not None:
            object.__setattr__(self, "merge_weights", tuple(self.merge_weights))
        self._check_branches()
        self._check_schedule()
        self._check_topology()
        self._check_knobs()
        self._check_merge()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CoPDConfig:
        """Build from plain containers; `branches` is a list of dicts or a mapping name -> dict."""
        kwargs = known_keys(cls, d, "copd")
        if "branches" not in kwargs:
            raise ValueError("copd: branches is required: list each branch with at least its name")
        kwargs["branches"] = _branches_from(kwargs["branches"])
        return cls(**kwargs)

    @property
    def branch_names(self) -> tuple[str, ...]:
        """Branch names in config order."""
        return tuple(b.name for b in self.branches)

    @property
    def trainable_branches(self) -> tuple[str, ...]:
        """Names of the branches that are updated (not frozen)."""
        return tuple(b.name for b in self.branches if not b.frozen)

    @property
    def pairs(self) -> list[topology.Edge]:
        """(student, teacher) edges of Phase II; empty when s_opd == 0; generated edges skip frozen students."""
        if self.s_opd == 0:
            return []
        edges = topology.pairs(self.branch_names, self.topology, hub=self.hub, edges=self.edges)
        if self.topology == "edges":
            return edges
        frozen = set(self.branch_names) - set(self.trainable_branches)
        return [(s, t) for s, t in edges if s not in frozen]

    def teachers_of(self, student: str) -> list[str]:
        """Teachers of `student` in Phase II, in edge order (empty for a frozen branch or when s_opd == 0)."""
        return topology.teachers_of(self.pairs, student)

    def schedule(self) -> PhaseSchedule:
        """A fresh phase schedule of these settings (step 0)."""
        return PhaseSchedule(
            n_cycles=self.n_cycles,
            s_rl=self.s_rl,
            s_opd=self.s_opd,
            mode=self.schedule_mode,
            overlap_threshold=self.overlap_threshold,
            max_s_rl=self.max_s_rl,
            min_s_rl=self.min_s_rl,
        )

    @property
    def total_steps(self) -> int:
        """Steps of the whole run (an upper bound under the adaptive schedule)."""
        return self.schedule().total_steps

    def estimator(self, norm_adv_by_std_in_grpo: bool = True) -> CoPDAdvantageEstimator:
        """The advantage estimator of these settings (beta_k per branch, clamp, weighting, cross reward)."""
        return CoPDAdvantageEstimator(
            beta={b.name: b.beta for b in self.branches},
            delta_clamp=self.delta_clamp,
            weighting=self.weighting,
            norm_adv_by_std_in_grpo=norm_adv_by_std_in_grpo,
            cross_reward=self.cross_reward,
        )

    def experts(self) -> CoPDConfig:
        """The experts baseline of the same budget: every branch runs GRPO alone (S_OPD = 0) for `total_steps`."""
        return dataclasses.replace(
            self, n_cycles=1, s_rl=self.total_steps, s_opd=0, schedule_mode="fixed", max_s_rl=None
        )

    def beta_of(self, name: str) -> float:
        """beta_k of branch `name`."""
        return float(self.branch(name).beta)

    def branch(self, name: str) -> BranchConfig:
        """The BranchConfig named `name`."""
        for b in self.branches:
            if b.name == name:
                return b
        raise ValueError(f"no branch named {name!r}: use one of {list(self.branch_names)}")

    def _check_branches(self) -> None:
        if not all(isinstance(b, BranchConfig) for b in self.branches):
            raise ValueError("branches must be BranchConfig objects: build with CoPDConfig.from_dict for dicts")
        names = self.branch_names
        if len(set(names)) != len(names):
            raise ValueError(f"branches: names repeat in {list(names)}: give every branch a unique name")
        if len(names) < (2 if self.s_opd > 0 else 1):
            raise ValueError(f"branches: {len(names)} given; CoPD needs >= 2 (only s_opd=0 runs with 1 branch)")
        if not self.trainable_branches:
            raise ValueError("branches: every branch is frozen; leave at least one with frozen=false")

    def _check_schedule(self) -> None:
        check_schedule(
            self.n_cycles, self.s_rl, self.s_opd, self.schedule_mode, self.overlap_threshold, self.max_s_rl,
            self.min_s_rl,
        )  # fmt: skip

    def _check_topology(self) -> None:
        _require_choice("topology", self.topology, topology.KINDS)
        if self.topology == "hub" and self.hub not in self.branch_names:
            raise ValueError(f"hub={self.hub!r} must be a branch name for topology 'hub': one of {self.branch_names}")
        if self.topology != "hub" and self.hub is not None:
            raise ValueError(f"hub={self.hub!r} is only used with topology='hub': drop it or change topology")
        if self.topology == "edges" and not self.edges:
            raise ValueError("edges is empty but topology='edges': list [student, teacher] pairs")
        if self.topology != "edges" and self.edges:
            raise ValueError("edges is only used with topology='edges': drop it or change topology")
        frozen = [b.name for b in self.branches if b.frozen]
        if self.s_opd > 0:
            topology.validate(self.branch_names, self.pairs, frozen=frozen)

    def _check_knobs(self) -> None:
        _require_int("overlap_k", self.overlap_k, 1)
        _require_int("metrics_interval", self.metrics_interval, 0)
        if self.delta_clamp is not None and not self.delta_clamp > 0:
            raise ValueError(f"delta_clamp={self.delta_clamp} must be > 0, or null for no clamp")
        _require_choice("weighting", self.weighting, WEIGHTINGS)
        _require_choice("placement", self.placement, PLACEMENTS)
        for name in ("cross_reward", "teacher_guard"):
            _require_bool(name, getattr(self, name))
        if not 0 < self.uniform_guard_tol < 1:
            raise ValueError(f"uniform_guard_tol={self.uniform_guard_tol} must be in (0, 1), e.g. 0.05")

    def _check_merge(self) -> None:
        _require_choice("merge_method", self.merge_method, MERGE_METHODS)
        weights = self.merge_weights
        if self.merge_method == "weighted" and weights is None:
            raise ValueError("merge_method='weighted' needs merge_weights: one weight per branch")
        if weights is None:
            return
        if len(weights) != len(self.branches):
            raise ValueError(f"merge_weights has {len(weights)} entries for K={len(self.branches)} branches: one each")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"merge_weights={list(weights)} must be >= 0 with a positive sum")


def known_keys(cls: type, d: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`d` as a dict, or ValueError naming its keys that are not fields of the dataclass `cls`."""
    if not isinstance(d, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(d).__name__}")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; valid keys are {valid}")
    return dict(d)


def _branches_from(raw: Any) -> tuple[BranchConfig, ...]:
    if isinstance(raw, Mapping):
        items = []
        for name, fields in raw.items():
            if "name" in fields and fields["name"] != name:
                raise ValueError(f"branches.{name}: name={fields['name']!r} differs from its key; drop one")
            items.append({**fields, "name": name})
        raw = items
    return tuple(b if isinstance(b, BranchConfig) else BranchConfig.from_dict(b) for b in raw)


def _as_str_tuple(name: str, value: Any) -> tuple[str, ...]:
    files = (value,) if isinstance(value, str) else tuple(value or ())
    if not all(isinstance(f, str) for f in files):
        raise ValueError(f"{name}={value!r} must be a path or a list of paths")
    return files


def _require_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


def _require_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be true or false")


def _require_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is unknown: use one of {list(choices)}")
