"""Paired comparisons of a study, read from a results folder written here by hand (summary.json files in the
formats train.py, linear.py and the ablation runner write, predictions.npz as linear.py saves it).

Expected numbers are computed here from the per-seed inputs with numpy, closed-form t quantiles for 2 degrees of
freedom (t_p = (2p - 1) / sqrt(2p(1 - p))) and the printed t table, not by the code under test.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from byol_lib import comparisons, registry

from .conftest import T975, write_ablation_runs, write_run

STUDY, IMAGES, CLASSES = "abl", 200, 10
LABELS = np.random.default_rng(0).integers(0, CLASSES, IMAGES)
# top-1 as images right out of 200
BASELINE = {0: 140, 1: 143, 2: 139, 3: 141}
NO_BLUR = {0: 138, 1: 140, 2: 137.6}  # 69.0, 70.0, 68.8 percent
NO_FLIP = {0: 138, 1: 144, 2: 136, 4: 150, 5: 151}


def t2(p: float) -> float:
    """Student's t quantile for 2 degrees of freedom, in closed form."""
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


def correct_images(right: int, seed: int) -> np.ndarray:
    """Which validation images a run gets right: ``right`` of them, chosen at random."""
    mask = np.zeros(IMAGES, dtype=bool)
    mask[np.random.default_rng(seed).choice(IMAGES, right, replace=False)] = True
    return mask


def write_pair(results: Path, variant: str, seed: int, right: float, predictions: bool, study: str = STUDY,
               linear_status: str = "finished") -> np.ndarray | None:
    """A finished pretraining run and its linear run (top-1 ``right`` / 200); its correctness when saved."""
    linear = write_ablation_runs(results, study, variant, seed, right / IMAGES, linear_status)
    if not predictions:
        return None
    mask = correct_images(int(right), 100 * seed + len(variant))
    wrong = (LABELS + 1) % CLASSES
    np.savez(linear / "predictions.npz", labels=LABELS, linear=np.where(mask, LABELS, wrong),
             knn_k20=LABELS.copy())
    return mask


@pytest.fixture()
def results(tmp_path: Path) -> tuple[Path, dict[tuple[str, int], np.ndarray]]:
    folder = tmp_path / "results"
    masks: dict[tuple[str, int], np.ndarray] = {}
    for variant, runs, saved in (("baseline", BASELINE, True), ("no_blur", NO_BLUR, False),
                                 ("no_flip", NO_FLIP, True), ("no_gray", {1: 139}, False)):
        for seed, right in runs.items():
            mask = write_pair(folder, variant, seed, right, saved)
            if mask is not None:
                masks[variant, seed] = mask
    write_run(folder, f"{STUDY}-no_blur-pretrain-s3", {"kind": "pretrain", "status": "failed", "error": "boom",
                                                       "variant": "no_blur", "grid": "tiny", "seed": 3})
    write_pair(folder, "baseline", 4, 0, False, linear_status="failed")  # no_flip's seed 4 loses its partner
    write_pair(folder, "baseline", 0, 100, False, study=f"{STUDY}-x")  # another study whose name starts alike
    write_pair(folder, "no_blur", 0, 100, False, study=f"{STUDY}-x")
    return folder, masks


def percent(runs: dict[int, float], seeds: list[int]) -> np.ndarray:
    return np.array([100.0 * runs[s] / IMAGES for s in seeds])


def paired_expectation(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    d = a - b
    sd = d.std(ddof=1)
    se = sd / math.sqrt(3)
    half = t2(0.975) * se
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 3
    return {"delta": d.mean(), "sd": sd, "se": se, "ci_low": d.mean() - half, "ci_high": d.mean() + half,
            "halfwidth": half, "mde": (t2(0.975) + t2(0.8)) * se, "welch_df": (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2),
            "welch_se": math.sqrt(va + vb)}


def needed(sd: float, halfwidth: float) -> int:
    return next(n for n in range(2, 32) if T975[n - 1] * sd / math.sqrt(n) <= halfwidth)


def test_comparisons_pair_seeds_leave_out_failures_and_match_hand_computed_intervals(
        results: tuple[Path, dict], tmp_path: Path) -> None:
    folder, masks = results
    grid = tmp_path / "tiny.yaml"
    grid.write_text("grid: tiny\nreference_group: augmentation\nbase: configs/byol/tiny_cpu.yaml\n"
                    "linear: configs/byol/tiny_linear.yaml\nvariants:\n  - {name: baseline}\n"
                    "  - {name: no_blur, label: remove blur, paper_top1: 71.2, "
                    "overrides: {augmentation.view1.blur: 0.0}}\n")
    found = {c.variant: c for c in comparisons.compare(folder, STUDY, [grid])}
    assert list(found) == ["no_blur", "no_flip", "no_gray"]

    blur = found["no_blur"]
    assert (blur.seeds, blur.excluded_seeds, blur.unpaired_seeds) == ((0, 1, 2), (3,), ())
    assert (blur.label, blur.paper_top1, blur.grid) == ("remove blur", 71.2, "tiny")
    a, b = percent(NO_BLUR, [0, 1, 2]), percent(BASELINE, [0, 1, 2])
    assert blur.top1 == pytest.approx(tuple(a)) and blur.baseline_top1 == pytest.approx(tuple(b))
    want = paired_expectation(a, b)
    assert (blur.paired.delta, blur.sd, blur.paired.se, blur.paired.low, blur.paired.high, blur.mde) == pytest.approx(
        (want["delta"], want["sd"], want["se"], want["ci_low"], want["ci_high"], want["mde"]))
    assert (blur.welch.df, blur.welch.se) == pytest.approx((want["welch_df"], want["welch_se"]))
    d = a - b
    # three seeds: each extreme of the seed bootstrap (all draws the same seed) has probability 1/27 > 2.5%
    assert blur.bootstrap_over == "seeds" and blur.bootstrap == pytest.approx((d.mean(), d.min(), d.max()))
    assert blur.seeds_for == {h: needed(want["sd"], h) for h in (1, 2, 5)}
    assert want["ci_high"] < 0
    assert blur.verdict == f"resolved: {want['delta']:+.1f} ± {want['halfwidth']:.1f} points" == (
        "resolved: -1.1 ± 1.0 points")

    flip = found["no_flip"]
    assert (flip.seeds, flip.excluded_seeds, flip.unpaired_seeds) == ((0, 1, 2), (4,), (5,))
    assert (flip.label, flip.paper_top1) == ("no_flip", None)
    assert flip.attempted_seeds == (0, 1, 2, 4, 5)
    want = paired_expectation(percent(NO_FLIP, [0, 1, 2]), b)
    assert flip.paired.half == pytest.approx(want["halfwidth"]) and not flip.paired.excludes_zero
    assert flip.verdict == f"not resolved: effects below {want['mde']:.1f} points cannot be told from noise with " \
                           "3 seeds" == "not resolved: effects below 3.2 points cannot be told from noise with 3 seeds"
    image_diff = np.mean([masks["no_flip", s].astype(float) - masks["baseline", s] for s in (0, 1, 2)])
    mean, low, high = flip.bootstrap
    assert flip.bootstrap_over == "seeds and images" and mean == pytest.approx(100 * image_diff)
    assert mean == pytest.approx(want["delta"]) and low < mean < high

    gray = found["no_gray"]
    assert gray.n == 1 and math.isnan(gray.paired.half) and math.isnan(gray.bootstrap[1])
    assert gray.verdict == "not resolved: 1 paired seed(s); an interval needs 2"
    assert gray.seeds_for == {1: None, 2: None, 5: None} and not gray.within(100.0)


def test_written_files_hold_every_number_json_safe_and_the_registry_ignores_them(results: tuple[Path, dict]) -> None:
    folder, _ = results
    written = comparisons.write_comparisons(folder, STUDY)
    path = folder / STUDY / "comparisons.json"
    assert [c.variant for c in written] == [r["variant"] for r in json.loads(path.read_text())]
    records = {r["variant"]: r for r in json.loads(path.read_text())}
    a, b = percent(NO_BLUR, [0, 1, 2]), percent(BASELINE, [0, 1, 2])
    want = paired_expectation(a, b)
    blur = records["no_blur"]
    assert blur["seeds"] == [0, 1, 2] and blur["excluded_seeds"] == [3] and blur["n"] == 3
    assert blur["top1"] == pytest.approx(list(a)) and blur["differences"] == pytest.approx(list(a - b))
    for key in ("delta", "sd", "se", "ci_low", "ci_high", "halfwidth", "mde"):
        assert blur[key] == pytest.approx(want[key]), key
    assert (blur["df"], blur["resolved"], blur["label"], blur["paper_top1"]) == (2, True, "no_blur", None)
    assert blur["seeds_for_halfwidth_1"] == needed(want["sd"], 1)
    assert (blur["bootstrap_low"], blur["bootstrap_high"]) == pytest.approx(((a - b).min(), (a - b).max()))
    gray = records["no_gray"]
    assert gray["ci_low"] is None and gray["sd"] is None and gray["mde"] is None and gray["resolved"] is False

    with (folder / STUDY / "comparisons.csv").open() as handle:
        rows = {r["variant"]: r for r in csv.DictReader(handle)}
    assert set(rows) == set(records) and "seeds" not in rows["no_blur"] and "differences" not in rows["no_blur"]
    assert float(rows["no_blur"]["halfwidth"]) == pytest.approx(want["halfwidth"])
    assert rows["no_gray"]["ci_low"] == "" and rows["no_flip"]["bootstrap_over"] == "seeds and images"
    assert not any(str(p).endswith(f"/{STUDY}") for p in registry.load_runs(folder)["path"])
    assert not list((folder / STUDY).glob(".*"))  # no temporary files left


def test_a_mismatched_prediction_file_falls_back_to_the_seed_bootstrap(results: tuple[Path, dict]) -> None:
    folder, _ = results
    saved = folder / f"{STUDY}-baseline-linear-s1" / "predictions.npz"
    with np.load(saved) as old:
        np.savez(saved, labels=(old["labels"] + 1) % CLASSES, linear=old["linear"])
    flip = {c.variant: c for c in comparisons.compare(folder, STUDY)}["no_flip"]
    assert flip.bootstrap_over == "seeds"


def test_pairing_needs_aligned_values() -> None:
    with pytest.raises(ValueError, match="variant 'v': 2 seeds, 1 top-1s and 2 baseline top-1s"):
        comparisons.Comparison("v", (0, 1), (1.0,), (1.0, 2.0))


def test_agreement_with_the_paper_ranks_signs_and_bootstraps() -> None:
    """Four rows with known per-seed changes; the paper's changes rank them the same way but one."""
    rows = {"a": (-10.0, -12.0, -11.0), "b": (-5.0, -4.0, -6.0), "c": (1.0, -1.0, 0.5), "d": (3.0, 2.0, 4.0)}
    paper = {"a": 60.0, "b": 70.0, "c": 72.0, "d": 71.0}  # deltas -12.5, -2.5, -0.5, -1.5
    found = [comparisons.Comparison(name, (0, 1, 2), tuple(50.0 + d for d in diffs), (50.0, 50.0, 50.0), grid="g",
                                    paper_top1=paper[name]) for name, diffs in rows.items()]
    (row,) = comparisons.agreement(found, paper_baseline=72.5, reps=400)
    measured = [np.mean(rows[n]) for n in rows]
    deltas = [paper[n] - 72.5 for n in rows]
    # ranks: measured a<b<c<d, paper a<b<d<c: d and c swap -> rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert row["spearman"] == pytest.approx(0.8) == pytest.approx(np.corrcoef(
        np.argsort(np.argsort(measured)), np.argsort(np.argsort(deltas)))[0, 1])
    assert row["kendall_tau_b"] == pytest.approx(4 / 6)  # 5 concordant, 1 discordant pair
    assert row["spearman_low"] <= row["spearman"] <= row["spearman_high"] <= 1.0
    assert (row["rows"], row["sign_agrees"], row["sign_disagrees"], row["unresolved"]) == (4, 2, 1, 1)
    assert comparisons.agreement(found[:2], paper_baseline=72.5) == []  # fewer than three rows
