"""The embedded default dataset: generated 32x32 RGB images of 10 shapes ("Synthetic").

What it is. Every image shows one large foreground shape on a background. The shape *type* is the
class: disk, square, triangle, plus, ring, star, bars, L-shape, crescent, hourglass. The shape
spans about 40-80% of the image side and is drawn at a random position, scale, rotation and
mirroring, anti-aliased by 4x4 supersampling. Its colour, the background colour, a background
colour gradient, a faint stripe texture on the shape and pixel noise are drawn per image,
independently of the label (foreground and background differ in luma by at least 0.3 so the shape
survives grayscale and blur).

Why. BYOL (reference §4, §7.3) learns what two augmented views of one image share. Here the only
thing that predicts the label is the shape, which survives random crops, flips, blur and colour
changes; the colours are image-specific but carry no class information. Two crops of the same
image share its colour statistics, so without colour augmentation a network can match the views
on colour alone -- the shortcut the paper's colour ablation (72.5 -> 63.4 top-1) points at on
ImageNet -- and its features then say little about the class. A random-init backbone sees mostly
colour and position, so linear evaluation separates it from a BYOL-trained one.

Determinism and cost. Images come in blocks of 10 (one per class, in a random order), each block
drawn from its own generator seeded by (seed, split, block index): the same (split, seed, size,
count) gives bit-identical arrays, the first N images do not depend on count, every multiple of 10
is exactly class-balanced, and train and val come from disjoint streams. 5,000 + 1,000 images take
a few seconds; they are cached as ``.npz`` in ``$BYOL_CACHE_DIR`` (default ``~/.cache/byol-repro``)
under a name holding the generator version and the parameters, written atomically.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

GENERATOR_VERSION = 1
SHAPE_NAMES: tuple[str, ...] = (
    "disk", "square", "triangle", "plus", "ring", "star", "bars", "L-shape", "crescent", "hourglass",
)
DEFAULT_COUNTS: dict[str, int] = {"train": 5000, "val": 1000}
SPLIT_STREAMS: dict[str, int] = {"train": 0, "val": 1}
SUPERSAMPLE = 4
_BLOCKS_PER_CHUNK = 25
_MIN_LUMA_GAP = 0.3
_LUMA = np.array([0.299, 0.587, 0.114])

logger = logging.getLogger(__name__)

Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _disk(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 0.85**2


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.68


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Equilateral, circumradius 1: inside the three edges at distance 0.5 from the centre."""
    inside = np.ones(u.shape, dtype=bool)
    for angle in (np.pi / 2, np.pi * 7 / 6, np.pi * 11 / 6):
        inside &= -(u * np.cos(angle) + v * np.sin(angle)) <= 0.5
    return inside


def _plus(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.3) & (av <= 0.9)) | ((av <= 0.3) & (au <= 0.9))


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    return (r2 >= 0.5**2) & (r2 <= 0.9**2)


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Five points at radius 1, inner corners at radius 0.45, by folding the angle onto one edge."""
    sector = 2 * np.pi / 5
    t = np.mod(np.arctan2(v, u), sector)
    t = np.minimum(t, sector - t)
    r = np.sqrt(u * u + v * v)
    outer = np.array([1.0, 0.0])
    inner = 0.45 * np.array([np.cos(sector / 2), np.sin(sector / 2)])
    edge = inner - outer
    normal = np.array([-edge[1], edge[0]])
    normal *= np.sign(normal @ -outer)
    return (r * np.cos(t) - outer[0]) * normal[0] + (r * np.sin(t) - outer[1]) * normal[1] >= 0


def _bars(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    av = np.abs(v)
    return (np.abs(u) <= 0.85) & (av <= 0.85) & ((av <= 0.17) | (av >= 0.51))


def _l_shape(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    upright = (u >= -0.7) & (u <= -0.15) & (np.abs(v) <= 0.8)
    foot = (np.abs(u) <= 0.7) & (v >= 0.25) & (v <= 0.8)
    return upright | foot


def _crescent(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u * u + v * v <= 0.85**2) & ((u - 0.4) ** 2 + v * v > 0.7**2)


def _hourglass(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    av = np.abs(v)
    return (av <= 0.85) & (np.abs(u) <= 0.85 * av + 0.08)


SHAPES: tuple[Mask, ...] = (
    _disk, _square, _triangle, _plus, _ring, _star, _bars, _l_shape, _crescent, _hourglass,
)


def _block_params(seed: int, split: str, block: int, size: int) -> dict[str, np.ndarray]:
    """Labels and nuisance factors of the 10 images of one block, from the block's own stream."""
    rng = np.random.default_rng([seed, SPLIT_STREAMS[split], block])
    n = len(SHAPES)
    scale = rng.uniform(0.22, 0.44, n)
    margin = np.maximum(0.5 - 0.8 * scale, 0.0)
    fg = rng.uniform(0.0, 1.0, (n, 3))
    bg = rng.uniform(0.0, 1.0, (n, 3))
    close = np.abs((fg - bg) @ _LUMA) < _MIN_LUMA_GAP
    while close.any():
        fg[close] = rng.uniform(0.0, 1.0, (int(close.sum()), 3))
        close = np.abs((fg - bg) @ _LUMA) < _MIN_LUMA_GAP
    return {
        "label": rng.permutation(n),
        "scale": scale,
        "cx": 0.5 + margin * rng.uniform(-1.0, 1.0, n),
        "cy": 0.5 + margin * rng.uniform(-1.0, 1.0, n),
        "angle": rng.uniform(0.0, 2 * np.pi, n),
        "mirror": rng.choice([-1.0, 1.0], n),
        "fg": fg,
        "bg": bg,
        "grad_amp": rng.uniform(-0.15, 0.15, (n, 3)),
        "grad_dir": rng.uniform(0.0, 2 * np.pi, n),
        "tex_amp": rng.uniform(0.0, 0.08, n),
        "tex_freq": rng.uniform(2.0, 6.0, n),
        "tex_dir": rng.uniform(0.0, 2 * np.pi, n),
        "tex_phase": rng.uniform(0.0, 2 * np.pi, n),
        "noise": rng.normal(0.0, 1.0, (n, size, size, 3)) * rng.uniform(0.0, 0.03, (n, 1, 1, 1)),
    }


def _render(p: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Rasterise a batch of images described by stacked block parameters into uint8 (N, H, W, 3)."""
    n = len(p["label"])
    fine = (np.arange(size * SUPERSAMPLE, dtype=np.float32) + 0.5) / (size * SUPERSAMPLE)
    dx = fine[None, None, :] - p["cx"].astype(np.float32)[:, None, None]
    dy = fine[None, :, None] - p["cy"].astype(np.float32)[:, None, None]
    cos = (np.cos(p["angle"]) / p["scale"]).astype(np.float32)[:, None, None]
    sin = (np.sin(p["angle"]) / p["scale"]).astype(np.float32)[:, None, None]
    u = (cos * dx + sin * dy) * p["mirror"].astype(np.float32)[:, None, None]
    v = cos * dy - sin * dx
    mask = np.zeros(u.shape, dtype=bool)
    for label, shape in enumerate(SHAPES):
        rows = p["label"] == label
        mask[rows] = shape(u[rows], v[rows])
    k = SUPERSAMPLE
    alpha = mask.reshape(n, size, k, size, k).mean(axis=(2, 4))[..., None]

    coarse = (np.arange(size) + 0.5) / size - 0.5
    ys, xs = coarse[None, :, None], coarse[None, None, :]

    def along(direction: np.ndarray) -> np.ndarray:
        return xs * np.cos(direction)[:, None, None] + ys * np.sin(direction)[:, None, None]

    background = p["bg"][:, None, None, :] + p["grad_amp"][:, None, None, :] * along(p["grad_dir"])[..., None]
    stripes = np.sin(2 * np.pi * p["tex_freq"][:, None, None] * along(p["tex_dir"]) + p["tex_phase"][:, None, None])
    foreground = p["fg"][:, None, None, :] + (p["tex_amp"][:, None, None] * stripes)[..., None]
    image = background * (1.0 - alpha) + foreground * alpha + p["noise"]
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def generate(split: str, seed: int, count: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images (uint8, N x size x size x 3) and labels (int64) of one split's stream."""
    if split not in SPLIT_STREAMS:
        raise ValueError(f"split {split!r} must be one of {sorted(SPLIT_STREAMS)}")
    n = len(SHAPES)
    blocks = -(-count // n)
    images, labels = [], []
    for start in range(0, blocks, _BLOCKS_PER_CHUNK):
        chunk = [_block_params(seed, split, b, size) for b in range(start, min(start + _BLOCKS_PER_CHUNK, blocks))]
        params = {key: np.concatenate([c[key] for c in chunk]) for key in chunk[0]}
        images.append(_render(params, size))
        labels.append(params["label"])
    return np.concatenate(images)[:count], np.concatenate(labels)[:count].astype(np.int64)


def cache_dir() -> Path:
    """``$BYOL_CACHE_DIR`` or ``~/.cache/byol-repro``."""
    return Path(os.environ.get("BYOL_CACHE_DIR") or Path.home() / ".cache" / "byol-repro")


def cache_path(split: str, seed: int, count: int, size: int) -> Path:
    """Cache file of one parameter set; the name changes with the generator version."""
    return cache_dir() / f"synthetic-v{GENERATOR_VERSION}-{split}-seed{seed}-n{count}-{size}px.npz"


def load_or_generate(split: str, seed: int, count: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Read the cached arrays, or generate them and cache them (a cache that cannot be written
    only costs a warning)."""
    path = cache_path(split, seed, count, size)
    if path.is_file():
        with np.load(path) as cached:
            return cached["images"], cached["labels"]
    images, labels = generate(split, seed, count, size)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, images=images, labels=labels)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as err:
        logger.warning("could not cache the synthetic dataset at %s: %s", path, err)
    return images, labels
