"""Augmentation pipeline vs independent references: direct loops, colorsys, closed forms, invariants."""

from __future__ import annotations  # noqa: I001  (byol_lib before paddle)

import colorsys
import copy
import math
from typing import Any

import byol_lib  # noqa: F401  (sets up paddle before it is imported)
import numpy as np
import paddle
import pytest
from PIL import Image

from byol_lib.data import augment as A

NO_OPS = {"flip": 0.0, "color_jitter": 0.0, "grayscale": 0.0, "blur": 0.0, "solarize": 0.0}


def make_aug(size: int = 16, view: dict[str, float] | None = None, **top: Any) -> dict[str, Any]:
    """Defaults at ``image_size = size``; ``view`` entries override both views; ``top`` merges sections."""
    aug = copy.deepcopy(A.AUGMENT_DEFAULTS)
    aug["image_size"] = size
    for name in ("view1", "view2"):
        aug[name].update(view or {})
    for key, value in top.items():
        if isinstance(value, dict):
            aug[key].update(value)
        else:
            aug[key] = value
    A.validate_augment(aug)
    return aug


def identity_norm(aug: dict[str, Any]) -> dict[str, Any]:
    aug["mean"], aug["std"] = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    return aug


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def keys(d: float) -> float:
    """Keys cubic, a = -0.5, written out piecewise."""
    d = abs(d)
    if d <= 1:
        return 1.5 * d**3 - 2.5 * d**2 + 1
    if d < 2:
        return -0.5 * d**3 + 2.5 * d**2 - 4 * d + 2
    return 0.0


def axis_weights(out_i: int, in_size: int, out_size: int) -> dict[int, float]:
    """Half-pixel source taps of one output index; outside taps dropped and the rest renormalised."""
    src = (out_i + 0.5) * in_size / out_size - 0.5
    base = math.floor(src)
    taps = {k: keys(src - k) for k in range(base - 1, base + 3) if 0 <= k < in_size}
    total = sum(taps.values())
    return {k: v / total for k, v in taps.items()}


def loop_resize(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Per-pixel bicubic resize of an HxWxC float array (no clipping)."""
    h, w, c = img.shape
    out = np.zeros((out_h, out_w, c))
    for i in range(out_h):
        wy = axis_weights(i, h, out_h)
        for j in range(out_w):
            wx = axis_weights(j, w, out_w)
            for y, a in wy.items():
                for x, b in wx.items():
                    out[i, j] += a * b * img[y, x]
    return out


def chw(img_hwc: np.ndarray) -> np.ndarray:
    return np.transpose(img_hwc, (2, 0, 1)).astype(np.float32)


# ----------------------------------------------------------------------------- crop


def test_jax_crop_is_one_draw_with_rounding_and_clamping() -> None:
    crop = {"area": [0.08, 1.0], "ratio": [0.75, 4 / 3], "method": "jax"}
    rng, replay = np.random.default_rng(5), np.random.default_rng(5)
    fractions, log_ratios = [], []
    for _ in range(400):
        top, left, h, w = A.sample_crop(90, 120, crop, rng)
        area = replay.uniform(0.08, 1.0) * 90 * 120
        ratio = math.exp(replay.uniform(math.log(0.75), math.log(4 / 3)))
        ew = min(round(math.sqrt(area * ratio)), 120)
        eh = min(round(math.sqrt(area / ratio)), 90)
        etop, eleft = replay.integers(0, 90 - eh + 1), replay.integers(0, 120 - ew + 1)
        assert (top, left, h, w) == (etop, eleft, eh, ew)
        assert 0 <= top <= 90 - h and 0 <= left <= 120 - w
        fractions.append(area / (90 * 120))
        log_ratios.append(math.log(ratio))
    assert rng.random() == replay.random()  # exactly 4 draws per crop: no retry loop
    assert min(fractions) >= 0.08 and max(fractions) <= 1.0
    assert abs(np.mean(fractions) - 0.54) < 0.05  # U(0.08, 1) mean
    assert math.log(0.75) <= min(log_ratios) and max(log_ratios) <= math.log(4 / 3)
    assert abs(np.mean(log_ratios) - (math.log(4 / 3) + math.log(0.75)) / 2) < 0.03
    # full area at ratio 4/3 on a square: w = round(115.47) = 115 clamped to 100, h = round(86.60) = 87
    wide = {"area": [1.0, 1.0], "ratio": [4 / 3, 4 / 3], "method": "jax"}
    for seed in range(5):
        top, left, h, w = A.sample_crop(100, 100, wide, np.random.default_rng(seed))
        assert (left, h, w) == (0, 87, 100) and 0 <= top <= 13


def test_passl_retry_crop_fits_or_falls_back_to_centre() -> None:
    crop = {"area": [0.08, 1.0], "ratio": [0.75, 4 / 3], "method": "passl_retry"}
    rng = np.random.default_rng(1)
    for _ in range(300):
        top, left, h, w = A.sample_crop(60, 70, crop, rng)
        assert 0 < h <= 60 and 0 < w <= 70 and top + h <= 60 and left + w <= 70
        assert 0.08 * 0.9 <= h * w / (60 * 70) <= 1.0
    # never fits (w = 115 > 100): 10 attempts of 2 draws, then a centre crop at the closest ratio
    rng, replay = np.random.default_rng(2), np.random.default_rng(2)
    wide = {"area": [1.0, 1.0], "ratio": [4 / 3, 4 / 3], "method": "passl_retry"}
    assert A.sample_crop(100, 100, wide, rng) == ((100 - 75) // 2, 0, 75, 100)
    replay.random(20)
    assert rng.random() == replay.random()
    tall = {"area": [1.0, 1.0], "ratio": [0.5, 0.75], "method": "passl_retry"}
    # full area needs h = sqrt(2400 / r) >= 56 > 40: never fits; image ratio 1.5 > 0.75 -> h 40, w 30
    top, left, h, w = A.sample_crop(40, 60, tall, np.random.default_rng(3))
    assert (top, left, h, w) == (0, 15, 40, 30)


def test_identity_crop_and_resize_returns_the_image() -> None:
    img = random_image(12, 12)
    out = A.crop_and_resize(img, (0, 0, 12, 12), 12)
    np.testing.assert_allclose(out, chw(img) / 255.0, atol=1e-6)
    aug = make_aug(12, NO_OPS, crop={"area": [1.0, 1.0], "ratio": [1.0, 1.0]})
    x, params = A.ViewSampler(aug, "view1")(img, np.random.default_rng(0))
    np.testing.assert_allclose(x, chw(img) / 255.0, atol=1e-6)
    assert x.dtype == np.float32 and params.dtype == np.float32


@pytest.mark.parametrize(("out_h", "out_w"), [(5, 13), (11, 4), (7, 9)])
def test_bicubic_matches_per_pixel_loop(out_h: int, out_w: int) -> None:
    img = random_image(7, 9, seed=3)
    ref = np.clip(loop_resize(img.astype(np.float64), out_h, out_w) / 255.0, 0.0, 1.0)
    out = A._resize_to_chw(img, A.resize_matrix(7, out_h), A.resize_matrix(9, out_w))
    np.testing.assert_allclose(out, chw(ref), atol=1e-5)


@pytest.mark.parametrize(("h", "w", "out"), [(150, 70, 50), (70, 150, 50), (30, 45, 64), (301, 77, 224)])
def test_banded_resize_equals_the_dense_matrix_product(h: int, w: int, out: int) -> None:
    """The resize runs block by block over each block's input band; the full float64 product is the reference
    (several blocks, both pass orders, down- and upscaling)."""
    img = random_image(h, w, seed=h + w)
    rows, cols = A.resize_matrix(h, out), A.resize_matrix(w, out)
    dense = np.einsum("oh,chw,pw->cop", rows.astype(np.float64), chw(img).astype(np.float64) / 255.0,
                      cols.astype(np.float64))
    np.testing.assert_allclose(A._resize_to_chw(img, rows, cols), np.clip(dense, 0.0, 1.0), atol=2e-6)


def test_bicubic_square_output_and_crop_offset() -> None:
    img = random_image(20, 24, seed=4)
    ref = np.clip(loop_resize(img[3:13, 5:20].astype(np.float64), 8, 8) / 255.0, 0.0, 1.0)
    np.testing.assert_allclose(A.crop_and_resize(img, (3, 5, 10, 15), 8), chw(ref), atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_passl_retry_resizes_the_sampled_crop_with_pillows_antialiased_bicubic(seed: int) -> None:
    """D12: the view is Pillow's bicubic of the same crop (downscaled 60x80 -> 16: antialiased), rounded to uint8."""
    img = random_image(60, 80, seed=seed)
    aug = make_aug(16, NO_OPS, crop={"method": "passl_retry"})
    rng = np.random.default_rng(seed)
    x, _ = A.ViewSampler(aug, "view1")(img, rng)
    replay = np.random.default_rng(seed)  # the sampler draws its crop from a generator seeded by its first draw
    top, left, h, w = A.sample_crop(60, 80, aug["crop"], np.random.default_rng(replay.integers(np.iinfo(np.int64).max)))
    want = Image.fromarray(img).crop((left, top, left + w, top + h)).resize((16, 16), Image.Resampling.BICUBIC)
    np.testing.assert_allclose(x, chw(np.asarray(want)) / 255.0, atol=1e-6)
    tf_bicubic = A.crop_and_resize(img, (top, left, h, w), 16)  # the default path: no antialias
    assert np.abs(tf_bicubic - x).max() > 0.05


# ----------------------------------------------------------------------------- colour


def small_float_image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, size=(3, 4, 5)).astype(np.float32)


def per_pixel(x: np.ndarray, fn: Any) -> np.ndarray:
    out = np.zeros_like(x)
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            out[:, i, j] = [min(max(v, 0.0), 1.0) for v in fn(*(float(c) for c in x[:, i, j]))]
    return out


def device_op(op: Any, x: np.ndarray, value: float, *extra: Any) -> np.ndarray:
    """One batched device colour op on a single CHW image with its per-image value."""
    return op(paddle.to_tensor(x[None]), paddle.to_tensor([value], dtype="float32"), *extra).numpy()[0]


def test_brightness_is_additive_and_clipped() -> None:
    x = small_float_image()
    for delta in (-0.3, 0.25):
        ref = per_pixel(x, lambda r, g, b, d=delta: (r + d, g + d, b + d))
        np.testing.assert_allclose(device_op(A.adjust_brightness, x, delta), ref, atol=1e-6)


def test_contrast_per_channel_mean_and_passl_per_row_variant() -> None:
    x = small_float_image(1)
    c, h, w = x.shape
    f = 1.3
    ref = np.zeros_like(x)
    for ch in range(c):
        mean = sum(float(x[ch, i, j]) for i in range(h) for j in range(w)) / (h * w)
        for i in range(h):
            for j in range(w):
                ref[ch, i, j] = min(max(f * (x[ch, i, j] - mean) + mean, 0.0), 1.0)
    np.testing.assert_allclose(device_op(A.adjust_contrast, x, f), ref, atol=1e-6)
    row_ref = np.zeros_like(x)
    for i in range(h):
        mean = sum(float(x[ch, i, j]) for ch in range(c) for j in range(w)) / (c * w)
        for ch in range(c):
            for j in range(w):
                row_ref[ch, i, j] = min(max(f * (x[ch, i, j] - mean) + mean, 0.0), 1.0)
    per_row = device_op(A.adjust_contrast, x, f, "passl_per_row")
    np.testing.assert_allclose(per_row, row_ref, atol=1e-6)
    assert np.abs(per_row - ref).max() > 1e-2


def colorsys_saturation(factor: float) -> Any:
    def ref(r: float, g: float, b: float) -> tuple[float, float, float]:
        hh, s, v = colorsys.rgb_to_hsv(r, g, b)
        return colorsys.hsv_to_rgb(hh, min(max(s * factor, 0.0), 1.0), v)
    return ref


def colorsys_hue(delta: float) -> Any:
    def ref(r: float, g: float, b: float) -> tuple[float, float, float]:
        hh, s, v = colorsys.rgb_to_hsv(r, g, b)
        return colorsys.hsv_to_rgb((hh + delta) % 1.0, s, v)
    return ref


@pytest.mark.parametrize("factor", [0.0, 0.8, 1.2, 3.0])
def test_saturation_matches_colorsys(factor: float) -> None:
    x = small_float_image(2)
    x[:, 0, 0] = 0.4  # gray pixel (s = 0)
    x[:, 0, 1] = 0.0  # black pixel (v = 0)
    np.testing.assert_allclose(device_op(A.adjust_saturation, x, factor), per_pixel(x, colorsys_saturation(factor)),
                               atol=1e-5)


@pytest.mark.parametrize("delta", [-0.1, 0.0, 0.03, 0.1, 0.5])
def test_hue_matches_colorsys(delta: float) -> None:
    x = small_float_image(3)
    x[:, 0, 0] = 0.7
    x[:, 1, 1] = [0.9, 0.9, 0.2]  # two channels tied at the maximum
    out = device_op(A.adjust_hue, x, delta)
    np.testing.assert_allclose(out, per_pixel(x, colorsys_hue(delta)), atol=1e-5)
    if delta == 0.0:
        np.testing.assert_allclose(out, x, atol=1e-6)  # the HSV round trip


def test_grayscale_luma() -> None:
    x = small_float_image(5)
    g = A.to_grayscale(paddle.to_tensor(x[None])).numpy()[0]
    for i, j in [(0, 0), (2, 3)]:
        luma = 0.2989 * x[0, i, j] + 0.5870 * x[1, i, j] + 0.1140 * x[2, i, j]
        np.testing.assert_allclose(g[:, i, j], [luma] * 3, atol=1e-6)


def test_brightness_only_jitter_follows_the_documented_draw_order() -> None:
    img = random_image(10, 10, 6)
    view = dict(NO_OPS, color_jitter=1.0, contrast=0.0, saturation=0.0, hue=0.0)
    aug = identity_norm(make_aug(10, view, crop={"area": [1.0, 1.0], "ratio": [1.0, 1.0]}))
    x, params = A.ViewSampler(aug, "view1")(img, np.random.default_rng(7))
    np.testing.assert_allclose(x, chw(img) / 255.0, atol=1e-6)  # the worker does no colour op
    replay = np.random.default_rng(7)
    replay.integers(np.iinfo(np.int64).max)  # the seed of the crop's own generator
    replay.random(5)  # coins
    delta = replay.uniform(-1.0, 1.0) * 0.4
    assert params[A.JITTER_ON] == 1 and params[A.JITTER_VALUES].tolist() == pytest.approx([delta, 1.0, 1.0, 0.0])
    out = A.device_augment(paddle.to_tensor(x[None]), paddle.to_tensor(params[None]), aug).numpy()[0]
    np.testing.assert_allclose(out, np.clip(chw(img) / 255.0 + delta, 0.0, 1.0), atol=1e-6)


# ----------------------------------------------------------------------------- coins, flip


def test_flip_and_coins_p0_never_p1_always() -> None:
    img = random_image(24, 30, 8)
    plain = A.ViewSampler(make_aug(12, NO_OPS), "view2")
    flipped = A.ViewSampler(make_aug(12, dict(NO_OPS, flip=1.0)), "view2")
    device = A.ViewSampler(make_aug(12, dict(NO_OPS, color_jitter=1.0, grayscale=1.0, blur=1.0, solarize=1.0)),
                           "view2")
    flags = [A.BLUR_ON, A.SOLARIZE_ON, A.JITTER_ON, A.GRAY_ON]
    for seed in range(20):
        a, pa = plain(img, np.random.default_rng(seed))
        b, _ = flipped(img, np.random.default_rng(seed))
        d, pd = device(img, np.random.default_rng(seed))
        np.testing.assert_array_equal(b, a[:, :, ::-1])
        np.testing.assert_array_equal(d, a)  # colour, blur and solarise are device ops
        assert np.all(pa[flags] == 0) and np.all(pd[flags] == 1)
        assert 0.1 <= pa[A.SIGMAS] <= 2.0 and len(pa) == A.device_params_length(make_aug(12)) == 13
        np.testing.assert_array_equal(pa[A.JITTER_VALUES], pd[A.JITTER_VALUES])  # drawn whatever the coins
        assert sorted(pa[A.JITTER_ORDER]) == [0, 1, 2, 3]


def test_coin_frequency() -> None:
    sampler = A.ViewSampler(make_aug(4, dict(NO_OPS, blur=0.3)), "view1")
    rng = np.random.default_rng(9)
    img = random_image(4, 4)
    hits = sum(sampler(img, rng)[1][A.BLUR_ON] for _ in range(1000))
    assert abs(hits - 300) < 4 * math.sqrt(1000 * 0.3 * 0.7)


PAPER_PROBS = {  # paper Table 6, written out rather than read from AUGMENT_DEFAULTS
    "view1": {"flip": 0.5, "color_jitter": 0.8, "grayscale": 0.2, "blur": 1.0, "solarize": 0.0},
    "view2": {"flip": 0.5, "color_jitter": 0.8, "grayscale": 0.2, "blur": 0.1, "solarize": 0.2},
}


def within_band(hits: float, n: int, p: float, sigmas: float = 4.5) -> bool:
    """``hits`` of ``n`` Bernoulli(p) draws lies within ``sigmas`` binomial standard deviations of ``n p``."""
    return abs(hits - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def marked_image(size: int, seed: int) -> np.ndarray:
    """A colourful square image whose two leftmost columns are identical while the two rightmost ones are
    complementary (``c`` and ``255 - c`` with ``c`` in {0, 255}): every op before blur maps equal pixels
    to equal pixels and commutes with a horizontal flip, so the equal pair tells which side is left."""
    img = random_image(size, size, seed)
    img[:, 1] = img[:, 0]
    img[:, -1] = np.random.default_rng(seed + 1).choice([0, 255], size=(size, 3))
    img[:, -2] = 255 - img[:, -1]
    return img


@pytest.mark.parametrize(("view", "seed"), [("view1", 31), ("view2", 32)])
def test_default_op_frequencies_per_view(view: str, seed: int) -> None:
    """3000 draws of a default view of a full-image crop (crop draws still made; probabilities untouched).

    Observed from outputs only: flip from which side keeps its equal column pair, grayscale from equal
    channels, jitter from any difference to the base image (flipped / grayed as observed, luma written
    out here). Every draw must be unambiguous: the margins are asserted, not assumed.
    Blur and solarise come from the flags of the device parameter vector.
    """
    size, n = 8, 3000
    aug = make_aug(size, crop={"area": [1.0, 1.0], "ratio": [1.0, 1.0]})
    assert {k: aug[view][k] for k in PAPER_PROBS[view]} == PAPER_PROBS[view]
    img = marked_image(size, seed)
    base = img.transpose(2, 0, 1).astype(np.float64) / 255.0
    luma = np.array([0.2989, 0.5870, 0.1140])
    sampler, rng = A.ViewSampler(aug, view), np.random.default_rng(seed)
    ops = np.zeros((n, 5), dtype=bool)  # flip, jitter, grayscale, blur, solarise
    drawn = [sampler(img, rng) for _ in range(n)]
    all_params = np.stack([params for _, params in drawn])
    color_only = all_params.copy()
    color_only[:, [A.BLUR_ON, A.SOLARIZE_ON]] = 0  # observed from the flags; solarise would hide the marker
    views = A.device_augment(paddle.to_tensor(np.stack([x for x, _ in drawn])), paddle.to_tensor(color_only),
                             identity_norm(aug)).numpy()
    sigmas = all_params[:, A.SIGMAS]
    for i, (x, params) in enumerate(zip(views, all_params, strict=True)):
        left, right = np.abs(x[:, :, 0] - x[:, :, 1]).max(), np.abs(x[:, :, -1] - x[:, :, -2]).max()
        assert min(left, right) < 1e-6 < 0.1 < max(left, right)
        flip = right < left
        gray = np.array_equal(x[0], x[1]) and np.array_equal(x[1], x[2])
        assert gray or np.abs(x - x.mean(axis=0)).max() > 0.05
        ref = base[:, :, ::-1] if flip else base
        if gray:
            ref = np.broadcast_to(np.tensordot(luma, ref, axes=1), ref.shape)
        change = np.abs(x - ref).max()
        assert change < 1e-5 or change > 1e-3
        assert params[A.BLUR_ON] in (0.0, 1.0) and params[A.SOLARIZE_ON] in (0.0, 1.0) and len(params) == 13
        ops[i] = flip, change > 1e-3, gray, params[A.BLUR_ON] == 1, params[A.SOLARIZE_ON] == 1
    probs = [PAPER_PROBS[view][k] for k in ("flip", "color_jitter", "grayscale", "blur", "solarize")]
    for j, p in enumerate(probs):
        assert within_band(ops[:, j].sum(), n, p), (j, ops[:, j].mean(), p)
    for j in range(5):  # independent coins: every pair's joint frequency is the product
        for k in range(j + 1, 5):
            assert within_band((ops[:, j] & ops[:, k]).sum(), n, probs[j] * probs[k]), (j, k)
    assert sigmas.min() >= 0.1 and sigmas.max() <= 2.0
    assert abs(sigmas.mean() - 1.05) <= 4.5 * 1.9 / math.sqrt(12 * n)  # U(0.1, 2.0)


# ----------------------------------------------------------------------------- device part


def numpy_blur(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Zero-padded 2-D cross-correlation with the outer product ``kernel[i] * kernel[j]``, per channel."""
    r = len(kernel) // 2
    c, h, w = img.shape
    pad = np.zeros((c, h + 2 * r, w + 2 * r))
    pad[:, r:r + h, r:r + w] = img
    out = np.zeros((c, h, w))
    for i in range(len(kernel)):
        for j in range(len(kernel)):
            out += kernel[i] * kernel[j] * pad[:, i:i + h, j:j + w]
    return out


def blur_params(flags: list[tuple[int, int]], sigmas: list[float]) -> np.ndarray:
    """Device parameters with ``(blur_on, solarize_on)`` and one sigma per image, no jitter or grayscale."""
    params = np.zeros((len(flags), A.SIGMAS + 1), dtype=np.float32)
    params[:, [A.BLUR_ON, A.SOLARIZE_ON]] = flags
    params[:, A.JITTER_VALUES] = [0.0, 1.0, 1.0, 0.0]
    params[:, A.JITTER_ORDER] = [0, 1, 2, 3]
    params[:, A.SIGMAS] = sigmas
    return params


def test_blur_taps() -> None:
    assert A.blur_taps(224, 0.1) == 23 and A.blur_taps(32, 0.1) == 3 and A.blur_taps(96, 0.1) == 9


def test_device_blur_matches_numpy_per_image_sigma() -> None:
    aug = identity_norm(make_aug(20, blur={"kernel_fraction": 0.5}))  # radius 5, 11 taps
    x = np.random.default_rng(10).uniform(0.0, 1.0, size=(5, 3, 20, 20)).astype(np.float32)
    sigmas = [0.3, 1.0, 2.0, 3.5, 1.5]
    params = blur_params([(1, 0)] * len(sigmas), sigmas)
    params[3, A.BLUR_ON] = 0  # blur off for image 3
    out = A.device_augment(paddle.to_tensor(x), paddle.to_tensor(params), aug).numpy()
    offsets = np.arange(-5, 6)
    for n, s in enumerate(sigmas):
        k = np.exp(-(offsets**2) / (2 * s * s))
        ref = x[n] if n == 3 else numpy_blur(x[n], k / k.sum())
        np.testing.assert_allclose(out[n], ref, atol=2e-6)
    np.testing.assert_array_equal(out[3], x[3])


def gaussian_taps(sigma: float, taps: int) -> np.ndarray:
    """The normalised 1-D Gaussian filter, written out in float64."""
    values = [math.exp(-((i - taps // 2) ** 2) / (2 * sigma * sigma)) for i in range(taps)]
    return np.array(values) / sum(values)


def test_blur_kernel_at_224_is_a_normalised_symmetric_23_tap_gaussian() -> None:
    aug = make_aug(224)
    taps = A.blur_taps(224, aug["blur"]["kernel_fraction"])
    assert taps == 23 and A.device_params_length(aug) == 13
    sampler, rng = A.ViewSampler(aug, "view1"), np.random.default_rng(33)
    drawn = [sampler(random_image(24, 24, 33), rng)[1][A.SIGMAS] for _ in range(10)]
    sigmas = np.array([0.1, 2.0, *drawn], dtype=np.float32)
    assert np.all((sigmas >= 0.1) & (sigmas <= 2.0))
    kernels = A.blur_kernels(paddle.to_tensor(sigmas[:, None]), taps).numpy()
    assert kernels.shape == (len(sigmas), 23)
    np.testing.assert_allclose(kernels.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(kernels, kernels[:, ::-1], rtol=1e-6, atol=1e-30)  # an ulp per lane; denormal tails
    assert np.all(np.diff(kernels[:, 11:], axis=1) <= 0) and np.all(kernels.argmax(axis=1) == 11)
    for kernel, sigma in zip(kernels, sigmas, strict=True):
        np.testing.assert_allclose(kernel, gaussian_taps(float(sigma), 23), atol=1e-6)


def test_blur_of_a_delta_at_224_gives_the_kernel_back() -> None:
    aug = identity_norm(make_aug(224))
    sigmas = [0.1, 0.9, 2.0]
    x = np.zeros((3, 3, 224, 224), dtype=np.float32)
    x[:, :, 100, 130] = 1.0
    params = blur_params([(1, 0)] * len(sigmas), sigmas)
    out = A.device_augment(paddle.to_tensor(x), paddle.to_tensor(params), aug).numpy()
    for n, sigma in enumerate(sigmas):
        k = gaussian_taps(sigma, 23)
        ref = np.zeros((224, 224))
        ref[89:112, 119:142] = np.outer(k, k)
        for c in range(3):
            np.testing.assert_allclose(out[n, c], ref, atol=1e-7)
    rows, cols = np.nonzero(out[2, 0])  # sigma 2: every one of the 23 x 23 taps is non-zero, nothing else
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (89, 111, 119, 141)


def test_blur_keeps_a_constant_image_constant_away_from_the_zero_padded_border() -> None:
    """Zero 'SAME' padding (as in JAX): within 11 px of the border the blur mixes in zeros and darkens;
    from 11 px in, a constant image stays constant. On the border the value is ``c`` times the kernel
    mass that falls inside the image, ``s = sum(k[11:])`` per axis."""
    aug = identity_norm(make_aug(224))
    c, sigmas = 0.3, [0.7, 2.0]
    x = np.full((2, 3, 224, 224), c, dtype=np.float32)
    params = blur_params([(1, 0)] * len(sigmas), sigmas)
    out = A.device_augment(paddle.to_tensor(x), paddle.to_tensor(params), aug).numpy()
    np.testing.assert_allclose(out[:, :, 11:-11, 11:-11], c, atol=1e-6)
    for n, sigma in enumerate(sigmas):
        inside = gaussian_taps(sigma, 23)[11:].sum()
        np.testing.assert_allclose(out[n, :, 0, 0], c * inside**2, atol=1e-6)
        np.testing.assert_allclose(out[n, :, 112, -1], c * inside, atol=1e-6)
    assert out[1, 0, 0, 112] < c - 0.05


def test_passl_per_tap_kernel_is_normalised_and_asymmetric() -> None:
    aug = identity_norm(make_aug(16, blur={"method": "passl_per_tap", "kernel_fraction": 0.5}))
    taps = A.blur_taps(16, 0.5)
    assert A.device_params_length(aug) == 12 + taps == 21
    x, params = A.ViewSampler(aug, "view1")(random_image(20, 20), np.random.default_rng(11))
    params[[A.JITTER_ON, A.GRAY_ON]] = 0  # blur alone
    sigmas = params[A.SIGMAS:]
    assert params.shape == (21,) and params[A.BLUR_ON] == 1
    assert np.all((sigmas >= 0.1) & (sigmas <= 2.0)) and len(np.unique(sigmas)) == taps
    kernel = A.blur_kernels(paddle.to_tensor(sigmas[None]), taps).numpy()[0]
    offsets = np.arange(taps) - taps // 2
    ref = np.exp(-(offsets**2) / (2 * sigmas.astype(np.float64) ** 2))
    ref /= ref.sum()
    np.testing.assert_allclose(kernel, ref, atol=1e-6)
    assert abs(kernel.sum() - 1) < 1e-6 and np.abs(kernel - kernel[::-1]).max() > 1e-3
    out = A.device_augment(paddle.to_tensor(x[None]), paddle.to_tensor(params[None]), aug).numpy()[0]
    np.testing.assert_allclose(out, np.clip(numpy_blur(x, ref), 0, 1), atol=2e-6)


def test_solarize_threshold_and_clip() -> None:
    aug = identity_norm(make_aug(4, blur={"kernel_fraction": 0.0}))
    values = np.array([0.0, 0.2, 0.49, 0.5, 0.51, 0.8, 1.0, 1.0, 0.3, 0.7, 0.5, 0.25], dtype=np.float32)
    x = np.broadcast_to(np.tile(values, 4)[:48].reshape(3, 4, 4), (2, 3, 4, 4)).copy()
    params = blur_params([(0, 1), (0, 0)], [1.0, 1.0])
    out = A.device_augment(paddle.to_tensor(x), paddle.to_tensor(params), aug).numpy()
    expected = np.where(x[0] < 0.5, x[0], 1.0 - x[0])
    np.testing.assert_allclose(out[0], expected, atol=1e-7)
    np.testing.assert_array_equal(out[1], x[1])


def test_normalize_and_device_normalisation() -> None:
    aug = make_aug(4, blur={"kernel_fraction": 0.0})
    x = np.random.default_rng(12).uniform(0, 1, size=(2, 3, 4, 4)).astype(np.float32)
    mean, std = np.array(aug["mean"])[:, None, None], np.array(aug["std"])[:, None, None]
    np.testing.assert_allclose(A.normalize(paddle.to_tensor(x), aug).numpy(), (x - mean) / std, atol=1e-6)
    params = paddle.to_tensor(blur_params([(0, 0), (0, 0)], [1.0, 1.0]))
    np.testing.assert_allclose(A.device_augment(paddle.to_tensor(x), params, aug).numpy(), (x - mean) / std,
                               atol=1e-6)
    with pytest.raises(ValueError, match="params"):
        A.device_augment(paddle.to_tensor(x), paddle.zeros([2, 4]), aug)


def reference_device_stage(x: np.ndarray, params: np.ndarray, aug: dict[str, Any]) -> np.ndarray:
    """The device stage of one CHW image in float64, written independently: the jitter ops in the image's order
    (brightness and contrast in closed form, saturation and hue per pixel through colorsys, each clipped),
    grayscale, blur by 2-D correlation, solarise, clip, normalise."""
    x = x.astype(np.float64)
    if params[A.JITTER_ON]:
        b, c, s_factor, h = params[A.JITTER_VALUES].astype(np.float64)
        for op in params[A.JITTER_ORDER].astype(int):
            if op == 0:
                x = np.clip(x + b, 0.0, 1.0)
            elif op == 1:
                mean = x.mean(axis=(1, 2) if aug["contrast_mean"] == "per_channel" else (0, 2), keepdims=True)
                x = np.clip((x - mean) * c + mean, 0.0, 1.0)
            else:
                x = per_pixel(x, colorsys_saturation(s_factor) if op == 2 else colorsys_hue(h))
    if params[A.GRAY_ON]:
        x = np.broadcast_to(np.tensordot([0.2989, 0.5870, 0.1140], x, axes=1), x.shape)
    if params[A.BLUR_ON]:
        taps = A.blur_taps(x.shape[1], aug["blur"]["kernel_fraction"])
        sigma = params[A.SIGMAS:].astype(np.float64)
        kernel = np.exp(-((np.arange(taps) - taps // 2) ** 2) / (2 * sigma**2))
        x = numpy_blur(x, kernel / kernel.sum())
    if params[A.SOLARIZE_ON]:
        x = np.where(x >= 0.5, 1.0 - x, x)
    x = np.clip(x, 0.0, 1.0)
    return (x - np.array(aug["mean"])[:, None, None]) / np.array(aug["std"])[:, None, None]


@pytest.mark.parametrize("fixed_shape", [False, True], ids=["cpu_gather", "fixed_shape"])
@pytest.mark.parametrize("switches", [{}, {"contrast_mean": "passl_per_row"}, {"method": "passl_per_tap"}],
                         ids=["jax", "d3_per_row_contrast", "d2_per_tap_blur"])
def test_device_stage_matches_the_per_image_numpy_reference(fixed_shape: bool, switches: dict[str, Any]) -> None:
    """Views drawn by the sampler (every op on for some images, off for others, random jitter orders), then the
    batched device stage on both of its paths, against the per-image reference."""
    view = {"color_jitter": 0.7, "grayscale": 0.3, "blur": 0.5, "solarize": 0.3, "hue": 0.5, "saturation": 0.8}
    blur = {"kernel_fraction": 0.5, "method": switches.get("method", "gaussian")}
    aug = make_aug(12, view, blur=blur, contrast_mean=switches.get("contrast_mean", "per_channel"))
    sampler, rng = A.ViewSampler(aug, "view2"), np.random.default_rng(40)
    drawn = [sampler(random_image(20, 26, seed), rng) for seed in range(24)]
    x, params = np.stack([d[0] for d in drawn]), np.stack([d[1] for d in drawn])
    for flag in (A.JITTER_ON, A.GRAY_ON, A.BLUR_ON, A.SOLARIZE_ON):
        assert 0 < params[:, flag].sum() < len(params)
    assert len({tuple(order) for order in params[params[:, A.JITTER_ON] == 1][:, A.JITTER_ORDER]}) >= 5
    out = A.device_augment(paddle.to_tensor(x), paddle.to_tensor(params), aug, fixed_shape=fixed_shape).numpy()
    ref = np.stack([reference_device_stage(xi, pi, aug) for xi, pi in zip(x, params, strict=True)])
    np.testing.assert_allclose(out, ref, atol=3e-5)


def test_jitter_order_and_the_d3_switch_change_the_view() -> None:
    """The same draws in another order, or with D3's per-row contrast mean, give another view (so the reference
    test above would catch an order or a switch that is ignored)."""
    aug = identity_norm(make_aug(12, blur={"kernel_fraction": 0.0}))
    x = np.random.default_rng(41).uniform(0.0, 1.0, size=(1, 3, 12, 12)).astype(np.float32)
    params = blur_params([(0, 0)], [1.0])
    params[0, A.JITTER_ON], params[0, A.JITTER_VALUES] = 1, [0.3, 1.4, 0.8, 0.1]
    forward = A.device_augment(paddle.to_tensor(x), paddle.to_tensor(params), aug).numpy()
    params[0, A.JITTER_ORDER] = [3, 2, 1, 0]
    assert np.abs(A.device_augment(paddle.to_tensor(x), paddle.to_tensor(params), aug).numpy() - forward).max() > 0.01
    per_row = A.device_augment(paddle.to_tensor(x), paddle.to_tensor(params), {**aug, "contrast_mean": "passl_per_row"})
    assert np.abs(per_row.numpy() - A.device_augment(paddle.to_tensor(x), paddle.to_tensor(params), aug).numpy()).max(
    ) > 0.01


# ----------------------------------------------------------------------------- eval transforms


def test_eval_transform_224_is_the_central_region() -> None:
    img = random_image(256, 320, 13)
    out = A.eval_transform(img, make_aug(224))
    np.testing.assert_allclose(out, chw(img[16:240, 48:272]) / 255.0, atol=1e-6)


@pytest.mark.parametrize("shape", [(40, 50), (50, 40)])
def test_eval_transform_small_matches_resize_then_centre_crop(shape: tuple[int, int]) -> None:
    img = random_image(*shape, seed=14)
    short = round(16 * 256 / 224)  # 18
    long = round(max(shape) * short / min(shape))  # 22 or 23
    new = (short, long) if shape[0] < shape[1] else (long, short)
    full = np.clip(loop_resize(img.astype(np.float64), *new) / 255.0, 0.0, 1.0)
    top, left = (new[0] - 16 + 1) // 2, (new[1] - 16 + 1) // 2
    out = A.eval_transform(img, make_aug(16))
    np.testing.assert_allclose(out, chw(full[top:top + 16, left:left + 16]), atol=1e-5)


def test_passl_eval_resize_is_pillow_bilinear_then_paddle_vision_centre_crop() -> None:
    """PASSL's Resize(256) + CenterCrop(224), scaled to S = 16: shorter side 18, longer int(18 * 60 / 40) = 27."""
    img = random_image(40, 60, seed=5)
    resized = np.asarray(Image.fromarray(img).resize((27, 18), Image.Resampling.BILINEAR))
    want = resized[1:17, 6:22]  # offsets round((18 - 16) / 2) = 1 and round((27 - 16) / 2) = round(5.5) = 6
    got = A.eval_transform(img, make_aug(16, eval_resize="passl"))
    np.testing.assert_allclose(got, chw(want) / 255.0, atol=1e-6)
    assert np.abs(A.eval_transform(img, make_aug(16)) - got).max() > 0.05  # the paper's bicubic differs


def test_linear_train_transform_is_crop_and_flip_only() -> None:
    img = random_image(12, 12, 15)
    aug = make_aug(12, crop={"area": [1.0, 1.0], "ratio": [1.0, 1.0]})
    outs = [A.linear_train_transform(img, aug, np.random.default_rng(s)) for s in range(12)]
    base = chw(img) / 255.0
    flips = 0
    for out in outs:
        is_flip = np.allclose(out, base[:, :, ::-1], atol=1e-6)
        assert is_flip or np.allclose(out, base, atol=1e-6)
        flips += is_flip
    assert 0 < flips < 12


# ----------------------------------------------------------------------------- determinism, validation


@pytest.mark.parametrize(
    "overrides",
    [{}, {"crop": {"method": "passl_retry"}, "blur": {"method": "passl_per_tap"}, "contrast_mean": "passl_per_row"}],
)
def test_same_seed_same_output(overrides: dict[str, Any]) -> None:
    aug = make_aug(16, **copy.deepcopy(overrides))
    img = random_image(30, 40, 16)
    for view in ("view1", "view2"):
        sampler = A.ViewSampler(aug, view)
        a = [sampler(img, np.random.default_rng(17)) for _ in range(2)]
        np.testing.assert_array_equal(a[0][0], a[1][0])
        np.testing.assert_array_equal(a[0][1], a[1][1])
        b = sampler(img, np.random.default_rng(18))
        assert not np.array_equal(a[0][0], b[0])
        assert a[0][0].shape == (3, 16, 16) and a[0][0].min() >= 0 and a[0][0].max() <= 1


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("crop", "area"), [0.0, 1.0]),
        (("crop", "area"), [0.5, 0.2]),
        (("crop", "area"), [0.1, 1.5]),
        (("crop", "ratio"), [1.5, 1.0]),
        (("crop", "method"), "torch"),
        (("blur", "sigma"), [0.0, 2.0]),
        (("blur", "method"), "box"),
        (("contrast_mean",), "global"),
        (("view1", "hue"), 0.7),
        (("view2", "solarize"), 1.2),
        (("std",), [0.2, 0.0, 0.2]),
    ],
)
def test_validate_rejects(path: tuple[str, ...], value: Any) -> None:
    aug = copy.deepcopy(A.AUGMENT_DEFAULTS)
    node = aug
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ValueError, match=".".join(path)):
        A.validate_augment(aug)
