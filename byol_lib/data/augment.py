"""The paper's two-view augmentation pipeline (JAX semantics, docs/sources.md) and PASSL's deviations.

Each view is split in two parts:

* ``ViewSampler`` (numpy only, per image, runs in DataLoader workers): random resized crop, TF-style
  bicubic resize, /255 and clip, flip; it also draws every random parameter of the device part, so the random
  streams stay per image and independent of batching.
* ``device_augment`` (paddle, whole batch at once): colour jitter (4 ops in a per-image random order, each
  clipped), grayscale, Gaussian blur (one depthwise conv per direction), solarisation, final clip and mean/std
  normalisation. A worker thus only decodes, crops, resizes and flips (``bench/loader.py`` measures the cost).

Coins follow JAX: an op with probability ``p`` is applied iff ``u <= p`` with ``u ~ U(0, 1)``.
PASSL deviations (docs/sources.md) are opt-in switches: ``crop.method = "passl_retry"`` (D12: the retry-loop
sampler and Pillow's bicubic resize, antialiased when downscaling), ``contrast_mean = "passl_per_row"`` (D3) and
``blur.method = "passl_per_tap"`` (D2).

Device parameter vector of one image (float32, length ``device_params_length(aug)``), indices below:
``[blur_on, solarize_on, jitter_on, gray_on, brightness_delta, contrast_factor, saturation_factor, hue_delta,
order_0, ..., order_3, sigma_0, ..., sigma_{k-1}]``: flags 0/1; the four jitter parameters ready to apply
(``delta = u_b * brightness``, ``factor = 1 + u_c * contrast``, ``1 + u_s * saturation``, ``u_h * hue`` with ``u``
uniform in [-1, 1]); ``order`` the permutation of the ops (0 brightness, 1 contrast, 2 saturation, 3 hue) applied
first to last; ``k = 1`` sigma for ``blur.method = "gaussian"`` or ``k = blur_taps(image_size, kernel_fraction)`` for
``"passl_per_tap"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
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
    idx = np.floor(pos).astype(np.int64)[:, None] + np.arange(-1, 3)
    weights = _keys_cubic(pos[:, None] - idx)
    weights[(idx < 0) | (idx >= in_size)] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    matrix = np.zeros((out_size, in_size + 4), dtype=np.float32)  # 2 spare columns each side take the outside taps
    matrix[np.arange(out_size)[:, None], idx + 2] = weights  # the 4 taps of a row are distinct columns
    return np.ascontiguousarray(matrix[:, 2:-2])


BAND_BLOCK = 16  # output rows (columns) per matrix product of a banded resize


def _apply_banded(matrix: np.ndarray, x: np.ndarray, along_rows: bool) -> np.ndarray:
    """``matrix @ x`` (``along_rows``) or ``x @ matrix.T``, ``BAND_BLOCK`` output indices at a time over only the
    input indices that block reads: a resize matrix has 4 non-zero taps per row, so a full product would spend most
    of its multiplications on zeros (3x slower per view at 224 px, measured in bench/loader.py's setting)."""
    out_size = matrix.shape[0]
    shape = (*x.shape[:-2], out_size, x.shape[-1]) if along_rows else (*x.shape[:-1], out_size)
    out = np.empty(shape, dtype=np.float32)
    for start in range(0, out_size, BAND_BLOCK):
        block = matrix[start:start + BAND_BLOCK]
        used = np.flatnonzero(block.any(axis=0))
        low, high = used[0], used[-1] + 1
        if along_rows:
            out[..., start:start + BAND_BLOCK, :] = np.matmul(block[:, low:high], x[..., low:high, :])
        else:
            out[..., start:start + BAND_BLOCK] = np.matmul(x[..., low:high], block[:, low:high].T)
    return out


def _resize_to_chw(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Apply row/col interpolation matrices to an HxWx3 image; float32 [3, out_h, out_w] in [0, 1]."""
    x = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    rows = rows * np.float32(1.0 / 255.0)
    h, w = x.shape[1:]
    if rows.shape[0] * w * (h + cols.shape[0]) <= cols.shape[0] * h * (w + rows.shape[0]):
        out = _apply_banded(cols, _apply_banded(rows, x, along_rows=True), along_rows=False)
    else:
        out = _apply_banded(rows, _apply_banded(cols, x, along_rows=False), along_rows=True)
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


# ----------------------------------------------------------------------------- per-image sampler


def blur_taps(image_size: int, kernel_fraction: float) -> int:
    """Number of blur taps: ``2 * int(image_size * kernel_fraction / 2) + 1`` (23 at 224, 3 at 32)."""
    return 2 * int(image_size * kernel_fraction / 2) + 1


def _num_sigmas(aug: Mapping[str, Any]) -> int:
    blur = aug["blur"]
    return blur_taps(aug["image_size"], blur["kernel_fraction"]) if blur["method"] == "passl_per_tap" else 1


BLUR_ON, SOLARIZE_ON, JITTER_ON, GRAY_ON = 0, 1, 2, 3
JITTER_VALUES = slice(4, 8)  # brightness delta, contrast factor, saturation factor, hue delta
JITTER_ORDER = slice(8, 12)
SIGMAS = 12  # first sigma; the rest follow


def device_params_length(aug: Mapping[str, Any]) -> int:
    """Length of the per-image device parameter vector (module docstring)."""
    return SIGMAS + _num_sigmas(aug)


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
        self.probs = np.array([p["flip"], p["color_jitter"], p["grayscale"], p["blur"], p["solarize"]])
        self.strengths = np.array([p["brightness"], p["contrast"], p["saturation"], p["hue"]])
        self.sigma = tuple(aug["blur"]["sigma"])
        self.num_sigmas = _num_sigmas(aug)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        image = _check_image(image)
        crop_rng = np.random.default_rng(rng.integers(np.iinfo(np.int64).max))
        box = sample_crop(image.shape[0], image.shape[1], self.crop, crop_rng)
        coins = rng.random(5) <= self.probs
        values = rng.uniform(-1.0, 1.0, size=4) * self.strengths
        order = rng.permutation(4)
        sigmas = rng.uniform(self.sigma[0], self.sigma[1], size=self.num_sigmas)
        flip, jitter, gray, blur, solarize = coins
        x = crop_and_resize(image, box, self.size, self.crop["method"])
        if flip:
            x = x[:, :, ::-1]
        params = np.concatenate([[blur, solarize, jitter, gray], values + [0.0, 1.0, 1.0, 0.0], order, sigmas])
        return np.ascontiguousarray(x, dtype=np.float32), params.astype(np.float32)


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
    kernels = blur_kernels(params[:, SIGMAS:], taps).repeat_interleave(c, axis=0)
    y = x.reshape([1, n * c, h, w])
    y = F.conv2d(y, kernels.reshape([n * c, 1, 1, taps]), padding=[0, radius], groups=n * c)
    y = F.conv2d(y, kernels.reshape([n * c, 1, taps, 1]), padding=[radius, 0], groups=n * c)
    return y.reshape([n, c, h, w])


Array = np.ndarray | paddle.Tensor  # the colour ops run on numpy arrays (CPU path) or paddle tensors (accelerators)


def _xp(x: Array) -> Any:
    """numpy or paddle, whichever holds ``x`` (both spell ``where``, ``minimum``, ``ones_like``, ``zeros_like``)."""
    return np if isinstance(x, np.ndarray) else paddle


def _reduce(x: Array, how: str, axis: int | tuple[int, ...]) -> Array:
    """``x.max`` / ``min`` / ``mean`` / ``sum`` over ``axis``, dimensions kept."""
    keep = {"keepdims": True} if isinstance(x, np.ndarray) else {"keepdim": True}
    return getattr(x, how)(axis=axis, **keep)


def _concat(parts: list[Array], axis: int) -> Array:
    return np.concatenate(parts, axis=axis) if isinstance(parts[0], np.ndarray) else paddle.concat(parts, axis=axis)


def _per_image(values: Array) -> Array:
    """``[N]`` values shaped ``[N, 1, 1, 1]`` to broadcast over images."""
    return values.reshape([-1, 1, 1, 1])


def adjust_brightness(x: Array, delta: Array) -> Array:
    """Additive brightness ``delta [N]`` per image of ``x [N,3,H,W]``, clipped to [0, 1]."""
    return (x + _per_image(delta)).clip(0.0, 1.0)


def adjust_contrast(x: Array, factor: Array, mean_mode: str = "per_channel") -> Array:
    """``f * (x - mean) + mean`` clipped, ``factor [N]``; mean per channel over H, W or, for D3, per row over W and
    C (PASSL takes the mean over the last two axes of an HWC image)."""
    mean = _reduce(x, "mean", (2, 3) if mean_mode == "per_channel" else (1, 3))
    return ((x - mean) * _per_image(factor) + mean).clip(0.0, 1.0)


def adjust_saturation(x: Array, factor: Array) -> Array:
    """HSV saturation times ``factor [N] >= 0`` (clipped to [0, 1]), back to RGB, clipped.

    Computed in closed form: with hue and value ``v = max`` fixed, every channel ``c`` maps to
    ``v - (v - c) * s' / s`` where ``s' / s = min(factor, 1 / s) = min(factor, v / (v - min))``.
    """
    xp = _xp(x)
    v = _reduce(x, "max", 1)
    delta = v - _reduce(x, "min", 1)
    gain = xp.minimum(_per_image(factor), v / xp.where(delta > 0, delta, xp.ones_like(delta)))
    return (v - (v - x) * gain).clip(0.0, 1.0)


def adjust_hue(x: Array, delta: Array) -> Array:
    """TF's RGB -> HSV, hue shifted by ``delta [N]`` modulo 1, HSV -> RGB, clipped."""
    xp = _xp(x)
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    v = _reduce(x, "max", 1)
    spread = v - _reduce(x, "min", 1)
    ones = xp.ones_like(spread)
    safe = xp.where(spread > 0, spread, ones)
    hue = xp.where(v == r, (g - b) / safe, xp.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = (xp.where(spread > 0, hue / 6.0, xp.zeros_like(hue)) + _per_image(delta)) % 1.0
    saturation = xp.where(v > 0, spread / xp.where(v > 0, v, ones), xp.zeros_like(v))
    sixths = hue * 6.0
    channels = _concat([(abs(sixths - 3.0) - 1.0).clip(0.0, 1.0), (2.0 - abs(sixths - 2.0)).clip(0.0, 1.0),
                        (2.0 - abs(sixths - 4.0)).clip(0.0, 1.0)], axis=1)
    return (((channels - 1.0) * saturation + 1.0) * v).clip(0.0, 1.0)


def to_grayscale(x: Array) -> Array:
    """Luma 0.2989 R + 0.5870 G + 0.1140 B replicated to 3 channels."""
    luma = x[:, 0:1] * LUMA[0] + x[:, 1:2] * LUMA[1] + x[:, 2:3] * LUMA[2]
    return _concat([luma, luma, luma], axis=1)


OpOnImages = Callable[[Array, Array], Array]


def _apply_where(x: Array, selected: Array, op: OpOnImages, values: Array, fixed_shape: bool) -> Array:
    """``op(image, its values)`` on the images with ``selected [N]`` true, the others unchanged.

    ``fixed_shape``: ``op`` runs on the whole batch and the result is selected per image (no host
    synchronisation, one shape: for accelerators). Otherwise only the selected images are gathered, changed and
    scattered back (the CPU path: no work on the others). Equal up to float rounding.
    """
    if fixed_shape:
        return paddle.where(_per_image(selected), op(x, values), x)
    if isinstance(x, np.ndarray):
        chosen = np.flatnonzero(selected)
        if len(chosen):
            x[chosen] = op(x[chosen], values[chosen])
        return x
    chosen = paddle.nonzero(selected).flatten()
    if chosen.shape[0] == 0:
        return x
    if chosen.shape[0] == x.shape[0]:
        return op(x, values)
    return paddle.scatter(x, chosen, op(paddle.gather(x, chosen), paddle.gather(values, chosen)))


def _colour(x: Array, params: Array, aug: Mapping[str, Any], fixed_shape: bool) -> Array:
    """Colour jitter, then grayscale, of the images whose flags are on. Jitter: at each of the 4 positions of its
    order, each image runs the op its permutation puts there."""
    mean_mode = aug["contrast_mean"]
    ops: tuple[OpOnImages, ...] = (
        adjust_brightness,
        lambda y, factor: adjust_contrast(y, factor, mean_mode),
        adjust_saturation,
        adjust_hue,
    )
    jitter_on = params[:, JITTER_ON] > 0.5
    order = params[:, JITTER_ORDER]
    for position in range(4):
        for op_index, op in enumerate(ops):
            selected = jitter_on & (order[:, position] == float(op_index))
            x = _apply_where(x, selected, op, params[:, JITTER_VALUES.start + op_index], fixed_shape)
    return _apply_where(x, params[:, GRAY_ON] > 0.5, lambda images, _: to_grayscale(images), params, fixed_shape)


def device_augment(x: paddle.Tensor, params: paddle.Tensor, aug: Mapping[str, Any],
                   fixed_shape: bool | None = None) -> paddle.Tensor:
    """Colour jitter, grayscale, blur, solarise, clip and normalise a batch ``x [N,3,S,S]`` with per-image
    ``params`` (module docstring), in the paper's order.

    Jitter and grayscale as in JAX (each jitter op clipped to [0, 1]). Blur: the same 1-D filter horizontally then
    vertically, each pass one depthwise (grouped) cross-correlation over all ``N*3`` channels, zero 'SAME'
    padding. Solarise: ``x -> 1 - x`` where ``x >= 0.5``. Images whose flag is 0 pass an op unchanged.
    ``fixed_shape`` (default: on accelerators, not on the CPU) chooses how per-image ops run (``_apply_where``);
    without it the colour ops run in numpy on the images they apply to (Paddle's CPU kernels with per-image
    broadcasting were about 15x slower).
    """
    n, c, h, w = x.shape
    size, length = aug["image_size"], device_params_length(aug)
    if (c, h, w) != (3, size, size) or tuple(params.shape) != (n, length):
        raise ValueError(
            f"expected x [N, 3, {size}, {size}] and params [N, {length}], got {x.shape} and {params.shape}"
        )
    if fixed_shape is None:
        fixed_shape = not x.place.is_cpu_place()
    params = params.astype(x.dtype)
    if fixed_shape:
        y = _colour(x, params, aug, fixed_shape=True)
    else:
        y = paddle.to_tensor(_colour(x.numpy(), params.numpy(), aug, fixed_shape=False), place=x.place)
    y = _apply_where(y, params[:, BLUR_ON] > 0.5, lambda images, p: _blur(images, p, aug), params, fixed_shape)
    solarize_on = _per_image(params[:, SOLARIZE_ON] > 0.5)
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
