"""The paper's two-view augmentation pipeline (JAX semantics, docs/sources.md) and PASSL's deviations.

Each view is split in two parts:

* ``ViewSampler`` (numpy only, per image, runs in DataLoader workers): random resized crop, TF-style
  bicubic resize, /255 and clip, flip, colour jitter (4 ops in a random order, each clipped),
  grayscale; it also draws the per-image parameters of the device part.
* ``device_augment`` (paddle, whole batch at once): Gaussian blur (one depthwise conv per direction),
  solarisation, final clip and mean/std normalisation.

Coins follow JAX: an op with probability ``p`` is applied iff ``u <= p`` with ``u ~ U(0, 1)``.
PASSL deviations (docs/sources.md) are opt-in switches: ``crop.method = "passl_retry"`` (D12: the retry-loop
sampler and Pillow's bicubic resize, antialiased when downscaling), ``contrast_mean = "passl_per_row"`` (D3) and
``blur.method = "passl_per_tap"`` (D2).

Device parameter vector of one image (float32, length ``device_params_length(aug)``):
``[blur_on, solarize_on, sigma_0, ..., sigma_{k-1}]`` with flags 0/1 and ``k = 1`` for
``blur.method = "gaussian"`` or ``k = blur_taps(image_size, kernel_fraction)`` for ``"passl_per_tap"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import paddle
import paddle.nn.functional as F
from PIL import Image

AUGMENT_DEFAULTS: dict[str, Any] = {
    "image_size": 224,
    "crop": {"area": [0.08, 1.0], "ratio": [0.75, 4.0 / 3.0], "method": "jax"},
    "blur": {"sigma": [0.1, 2.0], "kernel_fraction": 0.1, "method": "gaussian"},
    "contrast_mean": "per_channel",
    "view1": {
        "flip": 0.5, "color_jitter": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2,
        "hue": 0.1, "grayscale": 0.2, "blur": 1.0, "solarize": 0.0,
    },
    "view2": {
        "flip": 0.5, "color_jitter": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2,
        "hue": 0.1, "grayscale": 0.2, "blur": 0.1, "solarize": 0.2,
    },
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "eval_resize": "jax",
}

CROP_METHODS = ("jax", "passl_retry")
BLUR_METHODS = ("gaussian", "passl_per_tap")
CONTRAST_MEANS = ("per_channel", "passl_per_row")
EVAL_RESIZES = ("jax", "passl")
LUMA = (0.2989, 0.5870, 0.1140)
PASSL_CROP_ATTEMPTS = 10
EVAL_RESIZE_RATIO = 256.0 / 224.0
LINEAR_FLIP_PROB = 0.5


def _check_range(key: str, pair: Any, low: float, high: float, low_open: bool) -> None:
    """``pair`` must be ``[a, b]`` with ``low (<|<=) a <= b <= high``."""
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        raise ValueError(f"key 'augmentation.{key}' = {pair!r} must be a [low, high] pair")
    a, b = pair
    if (a <= low if low_open else a < low) or not a <= b <= high:
        bracket = "(" if low_open else "["
        raise ValueError(f"key 'augmentation.{key}' = {pair!r} needs low <= high within {bracket}{low}, {high}]")


def validate_augment(aug: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the key when a probability or range is impossible."""
    for view in ("view1", "view2"):
        for key in ("flip", "color_jitter", "grayscale", "blur", "solarize"):
            p = aug[view][key]
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"key 'augmentation.{view}.{key}' = {p!r} must be a probability in [0, 1]")
        for key, high in (("brightness", math.inf), ("contrast", 1.0), ("saturation", 1.0), ("hue", 0.5)):
            v = aug[view][key]
            if not 0.0 <= v <= high:
                raise ValueError(f"key 'augmentation.{view}.{key}' = {v!r} must be in [0, {high}]")
    if aug["image_size"] <= 0:
        raise ValueError(f"key 'augmentation.image_size' = {aug['image_size']!r} must be > 0")
    _check_range("crop.area", aug["crop"]["area"], 0.0, 1.0, low_open=True)
    _check_range("crop.ratio", aug["crop"]["ratio"], 0.0, math.inf, low_open=True)
    _check_range("blur.sigma", aug["blur"]["sigma"], 0.0, math.inf, low_open=True)
    if not 0.0 <= aug["blur"]["kernel_fraction"] <= 1.0:
        raise ValueError(
            f"key 'augmentation.blur.kernel_fraction' = {aug['blur']['kernel_fraction']!r} must be in [0, 1]"
        )
    for key, value, allowed in (
        ("crop.method", aug["crop"]["method"], CROP_METHODS),
        ("blur.method", aug["blur"]["method"], BLUR_METHODS),
        ("contrast_mean", aug["contrast_mean"], CONTRAST_MEANS),
        ("eval_resize", aug["eval_resize"], EVAL_RESIZES),
    ):
        if value not in allowed:
            raise ValueError(f"key 'augmentation.{key}' = {value!r} is not one of {list(allowed)}")
    for key in ("mean", "std"):
        if len(aug[key]) != 3:
            raise ValueError(f"key 'augmentation.{key}' = {aug[key]!r} must have 3 values (RGB)")
    if min(aug["std"]) <= 0:
        raise ValueError(f"key 'augmentation.std' = {aug['std']!r} must be > 0")


# ----------------------------------------------------------------------------- geometry (numpy)


def sample_crop(
    height: int, width: int, crop: Mapping[str, Any], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """Draw a random resized crop ``(top, left, h, w)`` of an ``height x width`` image.

    ``"jax"``: one draw; area fraction ~ U(area), ratio log-uniform in ``ratio``,
    ``w = round(sqrt(A r))``, ``h = round(sqrt(A / r))`` (round half to even, like ``tf.round``), each
    clamped to ``[1, image size]``; offsets uniform integers.
    ``"passl_retry"`` (D12): up to 10 attempts of the same area/ratio draw, accepted when
    ``0 < w <= width`` and ``0 < h <= height`` (then uniform offsets); otherwise a central crop of the
    whole image, narrowed to the nearest allowed ratio (``h = round(width / ratio_low)`` if the image
    is narrower than ``ratio_low``, ``w = round(height * ratio_high)`` if wider than ``ratio_high``),
    at offset ``((height - h) // 2, (width - w) // 2)``.
    """
    area = float(height * width)
    (a_low, a_high), (r_low, r_high) = crop["area"], crop["ratio"]
    log_low, log_high = math.log(r_low), math.log(r_high)
    attempts = PASSL_CROP_ATTEMPTS if crop["method"] == "passl_retry" else 1
    for _ in range(attempts):
        target = area * rng.uniform(a_low, a_high)
        ratio = math.exp(rng.uniform(log_low, log_high))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if crop["method"] == "jax":
            w, h = min(max(w, 1), width), min(max(h, 1), height)
        elif not (0 < w <= width and 0 < h <= height):
            continue
        top = int(rng.integers(0, height - h + 1))
        left = int(rng.integers(0, width - w + 1))
        return top, left, h, w
    w, h = width, height
    if width / height < r_low:
        h = round(width / r_low)
    elif width / height > r_high:
        w = round(height * r_high)
    return (height - h) // 2, (width - w) // 2, h, w


def _keys_cubic(d: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys cubic convolution kernel at distances ``d``."""
    d = np.abs(d)
    near = ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
    far = ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a
    return np.where(d <= 1.0, near, np.where(d < 2.0, far, 0.0))


def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``[out_size, in_size]`` float32 matrix of TF's bicubic resize along one axis.

    Keys a = -0.5, half-pixel centres (source position ``(i + 0.5) * in/out - 0.5``), no antialias;
    taps outside the image get weight 0 and the remaining weights are renormalised to sum 1
    (TF's rule for half-pixel bicubic). TF quantises the weights to a 1024-entry table; these are exact.
    """
    pos = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    base = np.floor(pos)
    idx = base[:, None].astype(np.int64) + np.arange(-1, 3)
    weights = _keys_cubic(pos[:, None] - idx)
    inside = (idx >= 0) & (idx < in_size)
    weights = np.where(inside, weights, 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.broadcast_to(np.arange(out_size)[:, None], idx.shape)
    matrix[rows[inside], idx[inside]] = weights[inside]
    return matrix.astype(np.float32)


def _resize_to_chw(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Apply row/col interpolation matrices to an HxWx3 image; float32 [3, out_h, out_w] in [0, 1]."""
    x = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    rows = rows * np.float32(1.0 / 255.0)
    h, w = x.shape[1:]
    if rows.shape[0] * w * (h + cols.shape[0]) <= cols.shape[0] * h * (w + rows.shape[0]):
        out = np.matmul(np.matmul(rows, x), cols.T)
    else:
        out = np.matmul(rows, np.matmul(x, cols.T))
    return np.clip(out, 0.0, 1.0, out=out)


def crop_and_resize(image: np.ndarray, box: tuple[int, int, int, int], size: int, method: str = "jax") -> np.ndarray:
    """Crop ``box = (top, left, h, w)`` of a uint8 HxWx3 image, bicubic-resize to ``size``, /255, clip.

    ``method`` is the crop method: ``"jax"`` resizes with TF's bicubic (no antialias); ``"passl_retry"`` (D12) as
    PASSL's ``RandomResizedCrop`` on PIL images, with Pillow's bicubic, which widens its filter when downscaling
    (antialias) and rounds to uint8 before PASSL's /255."""
    top, left, h, w = box
    patch = image[top:top + h, left:left + w]
    if method == "passl_retry":
        resized = Image.fromarray(np.ascontiguousarray(patch, dtype=np.uint8)).resize((size, size), Image.BICUBIC)
        return np.ascontiguousarray(np.asarray(resized, dtype=np.float32).transpose(2, 0, 1)) * np.float32(1 / 255)
    return _resize_to_chw(patch, resize_matrix(h, size), resize_matrix(w, size))


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    return image


# ----------------------------------------------------------------------------- colour (numpy, CHW)


def rgb_to_hsv(x: np.ndarray) -> np.ndarray:
    """TF-style RGB -> HSV on a [3, ...] array in [0, 1]; hue in [0, 1)."""
    r, g, b = x
    v = x.max(axis=0)
    delta = v - x.min(axis=0)
    s = np.where(v > 0, delta / np.where(v > 0, v, 1.0), 0.0)
    safe = np.where(delta > 0, delta, 1.0)
    h = np.where(v == r, (g - b) / safe, np.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = np.where(delta > 0, h / 6.0, 0.0)
    h = np.where(h < 0, h + 1.0, h)
    return np.stack([h, s, v]).astype(x.dtype, copy=False)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """TF-style HSV -> RGB on a [3, ...] array."""
    h, s, v = hsv
    dh = h * 6.0
    dr = np.clip(np.abs(dh - 3.0) - 1.0, 0.0, 1.0)
    dg = np.clip(2.0 - np.abs(dh - 2.0), 0.0, 1.0)
    db = np.clip(2.0 - np.abs(dh - 4.0), 0.0, 1.0)
    return ((np.stack([dr, dg, db]) - 1.0) * s + 1.0) * v


def adjust_brightness(x: np.ndarray, delta: float) -> np.ndarray:
    """Additive brightness, clipped to [0, 1]."""
    return np.clip(x + np.float32(delta), 0.0, 1.0)


def adjust_contrast(x: np.ndarray, factor: float, mean_mode: str = "per_channel") -> np.ndarray:
    """``f * (x - mean) + mean`` clipped; mean per channel over H, W or, for D3, per row over W and C."""
    axes = (1, 2) if mean_mode == "per_channel" else (0, 2)
    mean = x.mean(axis=axes, keepdims=True)
    return np.clip((x - mean) * np.float32(factor) + mean, 0.0, 1.0)


def adjust_saturation(x: np.ndarray, factor: float) -> np.ndarray:
    """HSV saturation times ``factor >= 0`` (clipped to [0, 1]), back to RGB, clipped.

    Computed in closed form: with hue and value ``v = max`` fixed, every channel ``c`` maps to
    ``v - (v - c) * s' / s`` where ``s' / s = min(factor, 1 / s) = min(factor, v / (v - min))``.
    """
    v = x.max(axis=0)
    delta = v - x.min(axis=0)
    gain = np.minimum(np.float32(factor), v / np.where(delta > 0, delta, 1.0))
    return np.clip(v - (v - x) * gain, 0.0, 1.0)


def adjust_hue(x: np.ndarray, delta: float) -> np.ndarray:
    """HSV hue shifted by ``delta`` modulo 1, back to RGB, clipped."""
    hsv = rgb_to_hsv(x)
    hsv[0] = np.mod(hsv[0] + np.float32(delta), 1.0)
    return np.clip(hsv_to_rgb(hsv), 0.0, 1.0)


def to_grayscale(x: np.ndarray) -> np.ndarray:
    """Luma 0.2989 R + 0.5870 G + 0.1140 B replicated to 3 channels."""
    luma = np.tensordot(np.asarray(LUMA, dtype=x.dtype), x, axes=1)
    return np.broadcast_to(luma, x.shape).copy()


# ----------------------------------------------------------------------------- per-image sampler


def blur_taps(image_size: int, kernel_fraction: float) -> int:
    """Number of blur taps: ``2 * int(image_size * kernel_fraction / 2) + 1`` (23 at 224, 3 at 32)."""
    return 2 * int(image_size * kernel_fraction / 2) + 1


def _num_sigmas(aug: Mapping[str, Any]) -> int:
    blur = aug["blur"]
    return blur_taps(aug["image_size"], blur["kernel_fraction"]) if blur["method"] == "passl_per_tap" else 1


def device_params_length(aug: Mapping[str, Any]) -> int:
    """Length of the per-image device parameter vector ``[blur_on, solarize_on, sigma...]``."""
    return 2 + _num_sigmas(aug)


class ViewSampler:
    """One view's CPU part: ``image (uint8 HxWx3), rng -> (float32 [3,S,S] in [0,1], device params)``.

    Random draws per call, in this fixed order whatever the probabilities and the crop method: the seed
    of the crop's own generator (so PASSL's retry-loop crop, D12, which draws a varying number of
    values, shifts no other draw), 5 coins (flip, jitter, grayscale, blur, solarise), 4 jitter
    strengths (brightness, contrast, saturation, hue), the jitter permutation, the sigma(s). So a
    variant that changes a probability or a method sees the same crops, coins and strengths as the
    baseline with the same generator: ablations are paired (common random numbers).
    """

    def __init__(self, aug: Mapping[str, Any], view: str) -> None:
        if view not in ("view1", "view2"):
            raise ValueError(f"view must be 'view1' or 'view2', got {view!r}")
        p = aug[view]
        self.size = int(aug["image_size"])
        self.crop = dict(aug["crop"])
        self.contrast_mean = aug["contrast_mean"]
        self.probs = np.array([p["flip"], p["color_jitter"], p["grayscale"], p["blur"], p["solarize"]])
        self.strengths = np.array([p["brightness"], p["contrast"], p["saturation"], p["hue"]])
        self.sigma = tuple(aug["blur"]["sigma"])
        self.num_sigmas = _num_sigmas(aug)

    def jitter(self, x: np.ndarray, values: np.ndarray, order: np.ndarray) -> np.ndarray:
        """Apply brightness/contrast/saturation/hue ops (``values`` in [-1, 1] scaled by strength)."""
        b, c, s, h = values * self.strengths
        ops = (
            lambda y: adjust_brightness(y, b),
            lambda y: adjust_contrast(y, 1.0 + c, self.contrast_mean),
            lambda y: adjust_saturation(y, 1.0 + s),
            lambda y: adjust_hue(y, h),
        )
        for i in order:
            x = ops[i](x)
        return x

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        image = _check_image(image)
        crop_rng = np.random.default_rng(rng.integers(np.iinfo(np.int64).max))
        box = sample_crop(image.shape[0], image.shape[1], self.crop, crop_rng)
        coins = rng.random(5) <= self.probs
        values = rng.uniform(-1.0, 1.0, size=4)
        order = rng.permutation(4)
        sigmas = rng.uniform(self.sigma[0], self.sigma[1], size=self.num_sigmas)
        flip, jitter, gray, blur, solarize = coins
        x = crop_and_resize(image, box, self.size, self.crop["method"])
        if flip:
            x = x[:, :, ::-1]
        if jitter:
            x = self.jitter(x, values, order)
        if gray:
            x = to_grayscale(x)
        params = np.concatenate([[float(blur), float(solarize)], sigmas]).astype(np.float32)
        return np.ascontiguousarray(x, dtype=np.float32), params


# ----------------------------------------------------------------------------- batched device part


def normalize(x: paddle.Tensor, aug: Mapping[str, Any]) -> paddle.Tensor:
    """``(x - mean) / std`` per channel of an [N, 3, H, W] batch."""
    mean = paddle.to_tensor(aug["mean"], dtype=x.dtype).reshape([1, 3, 1, 1])
    std = paddle.to_tensor(aug["std"], dtype=x.dtype).reshape([1, 3, 1, 1])
    return (x - mean) / std


def blur_kernels(sigmas: paddle.Tensor, taps: int) -> paddle.Tensor:
    """Normalised 1-D filters ``[N, taps]``: ``exp(-x_i^2 / (2 sigma_i^2))`` at ``x_i = i - taps // 2``.

    ``sigmas`` is ``[N, 1]`` (one Gaussian per image) or ``[N, taps]`` (D2: one sigma per tap).
    """
    offsets = paddle.arange(taps, dtype=sigmas.dtype) - float(taps // 2)
    kernels = paddle.exp(-(offsets**2) / (2.0 * sigmas**2))
    return kernels / kernels.sum(axis=1, keepdim=True)


def _blur(x: paddle.Tensor, params: paddle.Tensor, aug: Mapping[str, Any]) -> paddle.Tensor:
    """Every image of ``x [N,3,S,S]`` blurred with its sigma(s): two depthwise passes over all ``N*3`` channels."""
    n, c, h, w = x.shape
    taps = blur_taps(h, aug["blur"]["kernel_fraction"])
    radius = taps // 2
    kernels = blur_kernels(params[:, 2:], taps).repeat_interleave(c, axis=0)
    y = x.reshape([1, n * c, h, w])
    y = F.conv2d(y, kernels.reshape([n * c, 1, 1, taps]), padding=[0, radius], groups=n * c)
    y = F.conv2d(y, kernels.reshape([n * c, 1, taps, 1]), padding=[radius, 0], groups=n * c)
    return y.reshape([n, c, h, w])


def device_augment(x: paddle.Tensor, params: paddle.Tensor, aug: Mapping[str, Any]) -> paddle.Tensor:
    """Blur, solarise, clip and normalise a batch ``x [N,3,S,S]`` with per-image ``params``.

    Blur: the same 1-D filter horizontally then vertically, each pass one depthwise (grouped)
    cross-correlation over all ``N*3`` channels, zero 'SAME' padding; images with ``blur_on = 0``
    pass through unchanged. Solarise: ``x -> 1 - x`` where ``x >= 0.5`` for images with
    ``solarize_on = 1``.
    """
    n, c, h, w = x.shape
    size, length = aug["image_size"], device_params_length(aug)
    if (c, h, w) != (3, size, size) or tuple(params.shape) != (n, length):
        raise ValueError(
            f"expected x [N, 3, {size}, {size}] and params [N, {length}], got {x.shape} and {params.shape}"
        )
    params = params.astype(x.dtype)
    blur_on = params[:, 0] > 0.5
    if x.place.is_cpu_place():  # convolve only the images to blur (view 2: ~10 %); equal up to float rounding
        chosen = paddle.nonzero(blur_on).flatten()
        y = x
        if chosen.shape[0] > 0:
            blurred = _blur(paddle.gather(x, chosen), paddle.gather(params, chosen), aug)
            y = paddle.scatter(x, chosen, blurred) if chosen.shape[0] < n else blurred
    else:  # one fixed-shape pass on accelerators, no host synchronisation
        y = paddle.where(blur_on.reshape([n, 1, 1, 1]), _blur(x, params, aug), x)
    solarize_on = (params[:, 1] > 0.5).reshape([n, 1, 1, 1])
    y = paddle.where(paddle.logical_and(solarize_on, y >= 0.5), 1.0 - y, y)
    return normalize(paddle.clip(y, 0.0, 1.0), aug)


# ----------------------------------------------------------------------------- evaluation transforms


def eval_transform(image: np.ndarray, aug: Mapping[str, Any]) -> np.ndarray:
    """Shorter side resized to ``round(S * 256 / 224)``, centre crop ``S``; float32 [3,S,S] in [0,1].

    ``eval_resize: jax`` (paper: bicubic): TF's bicubic, crop offset ``(resized - S + 1) // 2`` per axis (JAX's
    rounding); only the kept rows and columns of the resized image are computed. ``passl``: ``_passl_eval``.
    """
    image = _check_image(image)
    size = int(aug["image_size"])
    height, width = image.shape[:2]
    short = round(size * EVAL_RESIZE_RATIO)
    if aug["eval_resize"] == "passl":
        return _passl_eval(image, short, size)
    scale = short / min(height, width)
    new_h, new_w = (short, round(width * scale)) if height <= width else (round(height * scale), short)
    top, left = (new_h - size + 1) // 2, (new_w - size + 1) // 2
    rows = resize_matrix(height, new_h)[top:top + size]
    cols = resize_matrix(width, new_w)[left:left + size]
    return _resize_to_chw(image, rows, cols)


def _passl_eval(image: np.ndarray, short: int, size: int) -> np.ndarray:
    """PASSL's linear-eval val transform (``Resize(256)``, ``CenterCrop(224)`` of paddle.vision on a PIL image):
    Pillow's bilinear (the transform's default interpolation; antialiased when downscaling) of the shorter side to
    ``short``, the longer to ``int(short * long / short_side)``, uint8; crop offset ``round((resized - S) / 2)``."""
    height, width = image.shape[:2]
    new_h, new_w = (short, int(short * width / height)) if height <= width else (int(short * height / width), short)
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).resize((new_w, new_h),
                                                                                             Image.BILINEAR))
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    patch = resized[top:top + size, left:left + size].transpose(2, 0, 1).astype(np.float32)
    return np.ascontiguousarray(patch) * np.float32(1 / 255)


def linear_train_transform(image: np.ndarray, aug: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Linear-eval training view (paper App. C.1): random resized crop (same sampler) + flip (p 0.5).

    ``eval_resize: passl`` (D18, PASSL's linear protocol): ``_passl_linear_train``."""
    image = _check_image(image)
    box = sample_crop(image.shape[0], image.shape[1], aug["crop"], rng)
    if aug["eval_resize"] == "passl":
        return _passl_linear_train(image, box, int(aug["image_size"]), rng)
    x = crop_and_resize(image, box, int(aug["image_size"]), aug["crop"]["method"])
    if rng.random() <= LINEAR_FLIP_PROB:
        x = x[:, :, ::-1]
    return np.ascontiguousarray(x)


def _passl_linear_train(image: np.ndarray, box: tuple[int, int, int, int], size: int,
                        rng: np.random.Generator) -> np.ndarray:
    """PASSL's linear-eval train transform (``ByolRandomCrop``, ``RandomHorizontalFlip``, ``Resize((S, S), bicubic)``
    on a PIL image, /255): the crop ``box`` (PASSL's crop is the JAX draw), flipped when ``u < 0.5``, then Pillow's
    bicubic to ``size`` (antialiased when downscaling) rounded to uint8."""
    top, left, h, w = box
    patch = image[top:top + h, left:left + w]
    if rng.random() < LINEAR_FLIP_PROB:
        patch = patch[:, ::-1]
    return crop_and_resize(np.ascontiguousarray(patch), (0, 0, h, w), size, "passl_retry")  # Pillow's bicubic
