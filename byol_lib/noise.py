"""The noise budget of a study: how much of the spread of offline-linear top-1 comes from the evaluation and how
much from pretraining.

A backbone pretrained with seed ``s`` is evaluated by linear heads trained with head seeds ``h`` (the head seed
draws the held-out split, the head's initial weights and the batch order) on one fixed validation set. With
``correct[s, h, i]`` = whether head ``h`` on backbone ``s`` classifies validation image ``i`` right and
``acc[s, h]`` its mean, a two-level random-effects model ``acc[s, h] = mu + T_s + H_sh`` gives

* head noise ``var(H) = mean_s var_h acc[s, h]`` (the linear evaluation's own randomness, backbone fixed),
* training noise ``var(T) = var_s mean_h acc[s, h] - var(H) / n_heads`` (seed to seed, clamped at 0),
* image noise ``mean p (1 - p) / N`` (which validation images were drawn: a binomial standard error; the
  same images serve every run of a study, so it is shared by, and largely cancels in, paired comparisons),

and a single run's top-1 carries ``var(T) + var(H)`` against another seed, plus the image noise against the
accuracy on unseen images. ``image_noise_by_size`` checks the binomial formula by cutting the validation set
into disjoint parts of each size.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from byol_lib.choices import AUGMENTATION_GRID
from byol_lib.evaluate import linear_eval


@dataclass(frozen=True)
class NoiseBudget:
    """Standard deviations of offline-linear top-1, in points, from ``correct[s, h, i]``."""

    seeds: int
    head_seeds: int
    images: int
    mean_top1: float
    single_run_sd: float  # sd over seeds of the standard pipeline's top-1 (head seed = pretraining seed: h = 0)
    training_sd: float
    head_sd: float
    image_sd: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def decompose(correct: np.ndarray) -> NoiseBudget:
    """The noise budget of ``correct[s, h, i]`` (bool or 0/1; at least 2 seeds and 2 head seeds)."""
    correct = np.asarray(correct, dtype=np.float64)
    seeds, heads, images = correct.shape
    if seeds < 2 or heads < 2:
        raise ValueError(f"a noise budget needs >= 2 seeds and >= 2 head seeds, got {seeds} x {heads}")
    acc = 100.0 * correct.mean(axis=2)  # [s, h] in points
    head_var = float(acc.var(axis=1, ddof=1).mean())
    training_var = max(float(acc.mean(axis=1).var(ddof=1)) - head_var / heads, 0.0)
    p = acc / 100.0
    image_var = float((100.0**2 * p * (1.0 - p) / images).mean())
    return NoiseBudget(seeds=seeds, head_seeds=heads, images=images, mean_top1=float(acc.mean()),
                       single_run_sd=float(acc[:, 0].std(ddof=1)), training_sd=math.sqrt(training_var),
                       head_sd=math.sqrt(head_var), image_sd=math.sqrt(image_var))


def image_noise_by_size(correct: np.ndarray, sizes: Sequence[int]) -> list[dict[str, float]]:
    """Image noise of top-1 (points) for validation sets of each size: the binomial formula beside the measured sd
    of top-1 over disjoint parts of that size (every run, pooled around each run's own mean)."""
    flat = np.asarray(correct, dtype=np.float64).reshape(-1, np.shape(correct)[-1])
    rows = []
    for size in sizes:
        parts = flat.shape[1] // size
        p = flat.mean(axis=1)
        binomial = 100.0 * math.sqrt(float((p * (1.0 - p)).mean()) / size)
        measured = math.nan
        if parts >= 2:
            acc = 100.0 * flat[:, :parts * size].reshape(len(flat), parts, size).mean(axis=2)
            measured = math.sqrt(float(acc.var(axis=1, ddof=1).mean()))
        rows.append({"images": size, "binomial_sd": binomial, "measured_sd": measured, "parts": parts})
    return rows


# ----------------------------------------------------------------------------- measuring a budget

BUDGET_FOLDER = "noise-budget"  # under the results folder: per-backbone head-seed evaluations and the budget


def head_correctness(pretrain_run: Path, linear_cfg: dict[str, Any], head_seeds: Sequence[int]) -> np.ndarray:
    """``[H, N]``: which validation images the linear evaluation of a pretraining run's backbone gets right with each
    head seed (the linear config's settings, ``seed`` replaced), the features computed once."""
    from byol_lib.data.datasets import build_dataset
    from byol_lib.linear import build_backbone, load_pretrained, settings_from, split_features

    train = build_dataset(linear_cfg["dataloader"]["train"]["dataset"], "train")
    test = build_dataset(linear_cfg["dataloader"]["val"]["dataset"], "val")
    backbone = build_backbone(linear_cfg)
    load_pretrained(backbone, str(pretrain_run))
    settings = settings_from(linear_cfg, 1, len(train), len(train.classes))
    aug = linear_cfg["augmentation"]
    features = split_features(backbone, train, test, aug, settings)
    rows = []
    for seed in head_seeds:
        result = linear_eval(backbone, train, test, aug, dataclasses.replace(settings, seed=seed), features=features)
        rows.append(result.test_predictions == result.test_labels)
    return np.stack(rows)


def _standard_correctness(linear_run: Path) -> np.ndarray:
    """``[N]``: a finished linear run's own per-image correctness (its head seed is its pretraining seed)."""
    from byol_lib.linear import PREDICTIONS

    with np.load(linear_run / PREDICTIONS, allow_pickle=False) as saved:
        return saved["linear"] == saved["labels"]


def measure(results_dir: str | Path, epochs: Sequence[int], seeds: Sequence[int], extra_heads: int,
            sizes: Sequence[int], max_parallel: int | None = None, pretrain_overrides: Sequence[str] = (),
            linear_overrides: Sequence[str] = (), grid_file: str | Path = AUGMENTATION_GRID,
            verbose: bool = True) -> Path:
    """Pretrain and evaluate the grid's baseline for every ``epochs`` x ``seeds`` (named runs ``noise-e<E>-...``,
    skipped when finished, evaluated as every ablation run is); evaluate each backbone again with ``extra_heads``
    more head seeds (``seed + 1000 k``, cached per backbone); write ``<results>/noise-budget/noise_budget.json``:
    per budget the decomposition and the image noise by validation-set size."""
    from byol_lib.ablation import run_ablation
    from byol_lib.atomic import write_atomic, write_json
    from byol_lib.config import load_config
    from byol_lib.results import repo_root
    from byol_lib.variants import BASELINE, load_grid

    root, results = repo_root(), Path(results_dir).resolve()
    folder = results / BUDGET_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    grid = load_grid(root / grid_file)
    linear_overrides = ["linear_eval.random_init_baseline=False", *linear_overrides]
    linear_cfg = load_config(grid.linear, linear_overrides)
    budgets = []
    for epoch_count in epochs:
        study = f"noise-e{epoch_count}"
        outcomes = run_ablation(grid.source, [BASELINE], seeds, results_root=results, max_parallel=max_parallel,
                                study=study, pretrain_overrides=[*pretrain_overrides, f"epochs={epoch_count}"],
                                linear_overrides=linear_overrides, verbose=verbose)
        jobs = {outcome.job.seed: outcome.job for outcome in outcomes}
        correct = []
        for seed in seeds:
            extra = [seed + 1000 * k for k in range(1, extra_heads + 1)]
            cache = folder / f"e{epoch_count}-s{seed}-h{'-'.join(map(str, extra))}.npz"
            if not cache.is_file():
                heads = head_correctness(results / jobs[seed].pretrain_id, {**linear_cfg, "seed": seed}, extra)
                write_atomic(cache, lambda handle, heads=heads: np.savez(handle, correct=heads))
            with np.load(cache) as saved:
                standard = _standard_correctness(results / jobs[seed].linear_id)
                correct.append(np.vstack([standard, saved["correct"]]))
        stacked = np.stack(correct)  # [seeds, heads, images]
        budget = decompose(stacked).as_dict()
        budgets.append({"epochs": epoch_count, **budget, "image_noise": image_noise_by_size(
            stacked, [n for n in sizes if n <= stacked.shape[-1]]),
                        "top1_by_seed": (100.0 * stacked[:, 0].mean(axis=1)).tolist()})
        if verbose:
            print(f"== noise budget, {epoch_count} epochs: top-1 {budget['mean_top1']:.1f}, single-run sd "
                  f"{budget['single_run_sd']:.2f} = training {budget['training_sd']:.2f} (+) head "
                  f"{budget['head_sd']:.2f}; image {budget['image_sd']:.2f} points", flush=True)
    out = folder / "noise_budget.json"
    measured = {b["epochs"] for b in budgets}
    try:  # budgets measured by earlier calls stay (each with its own seeds), unless measured again here
        earlier = [b for b in json.loads(out.read_text())["budgets"] if b["epochs"] not in measured]
    except (OSError, ValueError, KeyError, TypeError):
        earlier = []
    write_json(out, {"extra_heads": extra_heads, "budgets": sorted([*earlier, *budgets],
                                                                          key=lambda b: b["epochs"])})
    return out
