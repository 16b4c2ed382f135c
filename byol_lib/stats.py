"""Statistics of an ablation over seeds: mean ± std, the difference of two means with a paired or a Welch t
interval, bootstrap intervals, resolution (minimum detectable effect, seeds needed for a half-width) and rank
agreement (Spearman, Kendall tau-b). Pure numpy and ``math``; the Student-t quantile comes from the regularised
incomplete beta function (a continued fraction), so no scipy is needed.

Paired first: a variant and the baseline run with the same seed share their initialisation, data order and
augmentation draws (each view of a sample comes from a generator seeded by seed, step, image and view) and are
evaluated on the same validation images, so much of the seed-to-seed noise is common to both and cancels in the
per-seed difference (common random numbers). The paired interval uses only the spread of those differences; it stays
valid when a variant changes the random stream (then it is just no narrower). Welch's interval is for unpaired
cases: arms that do not share their seeds (a baseline run with more seeds, or pooled from several grids); it assumes
neither equal variances nor pairing.
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


def _two_sided(confidence: float, df: float) -> float:
    """t_{(1 + confidence) / 2, df}: the multiplier of a two-sided ``confidence`` interval."""
    return t_quantile(0.5 + confidence / 2.0, df)


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) with its t interval, Welch or paired (NaN when it has too few values)."""

    delta: float
    low: float
    high: float
    df: float
    se: float

    @property
    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)

    @property
    def half(self) -> float:
        """The interval's half-width (NaN without an interval)."""
        return (self.high - self.low) / 2.0


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
    half = _two_sided(confidence, df) * se
    return Difference(delta, delta - half, delta + half, df, se)


def paired_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Difference:
    """The paired t interval for mean(a - b), a[i] and b[i] from the same seed: d_i = a_i - b_i,
    se = sd(d) / sqrt(n), df = n - 1, mean(d) ± t_{(1 + confidence) / 2, n - 1} se (NaN below two pairs)."""
    if len(a) != len(b):
        raise ValueError(f"a and b differ in length ({len(a)} vs {len(b)}); pair them by seed")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    delta, sd = mean_std(d)
    if d.size < 2:
        return Difference(delta, math.nan, math.nan, math.nan, math.nan)
    se = sd / math.sqrt(d.size)
    half = _two_sided(confidence, d.size - 1) * se if se else 0.0
    return Difference(delta, delta - half, delta + half, d.size - 1, se)


_CHUNK = 1 << 22  # resampled image counts held at once (replicates x images)


def _resample_counts(rng: np.random.Generator, n: int, reps: int) -> np.ndarray:
    """How often each of ``n`` items is drawn in each of ``reps`` resamples of size ``n``: [reps, n], each row
    Multinomial(n, 1/n)."""
    draws = rng.integers(0, n, size=(reps, n)) + n * np.arange(reps)[:, None]
    return np.bincount(draws.ravel(), minlength=reps * n).reshape(reps, n)


def _percentiles(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    low, high = np.quantile(replicates, [0.5 - confidence / 2.0, 0.5 + confidence / 2.0])
    return float(low), float(high)


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, reps: int = 2000, confidence: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """Two-stage bootstrap of the accuracy difference in points, 100 mean(correct_a - correct_b), with its
    percentile interval: (mean, low, high).

    ``correct_a`` / ``correct_b``: [S seeds, N images] correctness (bool or 0/1), row s of both from seed s, the
    same images in the same order. A replicate draws seed counts u ~ Multinomial(S, 1/S) (the same seeds for both
    arms: pairing) and image counts w ~ Multinomial(N, 1/N) (the same images for both arms and every seed: the
    validation set is shared); its statistic is 100 u·(D w) / (S N) with D = correct_a - correct_b. With S = 1
    it is a bootstrap over images alone.
    """
    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(f"need two non-empty [seeds, images] arrays of one shape; got {a.shape} and {b.shape}")
    seeds, images = a.shape
    diff = a - b
    rng = np.random.default_rng(seed)
    replicates = np.empty(reps)
    chunk = max(1, _CHUNK // images)
    for start in range(0, reps, chunk):
        size = min(chunk, reps - start)
        per_seed = _resample_counts(rng, images, size) @ diff.T  # [size, S]: D w of each replicate
        replicates[start:start + size] = (_resample_counts(rng, seeds, size) * per_seed).sum(axis=1)
    replicates *= 100.0 / (seeds * images)
    return (100.0 * float(diff.mean()), *_percentiles(replicates, confidence))


def seed_bootstrap(a: Sequence[float], b: Sequence[float], reps: int = 2000, confidence: float = 0.95,
                   seed: int = 0) -> tuple[float, float, float]:
    """Bootstrap of mean(a - b) over seed pairs, in the units of a and b, with its percentile interval:
    (mean, low, high). A replicate draws u ~ Multinomial(S, 1/S); its statistic is u·d / S, d_i = a_i - b_i."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"need two non-empty sequences of one length, paired by seed; got {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    replicates = _resample_counts(np.random.default_rng(seed), d.size, reps) @ d / d.size
    return (float(d.mean()), *_percentiles(replicates, confidence))


def min_detectable_effect(sd: float, n: int, confidence: float = 0.95, power: float = 0.8) -> float:
    """(t_{1 - alpha/2, n-1} + t_{power, n-1}) sd / sqrt(n), alpha = 1 - confidence: the smallest true paired
    difference that a paired t test at ``confidence`` detects with probability ``power`` (NaN below n = 2)."""
    if n < 2:
        return math.nan
    return (_two_sided(confidence, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)


def seeds_needed(sd: float, halfwidth: float, confidence: float = 0.95, max_n: int = 1000) -> int | None:
    """The smallest n >= 2 with t_{(1 + confidence) / 2, n-1} sd / sqrt(n) <= halfwidth (None above ``max_n``).

    The search starts at the normal bound n >= (z sd / halfwidth)² (t_{n-1} > z), so it takes a few steps.
    """
    if not (halfwidth > 0 and 0 <= sd < math.inf):
        raise ValueError(f"need halfwidth > 0 and a finite sd >= 0; got halfwidth={halfwidth}, sd={sd}")
    z = _two_sided(confidence, 1e8)
    n = max(2, math.floor((z * sd / halfwidth) ** 2))
    while n <= max_n:
        if _two_sided(confidence, n - 1) * sd / math.sqrt(n) <= halfwidth:
            return n
        n += 1
    return None


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
