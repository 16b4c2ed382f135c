"""The report's findings: BYOL vs random init with its interval, the study's sentences, warnings first.

Expected numbers are computed here from the inputs (numpy, the printed t table in conftest), not by byol_lib.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from byol_lib import comparisons, findings, registry
from byol_lib.linear import PREDICTIONS, RANDOM_INIT_PREFIX

from .conftest import T975, write_run


def main_runs(results: Path, seed: int, byol: float, random: float, dataset: str = "Synthetic",
              epochs: int = 8, predictions: dict[str, np.ndarray] | None = None,
              holdout: dict[str, float] | None = None, chosen_lr: float = 0.4) -> Path:
    """A finished pretraining run and its linear run with the random-init baseline (top-1 fractions)."""
    pretrain = write_run(results, f"{dataset}-pretrain-s{seed}",
                         {"kind": "pretrain", "status": "finished", "seed": seed, "epochs": epochs,
                          "dataset": dataset, "backbone": "resnet18", "final": {"online_accuracy": 0.3}})
    (pretrain / "config.yaml").write_text(yaml.safe_dump({
        "dataloader": {"train": {"dataset": {"name": dataset, "num_images": 0}}}, "derived": {"num_images": 5000},
        "augmentation": {"image_size": 32},
        "model": {"backbone": {"depth": 18, "width": 8}}}))
    linear = write_run(results, f"{dataset}-linear-s{seed}", {
        "kind": "linear", "status": "finished", "seed": seed, "top1": byol, "knn_top1_k20": byol - 0.05,
        "dataset": dataset, "backbone": "resnet18", "protocol": "paper", "chosen_lr": chosen_lr,
        "holdout_top1": holdout or {"0.8": 0.5, "0.4": 0.6, "0.2": 0.5},
        "pretrained": str(pretrain / "backbone.pdparams"),
        "random_init": {"top1": random, "knn_top1_k20": random + 0.01}})
    if predictions is not None:
        np.savez(linear / PREDICTIONS, **predictions)
    return linear


def test_one_seed_gain_is_bootstrapped_over_the_shared_validation_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 2000)
    byol = np.where(rng.random(2000) < 0.7, labels, (labels + 1) % 10)
    random = np.where(rng.random(2000) < 0.6, labels, (labels + 3) % 10)
    main_runs(tmp_path, 0, float((byol == labels).mean()), float((random == labels).mean()),
              predictions={"labels": labels, "linear": byol, RANDOM_INIT_PREFIX + "linear": random,
                           "knn_k20": byol, RANDOM_INIT_PREFIX + "knn_k20": random})
    ((setup, found),) = findings.gains(registry.load_runs(tmp_path)).items()
    assert setup[:3] == ("Synthetic", "resnet18", 8)
    linear = found[0]
    d = 100.0 * ((byol == labels).astype(float) - (random == labels))
    assert linear.evaluation == registry.LINEAR and linear.delta == pytest.approx(d.mean())
    normal_half = 1.96 * d.std(ddof=1) / math.sqrt(d.size)  # the bootstrap percentile interval is close to it
    assert linear.low == pytest.approx(d.mean() - normal_half, abs=0.5)
    assert linear.high == pytest.approx(d.mean() + normal_half, abs=0.5)
    assert linear.over == "2000 validation images, one seed" and linear.resolved
    assert [g.evaluation for g in found] == [registry.LINEAR, "kNN k=20"]


def test_several_seeds_give_a_paired_t_interval_and_a_loss_comes_first(tmp_path: Path) -> None:
    byol, random = [0.50, 0.56, 0.47], [0.55, 0.60, 0.58]
    for seed, (b, r) in enumerate(zip(byol, random, strict=True)):
        main_runs(tmp_path, seed, b, r)
    runs = registry.load_runs(tmp_path)
    (found,) = findings.gains(runs).values()
    d = 100 * (np.array(byol) - np.array(random))
    half = T975[2] * d.std(ddof=1) / math.sqrt(3)
    assert found[0].delta == pytest.approx(d.mean())
    assert (found[0].low, found[0].high) == pytest.approx((d.mean() - half, d.mean() + half))
    first = findings.collect(runs, tmp_path)[0]
    assert first.warning and "does not beat a random-init encoder" in first.text
    assert "3 seeds (paired t)" in first.text


def test_a_chosen_lr_at_the_grid_edge_is_a_warning(tmp_path: Path) -> None:
    main_runs(tmp_path, 0, 0.7, 0.5, holdout={"1.6": 0.7, "0.8": 0.6}, chosen_lr=1.6)
    main_runs(tmp_path, 1, 0.7, 0.5, dataset="CIFAR10")  # chose 0.4 of 0.2 ... 0.8: inside
    runs = registry.load_runs(tmp_path)
    assert findings.grid_edges(runs) == [("Synthetic-linear-s0", 1.6, 0.8, 1.6)]
    edge = [f for f in findings.collect(runs, tmp_path) if f.topic == "Evaluation"]
    assert len(edge) == 1 and edge[0].warning and "`Synthetic-linear-s0` (lr 1.6 of 0.8 … 1.6)" in edge[0].text
    assert "data with a width-8 ResNet-18" in (findings.caveat(runs) or "")
    assert "5,000-image, 32-pixel Synthetic" in (findings.caveat(runs) or "")


def write_study(results: Path, study: str = "default-ablation") -> list[comparisons.Comparison]:
    """A study's comparisons written by the real writer: two augmentation rows (one resolved) and PASSL's recipe."""
    rows = [
        comparisons.Comparison("no_color", (0, 1, 2), (35.0, 40.0, 52.0), (59.0, 65.0, 78.0), grid="augmentations",
                               label="remove colour", paper_top1=63.4, paper_baseline=72.5),
        comparisons.Comparison("no_blur", (0, 1, 2), (78.0, 60.0, 80.0), (59.0, 65.0, 78.0), grid="augmentations",
                               label="remove blur", paper_top1=71.2, paper_baseline=72.5),
        comparisons.Comparison("no_flip", (0, 1, 2), (60.0, 70.0, 75.0), (59.0, 65.0, 78.0), grid="augmentations",
                               label="remove flip", paper_top1=71.9, paper_baseline=72.5),
        comparisons.Comparison("passl_head_with_ema", (0, 1, 2), (50.0, 41.0, 49.0), (59.0, 65.0, 78.0),
                               grid="passl_deviations", label="PASSL with its EMA hook", paper_top1=71.62,
                               paper_baseline=72.5),
    ]
    folder = results / study
    comparisons.save_comparisons(rows, folder)
    (folder / comparisons.AGREEMENT_NAME).write_text(json.dumps(comparisons.agreement(rows, 72.5)))
    return rows


def test_study_findings_state_resolved_changes_agreement_and_passl(tmp_path: Path) -> None:
    rows = write_study(tmp_path)
    found = {f.topic: f for f in findings.collect(registry.load_runs(tmp_path), tmp_path)}
    color = rows[0]
    d = np.array(color.top1) - np.array(color.baseline_top1)
    half = T975[2] * d.std(ddof=1) / math.sqrt(3)
    text = found["Augmentations"].text
    assert f"remove colour −{abs(d.mean()):.1f} ± {half:.1f} (paper −9.1)" in text
    assert "2 not resolved (remove blur, remove flip)" in text
    assert "over 3 rows: 1 resolved signs agree, 0 disagree" in text
    passl = found["PASSL deviations"].text
    recipe = np.array(rows[3].top1) - np.array(rows[3].baseline_top1)
    assert f"{'−' if recipe.mean() < 0 else '+'}{abs(recipe.mean()):.1f} points" in passl
    assert "the published gap is −0.88 points" in passl
    resolution = found["Resolution"]
    assert resolution.warning and "1 of 4 changes resolved with 3 seeds" in resolution.text
    assert max(r.seeds_for[2] or 0 for r in rows) == int(resolution.text.split("up to ")[1].split()[0])


def test_no_runs_give_one_sentence_saying_so(tmp_path: Path) -> None:
    runs = registry.load_runs(tmp_path)
    assert findings.collect(runs, tmp_path) == [] and findings.caveat(runs) is None
    assert findings.markdown([]).startswith("No finding yet")
