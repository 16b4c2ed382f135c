"""Statistics against closed forms, printed t tables, numpy, numeric integration and coverage / power simulations."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from byol_lib import stats

from .conftest import T975

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


def test_paired_interval_matches_hand_computed_values() -> None:
    a, b = [61.2, 63.0, 62.1, 64.0, 62.7], [60.0, 62.1, 61.5, 62.4, 61.8]
    # d = 1.2, 0.9, 0.6, 1.6, 0.9: mean 1.04, squared deviations sum to 0.572, sd² = 0.143, se = sqrt(0.143 / 5)
    se = math.sqrt(0.143 / 5)
    diff = stats.paired_interval(a, b)
    assert (diff.delta, diff.se, diff.df) == pytest.approx((1.04, se, 4))
    assert (diff.low, diff.high) == pytest.approx((1.04 - 2.7764451 * se, 1.04 + 2.7764451 * se), rel=1e-7)
    assert diff.half == pytest.approx(2.7764451 * se, rel=1e-7) and diff.excludes_zero
    assert stats.welch_interval(a, b).half > 2 * diff.half  # pairing removes the spread the seeds share
    eight = stats.paired_interval([3, 1, 4, 1, 5, 9, 2, 6], [0] * 8)  # mean 31/8, sum of squares 173
    sd = math.sqrt((173 - 31**2 / 8) / 7)
    assert (eight.low, eight.high) == pytest.approx((31 / 8 - 2.3646243 * sd / math.sqrt(8),
                                                     31 / 8 + 2.3646243 * sd / math.sqrt(8)), rel=1e-7)


def test_paired_interval_edge_cases() -> None:
    with pytest.raises(ValueError, match=r"differ in length \(2 vs 3\); pair them by seed"):
        stats.paired_interval([1.0, 2.0], [1.0, 2.0, 3.0])
    single = stats.paired_interval([2.0], [1.5])
    assert single.delta == 0.5 and all(math.isnan(v) for v in (single.low, single.high, single.se, single.half))
    constant = stats.paired_interval([2.0, 3.0, 4.0], [1.5, 2.5, 3.5])
    assert (constant.delta, constant.low, constant.high, constant.se, constant.half) == (0.5, 0.5, 0.5, 0.0, 0.0)


@pytest.mark.parametrize("arm_b", ["none correct", "correlated"])
def test_one_seed_bootstrap_is_an_image_bootstrap_with_the_analytic_spread(arm_b: str) -> None:
    rng = np.random.default_rng(3)
    common = rng.random((1, 2000))
    a = common < 0.7
    b = np.zeros_like(a) if arm_b == "none correct" else common < 0.6
    d = a.astype(float) - b
    expected_sd = 100 * d.std() / math.sqrt(d.size)  # the bootstrap's sd: the population sd over images / sqrt(N)
    if arm_b == "none correct":
        p = a.mean()
        assert expected_sd == pytest.approx(100 * math.sqrt(p * (1 - p) / a.size))  # the binomial value
    mean, low, high = stats.paired_bootstrap(a, b, reps=4000, seed=1)
    assert mean == pytest.approx(100 * d.mean())
    assert (high - low) / 2 == pytest.approx(1.959964 * expected_sd, rel=0.07)
    assert (low + high) / 2 == pytest.approx(mean, abs=0.1 * expected_sd)


def test_without_image_noise_the_two_stage_bootstrap_is_the_seed_bootstrap() -> None:
    rng = np.random.default_rng(4)
    seeds = 200  # each seed's runs get every image right or every image wrong: resampling images changes nothing
    x, y = rng.random(seeds) < 0.6, rng.random(seeds) < 0.4
    a, b = np.repeat(x[:, None], 10, axis=1), np.repeat(y[:, None], 10, axis=1)
    d = 100.0 * (x.astype(float) - y)
    normal = 1.959964 * d.std() / math.sqrt(seeds)  # the bootstrap's sd is the population sd / sqrt(S)
    two_stage = stats.paired_bootstrap(a, b, reps=4000, seed=1)
    seed_only = stats.seed_bootstrap(100.0 * x, 100.0 * y, reps=4000, seed=2)
    for mean, low, high in (two_stage, seed_only):
        assert mean == pytest.approx(d.mean())
        assert (low, high) == pytest.approx((d.mean() - normal, d.mean() + normal), abs=0.1 * normal)
    assert two_stage[1:] == pytest.approx(seed_only[1:], abs=0.1 * normal)


def test_seed_bootstrap_of_three_seeds_spans_their_differences() -> None:
    # each extreme (all three draws the smallest, or the largest, d) has probability 1/27 > 2.5%
    mean, low, high = stats.seed_bootstrap([71.0, 70.0, 73.5], [70.0, 70.5, 71.0], reps=4000)
    assert (mean, low, high) == pytest.approx((1.0, -0.5, 2.5))
    with pytest.raises(ValueError, match="non-empty sequences of one length"):
        stats.seed_bootstrap([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"\[seeds, images\] arrays of one shape"):
        stats.paired_bootstrap(np.ones((2, 3)), np.ones((2, 4)))


def test_two_stage_bootstrap_covers_the_true_difference_about_95_percent_of_the_time() -> None:
    """Images drawn from a population of difficulties, a seed effect per run, both arms of a seed and image sharing
    one uniform (common random numbers): the true difference in accuracy is 5 points."""
    rng = np.random.default_rng(0)
    trials, seeds, images, hits = 200, 8, 300, 0
    for trial in range(trials):
        difficulty = rng.uniform(0.25, 0.7, images)
        shift_a, shift_b = rng.normal(0.0, 0.015, (2, seeds, 1))
        uniform = rng.random((seeds, images))
        a, b = uniform < difficulty + 0.05 + shift_a, uniform < difficulty + shift_b
        _, low, high = stats.paired_bootstrap(a, b, reps=400, seed=trial)
        hits += low <= 5.0 <= high
    assert 0.9 <= hits / trials <= 0.99


def test_two_stage_bootstrap_is_fast_enough_for_reports() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.random((8, 1000)) < 0.7, rng.random((8, 1000)) < 0.65
    start = time.perf_counter()
    stats.paired_bootstrap(a, b, reps=2000)
    assert time.perf_counter() - start < 1.0


def test_minimum_detectable_effect_closed_forms_and_power() -> None:
    # n = 5: t_{0.975,4} = 2.776445, t_{0.8,4} = 0.940965 (tables)
    assert stats.min_detectable_effect(2.0, 5) == pytest.approx((2.776445 + 0.940965) * 2.0 / math.sqrt(5), rel=1e-6)
    # large n: the normal quantiles z_{0.975} = 1.959964, z_{0.8} = 0.841621
    assert stats.min_detectable_effect(3.0, 10**6) == pytest.approx((1.959964 + 0.841621) * 3e-3, rel=1e-5)
    assert math.isnan(stats.min_detectable_effect(1.0, 1))
    # a paired t test on 10 seeds detects a true difference of one MDE about 80% of the time
    mde = stats.min_detectable_effect(1.0, 10)
    d = np.random.default_rng(6).normal(mde, 1.0, (4000, 10))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(10))
    assert np.mean(np.abs(t) > T975[9]) == pytest.approx(0.8, abs=0.025)


@pytest.mark.parametrize(("sd", "halfwidth"), [(1.0, 1.0), (2.0, 1.0), (0.7, 2.0), (3.0, 5.0), (1.3, 0.6)])
def test_seeds_needed_matches_the_printed_t_table(sd: float, halfwidth: float) -> None:
    expected = next(n for n in range(2, 32) if T975[n - 1] * sd / math.sqrt(n) <= halfwidth)
    assert stats.seeds_needed(sd, halfwidth) == expected
    assert stats.seeds_needed(sd, halfwidth, max_n=expected - 1) is None


def test_seeds_needed_edge_cases_and_the_normal_limit() -> None:
    assert stats.seeds_needed(1.0, 1.0) == 7  # n = 6: 2.570582 / sqrt(6) = 1.049; n = 7: 2.446912 / sqrt(7) = 0.925
    assert stats.seeds_needed(0.0, 0.5) == 2
    normal = (1.959964 * 1.0 / 0.01) ** 2  # many seeds: t is nearly z, n ~ (z sd / halfwidth)²
    assert normal <= stats.seeds_needed(1.0, 0.01, max_n=10**6) <= normal * 1.001
    for sd, halfwidth in ((1.0, 0.0), (-1.0, 1.0), (math.nan, 1.0)):
        with pytest.raises(ValueError, match="need halfwidth > 0 and a finite sd >= 0"):
            stats.seeds_needed(sd, halfwidth)
