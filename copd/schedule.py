"""The CoPD phase schedule: N cycles of Phase I (S_RL steps of branch GRPO) then Phase II (S_OPD steps).

"fixed" runs exactly S_RL and S_OPD steps per cycle. "adaptive" ends a Phase I early once the measured top-k
overlap falls below `overlap_threshold` (after at least `min_s_rl` steps; at most `max_s_rl` steps), so the
branches are pulled back together before they drift out of the absorbable range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

MODES = ("fixed", "adaptive")
PAPER_RATIO = 1.5  # S_RL : S_OPD = 1.5 : 1 gave the best result in the paper (Fig. 4c)


class Phase(str, Enum):
    RL = "rl"  # Phase I: branch-specific GRPO on own data
    OPD = "opd"  # Phase II: mutual on-policy distillation (+ native GRPO)


@dataclass(frozen=True)
class PhasePosition:
    global_step: int  # 0-based; steps completed so far (= index of the step about to run)
    cycle: int  # 0-based cycle index
    phase: Phase  # phase of the step about to run
    step_in_phase: int  # 0-based step index inside the current phase


class PhaseSpan(NamedTuple):
    cycle: int  # 0-based cycle
    phase: Phase  # which phase
    start: int  # first global step of the phase
    end: int  # one past its last global step


class PhaseSchedule:
    """Tracks where training is in the CoPD cycle; `advance()` after each step, `current()` before it."""

    def __init__(
        self,
        n_cycles: int,
        s_rl: int,
        s_opd: int,
        mode: str = "fixed",
        overlap_threshold: float = 0.9,
        max_s_rl: int | None = None,
        min_s_rl: int = 1,
    ):
        check_schedule(n_cycles, s_rl, s_opd, mode, overlap_threshold, max_s_rl, min_s_rl)
        self.n_cycles, self.s_rl, self.s_opd, self.mode = n_cycles, s_rl, s_opd, mode
        self.overlap_threshold, self.min_s_rl = overlap_threshold, min_s_rl
        self.max_s_rl = s_rl if max_s_rl is None else max_s_rl
        self._plan = [(p, n) for p, n in ((Phase.RL, self.max_s_rl), (Phase.OPD, s_opd)) if n > 0]
        self._global_step, self._cycle, self._phase_idx, self._step_in_phase = 0, 0, 0, 0
        self._history: list[PhaseSpan] = []

    @property
    def done(self) -> bool:
        """True once the last step of the last cycle has been advanced over."""
        return self._cycle >= self.n_cycles

    @property
    def total_steps(self) -> int:
        """Steps of the whole run: exact in "fixed" mode, an upper bound in "adaptive" mode."""
        return self.n_cycles * sum(n for _, n in self._plan)

    @property
    def remaining_steps(self) -> int:
        """Steps left: exact in "fixed" mode, an upper bound in "adaptive" mode."""
        if self.done:
            return 0
        cycle_len = sum(n for _, n in self._plan)
        rest_of_cycle = sum(n for _, n in self._plan[self._phase_idx :]) - self._step_in_phase
        return rest_of_cycle + (self.n_cycles - self._cycle - 1) * cycle_len

    def current(self) -> PhasePosition:
        """Position of the step about to run."""
        if self.done:
            raise RuntimeError(f"the schedule is done after {self._global_step} steps: check .done before current()")
        phase = self._plan[self._phase_idx][0]
        return PhasePosition(self._global_step, self._cycle, phase, self._step_in_phase)

    def probe_due(self, metrics_interval: int) -> bool:
        """Whether the step about to run measures the branches' top-k overlap (the behavioural probe).

        Always in Phase II (the paper's O_k on the student's trajectories) and in an adaptive Phase I (its end
        depends on the overlap); in a fixed Phase I every `metrics_interval` steps (0: never).
        """
        position = self.current()
        if position.phase is Phase.OPD or self.mode == "adaptive":
            return True
        return metrics_interval > 0 and position.step_in_phase % metrics_interval == 0

    def advance(self, overlap: float | None = None) -> PhasePosition:
        """Record one finished step (with its measured top-k overlap, if any) and return the new position.

        When the run has just finished, the returned position has global_step == steps run and the last phase.
        """
        position = self.current()
        phase, length = self._plan[self._phase_idx]
        self._global_step += 1
        self._step_in_phase += 1
        if self._step_in_phase >= length or self._ends_early(phase, overlap):
            start = self._global_step - self._step_in_phase
            self._history.append(PhaseSpan(self._cycle, phase, start, self._global_step))
            self._step_in_phase = 0
            self._phase_idx += 1
            if self._phase_idx == len(self._plan):
                self._phase_idx, self._cycle = 0, self._cycle + 1
        if self.done:
            return PhasePosition(self._global_step, position.cycle, position.phase, position.step_in_phase + 1)
        return self.current()

    def position_at(self, global_step: int) -> PhasePosition:
        """Position of `global_step` in the fixed plan (pure; "fixed" mode only)."""
        if self.mode != "fixed":
            raise ValueError("position_at needs mode='fixed': adaptive phase lengths depend on measured overlap")
        if not 0 <= global_step < self.total_steps:
            raise ValueError(f"global_step={global_step} is outside [0, {self.total_steps})")
        cycle, rest = divmod(global_step, sum(n for _, n in self._plan))
        for phase, length in self._plan:
            if rest < length:
                return PhasePosition(global_step, cycle, phase, rest)
            rest -= length
        raise AssertionError("unreachable: rest < cycle length")

    def phases(self) -> list[PhaseSpan]:
        """(cycle, phase, start, end) spans: the whole plan when fixed, what actually ran so far when adaptive."""
        if self.mode == "fixed":
            spans, start = [], 0
            for cycle in range(self.n_cycles):
                for phase, length in self._plan:
                    spans.append(PhaseSpan(cycle, phase, start, start + length))
                    start += length
            return spans
        spans = list(self._history)
        if self._step_in_phase > 0:
            start = self._global_step - self._step_in_phase
            spans.append(PhaseSpan(self._cycle, self._plan[self._phase_idx][0], start, self._global_step))
        return spans

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; `load_state_dict` restores it exactly (also mid-phase)."""
        return {
            "config": self._config(),
            "global_step": self._global_step,
            "cycle": self._cycle,
            "phase_idx": self._phase_idx,
            "step_in_phase": self._step_in_phase,
            "history": [[s.cycle, s.phase.value, s.start, s.end] for s in self._history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`; the schedule's arguments must equal those it was saved with."""
        if state["config"] != self._config():
            raise ValueError(
                f"checkpointed schedule {state['config']} differs from this one {self._config()}: "
                "resume with the same n_cycles/s_rl/s_opd/mode settings"
            )
        self._global_step, self._cycle = int(state["global_step"]), int(state["cycle"])
        self._phase_idx, self._step_in_phase = int(state["phase_idx"]), int(state["step_in_phase"])
        self._history = [PhaseSpan(c, Phase(p), s, e) for c, p, s, e in state["history"]]

    def _ends_early(self, phase: Phase, overlap: float | None) -> bool:
        """Adaptive Phase I: stop once overlap < threshold after at least min_s_rl steps."""
        if self.mode != "adaptive" or phase is not Phase.RL or overlap is None:
            return False
        return overlap < self.overlap_threshold and self._step_in_phase >= self.min_s_rl

    def _config(self) -> dict[str, Any]:
        return {
            "n_cycles": self.n_cycles,
            "s_rl": self.s_rl,
            "s_opd": self.s_opd,
            "mode": self.mode,
            "overlap_threshold": self.overlap_threshold,
            "max_s_rl": self.max_s_rl,
            "min_s_rl": self.min_s_rl,
        }


def default_steps(total_steps: int, ratio: float = PAPER_RATIO, n_cycles: int = 1) -> tuple[int, int]:
    """(s_rl, s_opd) per cycle with S_RL : S_OPD ~= ratio (the paper's best is 1.5 : 1) within a step budget.

    Each cycle gets floor(total_steps / n_cycles) steps split by ratio (rounded half up, both >= 1); leftover
    steps are dropped, so n_cycles * (s_rl + s_opd) <= total_steps.
    """
    if n_cycles < 1 or ratio <= 0:
        raise ValueError(f"need n_cycles >= 1 and ratio > 0, got n_cycles={n_cycles}, ratio={ratio}")
    per_cycle = total_steps // n_cycles
    if per_cycle < 2:
        raise ValueError(f"total_steps={total_steps} gives {per_cycle} step(s) per cycle: need >= 2 * n_cycles")
    s_rl = min(max(math.floor(per_cycle * ratio / (1 + ratio) + 0.5), 1), per_cycle - 1)
    return s_rl, per_cycle - s_rl


def check_schedule(
    n_cycles: int,
    s_rl: int,
    s_opd: int,
    mode: str = "fixed",
    overlap_threshold: float = 0.9,
    max_s_rl: int | None = None,
    min_s_rl: int = 1,
) -> None:
    """The one validator of a schedule's arguments (`CoPDConfig` and `PhaseSchedule` both call it).

    Raises ValueError naming the field and the fix.
    """
    _require_int("n_cycles", n_cycles, 1)
    _require_int("s_rl", s_rl, 0)
    _require_int("s_opd", s_opd, 0)
    if s_rl == 0 and s_opd == 0:
        raise ValueError("s_rl and s_opd are both 0: set at least one of them >= 1")
    if mode not in MODES:
        raise ValueError(f"schedule_mode={mode!r} is unknown: use one of {list(MODES)}")
    if isinstance(overlap_threshold, bool) or not isinstance(overlap_threshold, int | float):
        raise ValueError(f"overlap_threshold={overlap_threshold!r} must be a number in (0, 1]")
    if not 0 < overlap_threshold <= 1:
        raise ValueError(f"overlap_threshold={overlap_threshold} must be in (0, 1]")
    _require_int("min_s_rl", min_s_rl, 1)
    if max_s_rl is not None:
        _require_int("max_s_rl", max_s_rl, 1)
        if mode != "adaptive":
            raise ValueError("max_s_rl only applies to schedule_mode='adaptive': drop it or switch the mode")
    longest = s_rl if max_s_rl is None else max_s_rl
    if mode == "adaptive" and 0 < longest < min_s_rl:
        raise ValueError(f"min_s_rl={min_s_rl} exceeds the longest Phase I ({longest}): lower min_s_rl")


def _require_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
