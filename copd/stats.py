"""Confidence intervals and ordering verdicts for comparing methods over seeds (``recipe.copd.compare``).

Pure Python (no numpy, scipy, torch): scores are accuracies, one per seed, each a proportion of ``n`` held-out
problems. With two or more seeds the interval is Student's t over the seeds (the seed is the unit of replication:
warm start, data order and sampling all change with it); with one seed only the test set's sampling noise can be
estimated, so the interval is the binomial normal approximation ``1.96 * sqrt(p (1 - p) / n)``.
Orderings ("A beats B") are judged on paired per-seed differences ``A_s - B_s``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z_975 = 1.959963984540054  # the standard normal's 97.5% quantile
#: Student t's 97.5% quantile for 1..30 degrees of freedom (two-sided 95%)
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
HOLDS, FAILS, NOISE = "holds", "does not hold", "within noise"


@dataclass(frozen=True)
class Estimate:
    mean: float
    half: float  # half-width of the 95% interval: [mean - half, mean + half]
    n_seeds: int

    @property
    def lo(self) -> float:
        return self.mean - self.half

    @property
    def hi(self) -> float:
        return self.mean + self.half


def t_975(df: int) -> float:
    """Student t's 97.5% quantile with ``df`` >= 1 degrees of freedom (table to 30, then a series in 1/df)."""
    if df < 1:
        raise ValueError(f"t_975 needs df >= 1, got {df}")
    if df <= len(_T_975):
        return _T_975[df - 1]
    z = Z_975  # Cornish-Fisher expansion of t in powers of 1/df: error < 1e-4 for df > 30
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def binomial_var(p: float, n: int) -> float:
    """Sampling variance of a proportion ``p`` measured on ``n`` problems: p (1 - p) / n."""
    if n < 1:
        raise ValueError(f"binomial_var needs n >= 1 problems, got {n}")
    return p * (1.0 - p) / n


def mean_var(ps: Sequence[float], ns: Sequence[int]) -> float:
    """Sampling variance of the plain mean of independent proportions ``ps`` (each over ``ns`` problems)."""
    return sum(binomial_var(p, n) for p, n in zip(ps, ns, strict=True)) / len(ps) ** 2


def seed_ci(values: Sequence[float], var_one_seed: float | None = None) -> Estimate:
    """Mean of per-seed ``values`` and its 95% interval: t over seeds for >= 2 seeds; for one seed
    ``Z_975 * sqrt(var_one_seed)`` (the test set's sampling variance of that one value; required then)."""
    n = len(values)
    if n == 0:
        raise ValueError("seed_ci needs at least one value")
    mean = sum(values) / n
    if n == 1:
        if var_one_seed is None:
            raise ValueError("seed_ci with one seed needs var_one_seed (the binomial variance of the score)")
        return Estimate(mean, Z_975 * math.sqrt(var_one_seed), 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Estimate(mean, t_975(n - 1) * sd / math.sqrt(n), n)


def paired_diff(
    a: Sequence[float], b: Sequence[float], var_a: float | None = None, var_b: float | None = None
) -> Estimate:
    """``A - B`` on paired per-seed scores: t over the seeds' differences for >= 2 seeds; for one seed the
    two-proportion normal interval ``Z_975 * sqrt(var_a + var_b)`` (``var_*``: each score's sampling variance)."""
    if len(a) != len(b):
        raise ValueError(f"paired_diff needs one score per seed on both sides, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    if len(diffs) == 1:
        if var_a is None or var_b is None:
            raise ValueError("paired_diff with one seed needs var_a and var_b (the binomial variances)")
        return seed_ci(diffs, var_a + var_b)
    return seed_ci(diffs)


def verdict(diff: Estimate) -> str:
    """``holds`` when the 95% interval of ``A - B`` lies above 0, ``does not hold`` below 0, else ``within noise``."""
    if diff.lo > 0:
        return HOLDS
    if diff.hi < 0:
        return FAILS
    return NOISE
