"""Statistics of an ablation over seeds: mean ± std, the difference of two means with a Welch t interval, and
rank agreement (Spearman, Kendall tau-b). Pure numpy and ``math``; the Student-t quantile comes from the
regularised incomplete beta function (a continued fraction), so no scipy is needed.

Why Welch and not a paired interval: a variant and the baseline need not share their seeds (the baseline is
often run with more seeds, or pooled from several grids), their spreads differ (a collapsing variant varies far
more), and the same seed does not give the two runs the same random stream once a variant changes the
augmentations. Welch's interval assumes neither equal variances nor pairing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_EPS, _TINY = 1e-15, 1e-300


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for fewer than two values, both NaN for none)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz), converging for x < (a + 1) / (a + b + 2)."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    result = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            result *= c * d
        if abs(c * d - 1.0) < _EPS:
            return result
    raise ArithmeticError(f"incomplete beta: no convergence for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"need a, b > 0 and 0 <= x <= 1; got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` (> 0, not necessarily whole) degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on ``t_cdf``)."""
    if not (0.0 < p < 1.0 and df > 0):
        raise ValueError(f"need 0 < p < 1 and df > 0; got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = 0.5 * (low + high)
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low <= 1e-13 * max(1.0, high):
            break
    return 0.5 * (low + high)


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) with its Welch interval (NaN when either side has fewer than two values)."""

    delta: float
    low: float
    high: float
    df: float
    se: float

    @property
    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Difference:
    """Welch's t interval for mean(a) - mean(b): se = sqrt(s_a²/n_a + s_b²/n_b), Welch-Satterthwaite df."""
    (mean_a, sd_a), (mean_b, sd_b) = mean_std(a), mean_std(b)
    delta = mean_a - mean_b
    if len(a) < 2 or len(b) < 2:
        return Difference(delta, math.nan, math.nan, math.nan, math.nan)
    va, vb = sd_a**2 / len(a), sd_b**2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return Difference(delta, delta, delta, math.nan, 0.0)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_quantile(0.5 + confidence / 2.0, df) * se
    return Difference(delta, delta - half, delta + half, df, se)


def ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    x = np.asarray(values, dtype=float)
    order = np.argsort(x, kind="stable")
    result = np.empty(len(x))
    start = 0
    while start < len(x):
        stop = start
        while stop + 1 < len(x) and x[order[stop + 1]] == x[order[start]]:
            stop += 1
        result[order[start:stop + 1]] = (start + stop) / 2.0 + 1.0
        start = stop + 1
    return result


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's r of the average ranks; NaN below 2 points or for a constant)."""
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length ({len(x)} vs {len(y)})")
    if len(x) < 2:
        return math.nan
    rx, ry = ranks(x) - (len(x) + 1) / 2.0, ranks(y) - (len(y) + 1) / 2.0
    norm = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum()) / norm if norm else math.nan


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((n0 - ties_x)(n0 - ties_y)) over all pairs."""
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length ({len(x)} vs {len(y)})")
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    i, j = np.triu_indices(len(xa), k=1)
    sx, sy = np.sign(xa[i] - xa[j]), np.sign(ya[i] - ya[j])
    norm = math.sqrt(float(np.count_nonzero(sx)) * float(np.count_nonzero(sy)))
    return float((sx * sy).sum()) / norm if norm else math.nan
