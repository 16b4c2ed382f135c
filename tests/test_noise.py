"""The noise budget's decomposition against data drawn with known noise, and its closed forms by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from byol_lib import report
from byol_lib.config import load_config
from byol_lib.noise import decompose, head_correctness, image_noise_by_size, measure

from .conftest import ROOT, TINY_GRID


def _simulated(training_sd: float, head_sd: float, seeds: int, heads: int, images: int, seed: int = 0) -> np.ndarray:
    """correct[s, h, i] ~ Bernoulli(0.6 + T_s + H_sh), T and H normal with the given sds (in points)."""
    rng = np.random.default_rng(seed)
    p = 0.6 + rng.normal(0, training_sd / 100, (seeds, 1)) + rng.normal(0, head_sd / 100, (seeds, heads))
    return rng.random((seeds, heads, images)) < p[:, :, None]


def test_decompose_recovers_known_training_and_head_noise() -> None:
    """With many images the Bernoulli noise is small, so the estimates must land near the true sds."""
    budget = decompose(_simulated(training_sd=4.0, head_sd=1.5, seeds=60, heads=6, images=40000))
    assert budget.training_sd == pytest.approx(4.0, rel=0.25)
    assert budget.head_sd == pytest.approx(math.hypot(1.5, 100 * math.sqrt(0.24 / 40000)), rel=0.15)
    assert budget.image_sd == pytest.approx(100 * math.sqrt(0.24 / 40000), rel=0.05)
    assert budget.mean_top1 == pytest.approx(60.0, abs=1.5)
    assert budget.single_run_sd == pytest.approx(math.hypot(4.0, 1.5), rel=0.3)


def test_decompose_by_hand() -> None:
    """2 seeds x 2 heads x 4 images: acc = [[50, 75], [25, 25]] points."""
    correct = np.array([[[1, 1, 0, 0], [1, 1, 1, 0]], [[1, 0, 0, 0], [0, 0, 0, 1]]], dtype=bool)
    budget = decompose(correct)
    head_var = (np.var([50, 75], ddof=1) + np.var([25, 25], ddof=1)) / 2  # 156.25
    training_var = np.var([62.5, 25.0], ddof=1) - head_var / 2  # 703.125 - 78.125
    assert budget.head_sd == pytest.approx(math.sqrt(head_var))
    assert budget.training_sd == pytest.approx(math.sqrt(training_var))
    assert budget.single_run_sd == pytest.approx(np.std([50, 25], ddof=1))
    image_var = 1e4 * np.mean([0.5 * 0.5, 0.75 * 0.25, 0.25 * 0.75, 0.25 * 0.75]) / 4
    assert budget.image_sd == pytest.approx(math.sqrt(image_var))
    with pytest.raises(ValueError, match="2 head seeds"):
        decompose(correct[:, :1])


def test_image_noise_by_size_matches_the_binomial_law() -> None:
    rng = np.random.default_rng(3)
    correct = rng.random((4, 20000)) < 0.7
    rows = image_noise_by_size(correct, [250, 1000, 10000, 20000])
    for row in rows[:2]:
        expected = 100 * math.sqrt(0.21 / row["images"])
        assert row["binomial_sd"] == pytest.approx(expected, rel=0.02)
        assert row["measured_sd"] == pytest.approx(expected, rel=0.2)  # 80 / 20 parts per run, 4 runs
    assert rows[2]["parts"] == 2 and rows[3]["parts"] == 1 and math.isnan(rows[3]["measured_sd"])


@pytest.mark.slow
def test_measure_end_to_end_agrees_with_the_standard_linear_runs(tmp_path: Path) -> None:
    """Two tiny seeds, one extra head each: re-evaluating a backbone with its own seed reproduces its standard
    linear run's per-image predictions, and the budget is the decomposition of what was saved."""
    grid = tmp_path / "tiny.yaml"
    grid.write_text(TINY_GRID)
    results = tmp_path / "results"
    out = measure(results, epochs=[1], seeds=[0, 1], extra_heads=1, sizes=[50, 100, 5000], max_parallel=1,
                  grid_file=grid, verbose=False)
    budget = json.loads(out.read_text())["budgets"][0]
    assert budget["epochs"] == 1 and budget["seeds"] == 2 and budget["head_seeds"] == 2 and budget["images"] == 100
    cfg = {**load_config(ROOT / "configs/byol/tiny_linear.yaml", ["linear_eval.random_init_baseline=False"]),
           "seed": 1}
    again = head_correctness(results / "noise-e1-baseline-pretrain-s1", cfg, [1])[0]
    with np.load(results / "noise-e1-baseline-linear-s1" / "predictions.npz") as saved:
        np.testing.assert_array_equal(again, saved["linear"] == saved["labels"])
    rows = []
    for seed in (0, 1):
        with np.load(results / f"noise-e1-baseline-linear-s{seed}" / "predictions.npz") as saved:
            standard = saved["linear"] == saved["labels"]
        with np.load(results / "noise-budget" / f"e1-s{seed}-h{seed + 1000}.npz") as saved:
            rows.append(np.vstack([standard, saved["correct"]]))
    assert budget["training_sd"] == pytest.approx(decompose(np.stack(rows)).training_sd)
    assert budget["top1_by_seed"] == pytest.approx([100 * r[0].mean() for r in rows])
    assert [row["images"] for row in budget["image_noise"]] == [50, 100]
    budgets, images = report.noise_budget_tables(out)  # what the notebook and the report show
    assert budgets.loc[0, "training_sd"] == pytest.approx(budget["training_sd"]) and len(images) == 2
    assert len(report.plot_noise_budget(out).axes) == 2
