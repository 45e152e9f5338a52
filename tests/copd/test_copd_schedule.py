"""Phase schedule: counts, positions, adaptive early stop, exact state round-trip."""

import json

import pytest

from copd.schedule import Phase, PhasePosition, PhaseSchedule, PhaseSpan, default_steps

RL, OPD = Phase.RL, Phase.OPD


def _run(schedule, overlaps=None):
    """Advance to the end; return the positions of the steps that ran."""
    ran = []
    while not schedule.done:
        ran.append(schedule.current())
        schedule.advance(None if overlaps is None else overlaps.pop(0))
    return ran


def test_fixed_counts_and_positions():
    # 2 cycles x (3 RL + 2 OPD) = 10 steps: RL 0-2, OPD 3-4, RL 5-7, OPD 8-9
    sched = PhaseSchedule(n_cycles=2, s_rl=3, s_opd=2)
    assert sched.total_steps == 10 and sched.remaining_steps == 10
    ran = _run(sched)
    assert [p.phase for p in ran] == [RL] * 3 + [OPD] * 2 + [RL] * 3 + [OPD] * 2
    assert [p.cycle for p in ran] == [0] * 5 + [1] * 5
    assert [p.step_in_phase for p in ran] == [0, 1, 2, 0, 1, 0, 1, 2, 0, 1]
    assert [p.global_step for p in ran] == list(range(10))
    assert ran == [sched.position_at(g) for g in range(10)]
    assert sched.done and sched.remaining_steps == 0
    assert sched.phases() == [
        PhaseSpan(0, RL, 0, 3),
        PhaseSpan(0, OPD, 3, 5),
        PhaseSpan(1, RL, 5, 8),
        PhaseSpan(1, OPD, 8, 10),
    ]
    with pytest.raises(RuntimeError, match="done"):
        sched.current()


def test_remaining_steps_mid_phase():
    sched = PhaseSchedule(n_cycles=2, s_rl=3, s_opd=2)
    for _ in range(4):
        sched.advance()
    assert sched.current() == PhasePosition(global_step=4, cycle=0, phase=OPD, step_in_phase=1)
    assert sched.remaining_steps == 6


@pytest.mark.parametrize(("s_rl", "s_opd", "phases"), [(2, 0, [RL, RL]), (0, 3, [OPD, OPD, OPD])])
def test_one_phase_schedules(s_rl, s_opd, phases):
    # s_opd=0: per-branch RLVR ("experts"); s_rl=0: pure OPD (static OPD baselines)
    sched = PhaseSchedule(n_cycles=2, s_rl=s_rl, s_opd=s_opd)
    ran = _run(sched)
    assert [p.phase for p in ran] == phases * 2
    assert sched.total_steps == 2 * len(phases)


def test_state_round_trips_mid_phase_through_json():
    sched = PhaseSchedule(n_cycles=3, s_rl=3, s_opd=2, mode="adaptive", max_s_rl=4, min_s_rl=2)
    for overlap in [0.95, 0.8, 0.99]:  # RL ends after 2 steps (0.8 < 0.9), then 1 OPD step
        sched.advance(overlap)
    state = json.loads(json.dumps(sched.state_dict()))
    resumed = PhaseSchedule(n_cycles=3, s_rl=3, s_opd=2, mode="adaptive", max_s_rl=4, min_s_rl=2)
    resumed.load_state_dict(state)
    assert resumed.current() == sched.current() == PhasePosition(3, 0, OPD, 1)
    assert resumed.phases() == sched.phases()
    overlaps = [0.9] * 20
    assert _run(resumed, list(overlaps)) == _run(sched, list(overlaps))
    assert resumed.phases() == sched.phases()


def test_load_state_rejects_other_settings():
    state = PhaseSchedule(n_cycles=2, s_rl=3, s_opd=2).state_dict()
    with pytest.raises(ValueError, match="n_cycles"):
        PhaseSchedule(n_cycles=3, s_rl=3, s_opd=2).load_state_dict(state)


def test_adaptive_ends_phase_one_early_on_low_overlap():
    # max 4 RL steps, min 2, threshold 0.9; cycle 0 overlaps after RL steps: 0.5 (too early), 0.85 -> stop at 2
    # cycle 1: overlap stays high -> RL runs its 4 steps; OPD overlaps are ignored
    sched = PhaseSchedule(n_cycles=2, s_rl=4, s_opd=2, mode="adaptive", min_s_rl=2)
    assert sched.total_steps == 12  # upper bound
    ran = _run(sched, [0.5, 0.85, 0.1, 0.1, 0.99, 0.99, 0.99, 0.99, 0.1, 0.1])
    assert [p.phase for p in ran] == [RL, RL, OPD, OPD, RL, RL, RL, RL, OPD, OPD]
    assert sched.phases() == [
        PhaseSpan(0, RL, 0, 2),
        PhaseSpan(0, OPD, 2, 4),
        PhaseSpan(1, RL, 4, 8),
        PhaseSpan(1, OPD, 8, 10),
    ]


def test_adaptive_phases_show_the_running_phase_and_no_overlap_means_no_stop():
    sched = PhaseSchedule(n_cycles=1, s_rl=3, s_opd=1, mode="adaptive")
    sched.advance(None)
    assert sched.phases() == [PhaseSpan(0, RL, 0, 1)]
    sched.advance(None)
    assert sched.current() == PhasePosition(2, 0, RL, 2)
    with pytest.raises(ValueError, match="fixed"):
        sched.position_at(0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(n_cycles=0, s_rl=1, s_opd=1), "n_cycles"),
        (dict(n_cycles=1, s_rl=0, s_opd=0), "s_rl"),
        (dict(n_cycles=1, s_rl=1, s_opd=1, mode="cosine"), "mode"),
        (dict(n_cycles=1, s_rl=1, s_opd=1, overlap_threshold=0.0), "overlap_threshold"),
        (dict(n_cycles=1, s_rl=1, s_opd=1, max_s_rl=3), "max_s_rl"),
        (dict(n_cycles=1, s_rl=2, s_opd=1, mode="adaptive", min_s_rl=3), "min_s_rl"),
    ],
)
def test_bad_arguments_raise(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PhaseSchedule(**kwargs)


def test_default_steps_uses_the_paper_ratio():
    # 10 steps / 2 cycles = 5 per cycle; 5 * 1.5 / 2.5 = 3 RL, 2 OPD
    assert default_steps(10, n_cycles=2) == (3, 2)
    assert default_steps(25) == (15, 10)
    assert default_steps(2) == (1, 1)
    assert default_steps(11, ratio=1.0, n_cycles=2) == (3, 2)  # 5 per cycle, 2.5 rounds half up; 1 step dropped
    with pytest.raises(ValueError, match="per cycle"):
        default_steps(3, n_cycles=2)
