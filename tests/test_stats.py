"""Statistics against closed forms, printed t tables, numpy, numeric integration and a coverage simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from byol_lib import stats

# Student-t quantiles as printed in tables (and by scipy.stats.t.ppf)
T_TABLE = [(0.975, 3, 3.182446305284263), (0.975, 4, 2.7764451051977987), (0.975, 5, 2.5705818366147395),
           (0.975, 10, 2.2281388519649385), (0.975, 30, 2.0422724563012373), (0.95, 5, 2.015048372669157),
           (0.995, 10, 3.169272672616951), (0.9, 20, 1.3253407069850462)]


@pytest.mark.parametrize(("p", "df", "expected"), T_TABLE)
def test_t_quantiles_match_the_table(p: float, df: int, expected: float) -> None:
    assert stats.t_quantile(p, df) == pytest.approx(expected, rel=1e-9)
    assert stats.t_quantile(1 - p, df) == pytest.approx(-expected, rel=1e-9)


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.999])
def test_t_quantiles_match_closed_forms_for_one_and_two_degrees_of_freedom(p: float) -> None:
    assert stats.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)
    assert stats.t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)
    assert stats.t_quantile(p, 1e7) == pytest.approx(stats.t_quantile(p, 1e8), rel=1e-6)  # the normal limit
    assert stats.t_quantile(0.975, 1e7) == pytest.approx(1.959963984540054, rel=1e-6)


@pytest.mark.parametrize("df", [2.5, 7.3])
def test_t_cdf_matches_numeric_integration_for_fractional_df(df: float) -> None:
    grid = np.linspace(-400.0, 1.7, 2_000_001)
    pdf = np.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi) \
        * (1 + grid**2 / df) ** (-(df + 1) / 2)
    integral = float(np.sum((pdf[1:] + pdf[:-1]) / 2 * np.diff(grid)))
    assert stats.t_cdf(1.7, df) == pytest.approx(integral, abs=1e-5)


def test_incomplete_beta_closed_forms() -> None:
    for x in (0.0, 0.1, 0.5, 0.93, 1.0):
        assert stats.betainc(1, 1, x) == pytest.approx(x, abs=1e-14)
        assert stats.betainc(3.5, 1, x) == pytest.approx(x**3.5, abs=1e-13)
        assert stats.betainc(1, 2.5, x) == pytest.approx(1 - (1 - x) ** 2.5, abs=1e-13)
    with pytest.raises(ValueError, match="0 <= x <= 1"):
        stats.betainc(1, 1, 1.5)


def test_mean_std_and_welch_interval_match_numpy() -> None:
    a, b = [61.0, 63.5, 62.0, 64.25], [58.0, 57.5, 60.0]
    assert stats.mean_std(a) == pytest.approx((np.mean(a), np.std(a, ddof=1)))
    assert math.isnan(stats.mean_std([1.0])[1]) and all(math.isnan(v) for v in stats.mean_std([]))
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    diff = stats.welch_interval(a, b)
    assert (diff.delta, diff.se, diff.df) == pytest.approx((np.mean(a) - np.mean(b), se, df))
    half = stats.t_quantile(0.975, df) * se
    assert (diff.low, diff.high) == pytest.approx((diff.delta - half, diff.delta + half))
    assert diff.excludes_zero and not stats.welch_interval(a, [*b, 66.0]).excludes_zero
    wider = stats.welch_interval(a, b, confidence=0.99)
    assert wider.low < diff.low and wider.high > diff.high
    single = stats.welch_interval(a, [58.0])
    assert single.delta == pytest.approx(np.mean(a) - 58.0) and math.isnan(single.low) and math.isnan(single.high)
    constant = stats.welch_interval([1.0, 1.0], [0.5, 0.5])
    assert (constant.delta, constant.low, constant.high, constant.se) == (0.5, 0.5, 0.5, 0.0)


def test_welch_interval_covers_the_true_difference_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(0)
    trials, hits = 1500, 0
    for _ in range(trials):
        a, b = rng.normal(1.0, 0.5, 3), rng.normal(0.0, 2.0, 5)
        diff = stats.welch_interval(a.tolist(), b.tolist())
        hits += diff.low <= 1.0 <= diff.high
    assert hits / trials == pytest.approx(0.95, abs=0.02)


def test_rank_correlations_match_published_examples_and_numpy() -> None:
    assert stats.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)
    assert stats.kendall_tau_b([12, 2, 1, 12, 2], [1, 4, 7, 1, 0]) == pytest.approx(-0.47140452079103173)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=9), rng.normal(size=9)
    rank = lambda v: np.argsort(np.argsort(v)) + 1.0  # noqa: E731 (no ties in continuous data)
    assert stats.spearman(x, y) == pytest.approx(np.corrcoef(rank(x), rank(y))[0, 1])
    concordant = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i in range(9) for j in range(i))
    assert stats.kendall_tau_b(x, y) == pytest.approx(concordant / 36)
    assert stats.spearman(x, x) == pytest.approx(1.0) and stats.kendall_tau_b(x, -x) == pytest.approx(-1.0)
    assert stats.ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert math.isnan(stats.spearman([1.0], [2.0])) and math.isnan(stats.kendall_tau_b([1.0, 1.0], [1.0, 2.0]))
