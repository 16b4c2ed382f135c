"""View-pair previews: shapes, ranges, determinism, un-normalised device ops, the figure, no backend at import."""

from __future__ import annotations  # noqa: I001  (byol_lib before paddle)

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import byol_lib  # noqa: F401  (sets up paddle before it is imported)
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from byol_lib.data import augment as A
from byol_lib.data import preview as P

ROOT = Path(__file__).resolve().parent.parent
NO_OPS = {"flip": 0.0, "color_jitter": 0.0, "grayscale": 0.0, "blur": 0.0, "solarize": 0.0}


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return P.sample_photo()


def small_aug(size: int, **view: float) -> dict[str, Any]:
    """Full-image crops of a square image at ``size`` with every op off except ``view`` (both views)."""
    aug = copy.deepcopy(A.AUGMENT_DEFAULTS)
    aug["image_size"] = size
    aug["crop"].update(area=[1.0, 1.0], ratio=[1.0, 1.0])
    for name in ("view1", "view2"):
        aug[name].update(NO_OPS, **view)
    return aug


def test_sample_photo_is_a_colour_uint8_image(photo: np.ndarray) -> None:
    assert photo.shape == (600, 512, 3) and photo.dtype == np.uint8
    assert photo.std() > 30 and np.abs(photo[..., 0].astype(int) - photo[..., 2]).mean() > 10


def test_view_pairs_shapes_ranges_and_determinism(photo: np.ndarray) -> None:
    pairs = P.view_pairs(photo, A.AUGMENT_DEFAULTS, n=3, seed=5)
    assert len(pairs) == 3
    for first, second in pairs:
        for view in (first, second):
            assert view.shape == (224, 224, 3) and view.dtype == np.float32
            assert view.min() >= 0.0 and view.max() <= 1.0
        assert np.abs(first - second).mean() > 0.01
    assert np.abs(pairs[0][0] - pairs[1][0]).mean() > 0.01
    again = P.view_pairs(photo, A.AUGMENT_DEFAULTS, n=3, seed=5)
    for (a1, a2), (b1, b2) in zip(pairs, again, strict=True):
        np.testing.assert_array_equal(a1, b1)
        np.testing.assert_array_equal(a2, b2)
    other = P.view_pairs(photo, A.AUGMENT_DEFAULTS, n=1, seed=6)
    assert np.abs(other[0][0] - pairs[0][0]).mean() > 0.01
    first_of_three = P.view_pairs(photo, A.AUGMENT_DEFAULTS, n=1, seed=5)  # pair i does not depend on n
    np.testing.assert_array_equal(first_of_three[0][1], pairs[0][1])


def test_views_are_not_normalised_and_hwc() -> None:
    img = np.random.default_rng(0).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    plain = img.astype(np.float64) / 255.0
    for first, second in P.view_pairs(img, small_aug(16), n=2):
        np.testing.assert_allclose(first, plain, atol=1e-6)
        np.testing.assert_allclose(second, plain, atol=1e-6)
    solarised = np.where(plain >= 0.5, 1.0 - plain, plain)
    for first, second in P.view_pairs(img, small_aug(16, solarize=1.0), n=2):
        np.testing.assert_allclose(first, solarised, atol=1e-6)
        np.testing.assert_allclose(second, solarised, atol=1e-6)


def test_views_are_blurred() -> None:
    """A constant image stays constant inside and is darkened on the border by the zero padding."""
    img = np.full((32, 32, 3), 153, dtype=np.uint8)
    aug = small_aug(32, blur=1.0)
    aug["blur"]["sigma"] = [1.0, 2.0]  # 3 taps at 32 px; at sigma >= 1 the border loses > 10 %
    for first, second in P.view_pairs(img, aug, n=2):
        for view in (first, second):
            np.testing.assert_allclose(view[1:-1, 1:-1], 0.6, atol=1e-6)
            assert view[0].max() < 0.6 * 0.9 and view[:, -1].max() < 0.6 * 0.9


def test_view_pairs_rejects_bad_input(photo: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        P.view_pairs(photo / 255.0, A.AUGMENT_DEFAULTS)
    with pytest.raises(ValueError, match="n = 0"):
        P.view_pairs(photo, A.AUGMENT_DEFAULTS, n=0)
    bad = copy.deepcopy(A.AUGMENT_DEFAULTS)
    bad["view2"]["solarize"] = 1.5
    with pytest.raises(ValueError, match="view2.solarize"):
        P.view_pairs(photo, bad)


def test_plot_view_pairs_figure_and_png(photo: np.ndarray, tmp_path: Path) -> None:
    aug = copy.deepcopy(A.AUGMENT_DEFAULTS)
    aug["image_size"] = 64
    pairs = P.view_pairs(photo, aug, n=2, seed=1)
    fig = P.plot_view_pairs(pairs, aug, title="grace_hopper.jpg")
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    titles = [ax.get_title().replace("\n", " ") for ax in fig.axes[:2]]
    assert titles[0].startswith("view 1: blur 1.0, solarise 0.0, jitter 0.8, gray 0.2")
    assert titles[1].startswith("view 2: blur 0.1, solarise 0.2, jitter 0.8, gray 0.2")
    for ax, view in zip(fig.axes, [v for pair in pairs for v in pair], strict=True):
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), view)
    assert fig.get_suptitle() == "grace_hopper.jpg"
    path = tmp_path / "pairs.png"
    fig.savefig(path, dpi=60)
    with Image.open(path) as im:
        png = np.asarray(im.convert("RGB"))
    width, height = fig.get_size_inches() * 60
    assert png.shape[:2] == (round(height), round(width))
    assert path.stat().st_size > 20_000 and png.std() > 40 and (png < 250).mean() > 0.5
    with pytest.raises(ValueError, match="no view pairs"):
        P.plot_view_pairs([], aug)


@pytest.mark.slow
def test_import_chooses_no_matplotlib_backend() -> None:
    code = ("import sys, byol_lib.data.preview\n"
            "print([m for m in sys.modules\n"
            "       if m == 'matplotlib.pyplot' or m.startswith('matplotlib.backends.backend_')])")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "[]"
