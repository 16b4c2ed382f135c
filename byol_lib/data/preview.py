"""Augmented view pairs of a real photo, for notebooks and reports.

``view_pairs`` runs the training pipeline on one image: ``ViewSampler`` for each view, then the batched
device ops of ``device_augment`` (blur, solarise, clip) with the normalisation set to the identity, so
the views come back displayable in [0, 1]. ``plot_view_pairs`` draws them on a bare
``matplotlib.figure.Figure``: no pyplot state and no backend chosen here, so it works headless and under
a notebook's inline backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import paddle
from matplotlib import cbook
from matplotlib.figure import Figure
from PIL import Image

from byol_lib.data.augment import ViewSampler, device_augment, validate_augment

VIEWS = ("view1", "view2")
PANEL_INCHES = 2.8


def sample_photo() -> np.ndarray:
    """Matplotlib's shipped ``grace_hopper.jpg`` (600 x 512) as uint8 RGB, H x W x 3."""
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        return np.array(im.convert("RGB"))


def view_pairs(image: np.ndarray, aug: Mapping[str, Any], n: int = 4,
               seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` pairs (view 1, view 2) of a uint8 RGB ``image`` under the augmentation section ``aug``.

    Each view is float32 S x S x 3 in [0, 1]: after blur and solarise, before normalisation. Pair ``i``
    draws view 1 then view 2 from ``np.random.default_rng([seed, i])``, as the loader draws a sample's
    two views from one generator.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 H x W x 3 RGB image, got {image.dtype} of shape {image.shape}")
    if n < 1:
        raise ValueError(f"n = {n} must be >= 1")
    display = {**aug, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}  # (x - 0) / 1 is exact
    validate_augment(display)
    samplers = [ViewSampler(display, view) for view in VIEWS]
    rngs = [np.random.default_rng([seed, i]) for i in range(n)]
    drawn = [[sampler(image, rng) for sampler in samplers] for rng in rngs]
    views = []
    for v in range(len(VIEWS)):
        x = paddle.to_tensor(np.stack([pair[v][0] for pair in drawn]))
        params = paddle.to_tensor(np.stack([pair[v][1] for pair in drawn]))
        views.append(np.ascontiguousarray(device_augment(x, params, display).numpy().transpose(0, 2, 3, 1)))
    return [(first, second) for first, second in zip(*views, strict=True)]


def view_title(aug: Mapping[str, Any], view: str) -> str:
    """Column title: the per-view probabilities in force, e.g. ``view 1: blur 1.0, solarise 0.0, ...``."""
    p = aug[view]
    return (f"view {view[-1]}: blur {float(p['blur'])}, solarise {float(p['solarize'])},\n"
            f"jitter {float(p['color_jitter'])}, gray {float(p['grayscale'])}, flip {float(p['flip'])}")


def plot_view_pairs(pairs: Sequence[tuple[np.ndarray, np.ndarray]], aug: Mapping[str, Any],
                    title: str | None = None) -> Figure:
    """A figure with one row per pair and columns view 1 / view 2, titled with each view's probabilities."""
    if not pairs:
        raise ValueError("no view pairs to plot")
    fig = Figure(figsize=(2 * PANEL_INCHES, len(pairs) * PANEL_INCHES + 0.6), layout="constrained")
    axes = fig.subplots(len(pairs), 2, squeeze=False)
    for row, pair in enumerate(pairs):
        for col, view in enumerate(pair):
            ax = axes[row, col]
            ax.imshow(view, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(view_title(aug, VIEWS[col]), fontsize=8)
        axes[row, 0].set_ylabel(f"pair {row + 1}")
    if title:
        fig.suptitle(title)
    return fig
