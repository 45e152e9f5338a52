"""copd.stats: intervals over seeds and ordering verdicts, on hand-computed numbers."""

import math

import pytest

from copd.stats import FAILS, HOLDS, NOISE, Z_975, Estimate, mean_var, paired_diff, seed_ci, t_975, verdict


def test_t_quantile_table_and_series():
    assert t_975(1) == 12.706 and t_975(2) == 4.303 and t_975(30) == 2.042
    # beyond the table the series continues smoothly: t(40) = 2.021, t(120) = 1.980 (standard tables)
    assert t_975(40) == pytest.approx(2.021, abs=1e-3)
    assert t_975(120) == pytest.approx(1.980, abs=1e-3)
    assert t_975(31) < t_975(30)
    with pytest.raises(ValueError):
        t_975(0)


def test_seed_ci_three_seeds_is_student_t():
    # values 0.5, 0.6, 0.7: mean 0.6, sd 0.1, half = t(2) * 0.1 / sqrt(3) = 4.303 * 0.057735 = 0.24843
    est = seed_ci([0.5, 0.6, 0.7])
    assert est.mean == pytest.approx(0.6)
    assert est.half == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert est.n_seeds == 3 and est.lo == pytest.approx(0.6 - est.half)


def test_seed_ci_one_seed_is_binomial():
    # p = 0.5 on 1000 problems: half = 1.96 * sqrt(0.25 / 1000) = 0.03099
    est = seed_ci([0.5], 0.5 * 0.5 / 1000)
    assert est.half == pytest.approx(Z_975 * math.sqrt(0.00025))
    assert est.half == pytest.approx(0.031, abs=1e-3)
    with pytest.raises(ValueError, match="var_one_seed"):
        seed_ci([0.5])
    with pytest.raises(ValueError):
        seed_ci([])


def test_mean_var_of_two_skills():
    # mean of p=0.5 (n=100) and p=0.2 (n=100): (0.0025 + 0.0016) / 4
    assert mean_var([0.5, 0.2], [100, 100]) == pytest.approx((0.0025 + 0.0016) / 4)


def test_paired_diff_cancels_the_seed_effect():
    # B varies a lot across seeds, A = B + 0.05 always: the paired difference has zero spread, so it holds
    b = [0.3, 0.6, 0.45]
    a = [x + 0.05 for x in b]
    d = paired_diff(a, b)
    assert d.mean == pytest.approx(0.05) and d.half == pytest.approx(0.0, abs=1e-12)
    assert verdict(d) == HOLDS
    # unpaired intervals of A and B overlap widely
    assert seed_ci(a).lo < seed_ci(b).hi


def test_paired_diff_one_seed_two_proportions():
    # 0.60 vs 0.50 on 1000 each: half = 1.96 * sqrt(0.24/1000 + 0.25/1000) = 1.96 * 0.022136 = 0.04339
    d = paired_diff([0.6], [0.5], 0.24 / 1000, 0.25 / 1000)
    assert d.mean == pytest.approx(0.1)
    assert d.half == pytest.approx(Z_975 * math.sqrt(0.49 / 1000))
    assert verdict(d) == HOLDS
    assert verdict(paired_diff([0.5], [0.6], 0.25 / 1000, 0.24 / 1000)) == FAILS
    assert verdict(paired_diff([0.52], [0.5], 0.25 / 1000, 0.25 / 1000)) == NOISE  # 0.02 < 0.044
    with pytest.raises(ValueError, match="var_a"):
        paired_diff([0.6], [0.5])
    with pytest.raises(ValueError, match="one score per seed"):
        paired_diff([0.6, 0.7], [0.5])


def test_verdict_edges():
    assert verdict(Estimate(0.1, 0.05, 3)) == HOLDS
    assert verdict(Estimate(-0.1, 0.05, 3)) == FAILS
    assert verdict(Estimate(0.1, 0.1, 3)) == NOISE  # the interval touches 0
    assert verdict(Estimate(0.0, 0.0, 3)) == NOISE
