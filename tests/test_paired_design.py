"""Common random numbers: a variant and the baseline with the same seed share every random draw the variant does
not itself change, so their difference is a paired comparison.

For every variant of the augmentation and PASSL-deviation grids, the views of the same (seed, step, image) are
sampled for the baseline and the variant; a spy records each sampler call's crop box, and the device parameters
give the jitter strengths and order, the blur and solarise coins and the sigmas. Each must equal the baseline's
unless the variant's own overrides change that very draw. Model initialisation and the data order are checked the
same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import paddle
import pytest

from byol_lib.config import load_config
from byol_lib.data import augment as A
from byol_lib.data.loader import TwoViewDataset
from byol_lib.model import byol_from_config
from byol_lib.variants import BASELINE, Variant, load_grid, variant_config

from .conftest import ROOT, TINY_CONFIG

GRIDS = [ROOT / "configs/ablations/augmentations.yaml", ROOT / "configs/ablations/passl_deviations.yaml"]
VARIANTS = [(grid, v) for grid in map(load_grid, GRIDS) for v in grid.variants if v.name != BASELINE]
KEYS = [(seed, step, index) for seed in (0, 3) for step in (0, 7) for index in (1, 42, 4999)]


class _Images:
    """A stand-in image dataset: random uint8 images of a few shapes (wide, tall, square)."""

    shapes = ((32, 32), (24, 40), (40, 20))

    def image(self, index: int) -> np.ndarray:
        h, w = self.shapes[index % 3]
        return np.random.default_rng(index).integers(0, 256, (h, w, 3), dtype=np.uint8)

    def label(self, index: int) -> int:
        return index % 10

    def undecodable(self) -> frozenset[int]:
        return frozenset()

    def __len__(self) -> int:
        return 5000


def _draws(cfg: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Per (key, view): the crop box (recorded by a spy on the sampler's crop), and from the device parameters the
    jitter strengths and order (when jitter is on), blur/solarise coins and sigmas."""
    calls: list[dict[str, Any]] = []
    crop = A.sample_crop

    def spy_crop(*args: Any) -> tuple[int, int, int, int]:
        box = crop(*args)
        calls.append({"box": box})
        return box

    monkeypatch.setattr(A, "sample_crop", spy_crop)
    dataset = TwoViewDataset(_Images(), cfg["augmentation"], cfg["seed"])
    try:
        for key in KEYS:
            dataset.seed = key[0]
            _, params1, _, params2, *_ = dataset[key[1:]]
            for call, params in zip(calls[-2:], (params1, params2), strict=True):
                call.update(blur=params[A.BLUR_ON], solarize=params[A.SOLARIZE_ON],
                            sigma=params[A.SIGMAS])  # D2: the first of the taps
                if params[A.JITTER_ON]:
                    call["jitter"] = (params[A.JITTER_VALUES].tolist(), params[A.JITTER_ORDER].tolist())
    finally:
        monkeypatch.undo()
    return calls


def _changes(variant: Variant) -> set[str]:
    """Which draws the variant's own overrides may change."""
    keys = " ".join(variant.overrides)
    return ({"box"} if "crop.method" in keys else set()) | ({"blur"} if ".blur" in keys else set()) | (
        {"solarize"} if ".solarize" in keys else set()) | ({"jitter"} if "color_jitter" in keys else set())


@pytest.fixture(scope="module")
def baseline_draws() -> Iterator[list[dict[str, Any]]]:
    with pytest.MonkeyPatch.context() as patch:
        yield _draws(load_config(GRIDS[0].parent.parent / "byol/byol_r18_synthetic.yaml"), patch)


@pytest.mark.parametrize(("grid", "variant"), VARIANTS, ids=[v.name for _, v in VARIANTS])
def test_a_variant_shares_every_draw_it_does_not_change(grid: Any, variant: Variant, baseline_draws: list[dict],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    mine = _draws(variant_config(grid.base, variant, grid=grid.name), monkeypatch)
    assert len(mine) == len(baseline_draws) == 2 * len(KEYS)
    changed = _changes(variant)
    for ours, theirs in zip(mine, baseline_draws, strict=True):
        for draw in ("box", "blur", "solarize", "sigma", "jitter"):
            if draw in changed:
                continue
            if draw == "jitter" and ("jitter" not in ours or "jitter" not in theirs):
                assert ("jitter" in ours) == ("jitter" in theirs) or "color_jitter" in str(variant.overrides)
                continue
            assert ours.get(draw) == theirs.get(draw), (variant.name, draw)
    if "box" in changed:  # the retry-loop crop draws from its own stream: the other draws are still shared
        assert any(o["box"] != t["box"] for o, t in zip(mine, baseline_draws, strict=True))


def test_removing_blur_leaves_the_views_bit_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blur is a device op: with it removed, the CPU views equal the baseline's bit for bit, the flags differ only
    where the baseline drew blur."""
    grid = load_grid(GRIDS[0])
    variants = {v.name: v for v in grid.variants}
    base = TwoViewDataset(_Images(), variant_config(grid.base, variants[BASELINE])["augmentation"], 0)
    no_blur = TwoViewDataset(_Images(), variant_config(grid.base, variants["no_blur"])["augmentation"], 0)
    blurred = 0
    for _, step, index in KEYS:
        a, b = base[(step, index)], no_blur[(step, index)]
        for i in (0, 2):
            np.testing.assert_array_equal(a[i], b[i])
        for i in (1, 3):
            assert b[i][0] == 0.0 and np.array_equal(np.delete(a[i], 0), np.delete(b[i], 0))
            blurred += int(a[i][0])
    assert blurred > 0


def _initial_weights(cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    paddle.seed(cfg["seed"])
    model = byol_from_config(cfg["model"], 10)
    return {k: v.numpy() for k, v in model.state_dict().items()}


def test_same_seed_same_initial_network_unless_the_variant_changes_it() -> None:
    """(The data order is a function of the seed, the global batch and the dataset size alone: loader.py.)"""
    tiny = load_config(TINY_CONFIG, ["seed=5"])
    grid = load_grid(GRIDS[1])
    reference = _initial_weights(tiny)
    for variant in grid.variants:
        overrides = [f"{k}={v}" for k, v in variant.overrides.items() if k.startswith("model.")]
        weights = _initial_weights(load_config(TINY_CONFIG, ["seed=5", *overrides]))
        if any(k in str(overrides) for k in ("model.init", "align_init")):
            continue  # D6 and D7 draw other initial weights: that is their change
        shared = weights.keys() & reference.keys()  # D5 adds zero biases, and changes no drawn weight
        assert shared == reference.keys(), variant.name
        assert all(np.array_equal(weights[k], reference[k]) for k in shared), variant.name
    other_seed = _initial_weights(load_config(TINY_CONFIG, ["seed=6"]))
    assert not all(np.array_equal(other_seed[k], reference[k]) for k in reference)
