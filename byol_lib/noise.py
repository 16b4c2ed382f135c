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
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import paddle

from byol_lib.data.datasets import ImageDataset
from byol_lib.evaluate import LinearEvalSettings, linear_eval


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


def head_seed_correctness(backbone: paddle.nn.Layer, train: ImageDataset, test: ImageDataset, aug: dict[str, Any],
                          settings: LinearEvalSettings, head_seeds: Sequence[int]) -> np.ndarray:
    """``[len(head_seeds), N_test]`` bool: which test images each head seed's linear evaluation gets right."""
    rows = []
    for seed in head_seeds:
        result = linear_eval(backbone, train, test, aug, dataclasses.replace(settings, seed=seed))
        rows.append(result.test_predictions == result.test_labels)
    return np.stack(rows)


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


def paired_noise(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float]:
    """How noisy the per-seed differences a - b of two arms evaluated on the same images are (points): their sd
    over seeds, and the image noise of one difference (discordant pairs: sqrt((p01 + p10 - (p01 - p10)^2) / N))."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    diff = 100.0 * (a.mean(axis=1) - b.mean(axis=1))
    p01, p10 = (a & ~b).mean(axis=1), (~a & b).mean(axis=1)
    image = 100.0 * np.sqrt((p01 + p10 - (p01 - p10) ** 2) / a.shape[1])
    return {"mean_difference": float(diff.mean()), "difference_sd": float(diff.std(ddof=1)) if len(diff) > 1
            else math.nan, "image_sd_of_difference": float(image.mean())}
