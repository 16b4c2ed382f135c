"""The embedded default dataset: generated 32x32 images of 10 texture patterns ("Synthetic").

What it is. Every image is filled edge to edge with one two-tone pattern; the pattern *type* is the
class: horizontal stripes, vertical stripes, diagonal stripes, checkerboard, dots, rings
(concentric), zigzag, grid, crosshatch, bricks. Per image, independently of the label: the period
(5-9 px, log-uniform), the phase (the pattern's origin, also the centre of the rings, lies anywhere
in the image), a tilt of up to +-12 degrees (horizontal, vertical and diagonal stay apart), a
mirroring (diagonal stripes run either way), the two tones (a dark grey in [0, 0.3] and a light grey
in [0.7, 1]), the polarity (which tone is the pattern and which the background), a brightness
gradient across the image and pixel noise. Patterns are anti-aliased by 4x4 supersampling.

Why. BYOL (paper §5, Table 17) learns what two augmented views of one image share. The class must
therefore be visible in every view: BYOL's random crops keep down to 8% of the area (9x9 px here),
which often cuts a single global shape away, but always holds a period or more of a pattern that
covers the image. The class survives crops, flips (a mirrored pattern stays in its class), blur and
the colour augmentations, and nothing else predicts it. The nuisance "colour" statistics are the
ones the paper's colour augmentation randomises -- brightness (the tones, the gradient), contrast
(the gap between the tones) and polarity -- and they are image-specific: two views of one image share
them exactly when colour augmentation is removed, so a network can then match views on them instead
of on the pattern (the shortcut the paper's colour ablation, 72.5 -> 63.4 top-1, points at).

Why grey. Version 3 drew the two colours uniformly in RGB. Measured with the default preset
(byol_r18_synthetic.yaml: ResNet-18 at width 8, LARS eta 0.02), 4 epochs, ridge probe on the frozen
features of 2,000 train / 1,000 val images, one seed each:
random init 22.9%, BYOL 12.3% -- the features encoded the images' hues, which the paper's jitter
(hue +-0.1, saturation x[0.8, 1.2]) leaves nearly intact, and spent their 64 dimensions on them; a
tint of only 0.15 chroma on these grey tones gave random init 44.0%, BYOL 35.0%. With grey tones:
random init 50.2%, BYOL 76.0% (kNN 53.9% -> 72.6%). Hue is therefore not a nuisance here. The full
preset (8 epochs) under the linear-evaluation protocol: 73.7% vs 47.5% for random init (an earlier run:
60.9%; README).

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
from collections.abc import Callable
from pathlib import Path

import numpy as np

from byol_lib.atomic import write_atomic

GENERATOR_VERSION = 4
SHAPE_NAMES: tuple[str, ...] = (
    "horizontal stripes", "vertical stripes", "diagonal stripes", "checkerboard", "dots", "rings", "zigzag", "grid",
    "crosshatch", "bricks",
)
DEFAULT_COUNTS: dict[str, int] = {"train": 5000, "val": 1000}
SPLIT_STREAMS: dict[str, int] = {"train": 0, "val": 1}
SUPERSAMPLE = 4
PERIOD_PX = (5.0, 9.0)
MAX_TILT = np.deg2rad(12.0)
_BLOCKS_PER_CHUNK = 25
DARK_TONE = (0.0, 0.3)
LIGHT_TONE = (0.7, 1.0)
MAX_GRADIENT = 0.15  # brightness change across the image
MAX_NOISE_STD = 0.03

logger = logging.getLogger(__name__)

Pattern = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _cell(t: np.ndarray) -> np.ndarray:
    """Distance from the centre of the current period cell, in [0, 0.5]."""
    return np.abs(t - np.floor(t) - 0.5)


def _horizontal(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Stripes half a period wide; ``u``, ``v`` are pattern coordinates in periods (``v`` points down)."""
    return _cell(v) < 0.25


def _vertical(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _cell(u) < 0.25


def _diagonal(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _cell((u + v) / np.sqrt(2.0)) < 0.25


def _checkerboard(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Squares of half a period: one black and one white square per period along each axis."""
    return (np.floor(2.0 * u) + np.floor(2.0 * v)) % 2 == 0


def _dots(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Disks 0.6 periods across on a square lattice."""
    return _cell(u) ** 2 + _cell(v) ** 2 < 0.3**2


def _rings(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Concentric rings half a period wide around the pattern's origin."""
    return _cell(np.sqrt(u * u + v * v)) < 0.25


def _zigzag(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Horizontal lines bent into 45-degree zigzags of amplitude 0.6 and length 1.2 periods."""
    return _cell(v + 1.2 * _cell(u / 1.2)) < 0.25


def _grid(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Lines 0.2 periods wide along both axes."""
    return (_cell(u) > 0.4) | (_cell(v) > 0.4)


def _crosshatch(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Diagonal lines both ways, 1.2 periods apart and 0.2 periods wide: a net of large diamonds."""
    spacing = 1.2 * np.sqrt(2.0)
    return (_cell((u + v) / spacing) > 0.5 - 0.1 / 1.2) | (_cell((u - v) / spacing) > 0.5 - 0.1 / 1.2)


def _bricks(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Running bond: mortar 0.2 periods wide, courses one period high, joints two periods apart and
    staggered by one period from course to course."""
    return (_cell(v) > 0.4) | (_cell(u / 2.0 + 0.5 * np.floor(v)) > 0.45)


PATTERNS: tuple[Pattern, ...] = (
    _horizontal, _vertical, _diagonal, _checkerboard, _dots, _rings, _zigzag, _grid, _crosshatch, _bricks,
)


def _block_params(seed: int, split: str, block: int, size: int) -> dict[str, np.ndarray]:
    """Labels and nuisance factors of the 10 images of one block, from the block's own stream."""
    rng = np.random.default_rng([seed, SPLIT_STREAMS[split], block])
    n = len(PATTERNS)
    dark = rng.uniform(*DARK_TONE, n)
    light = rng.uniform(*LIGHT_TONE, n)
    light_pattern = rng.random(n) < 0.5
    return {
        "label": rng.permutation(n),
        "period": np.exp(rng.uniform(*np.log(PERIOD_PX), n)) / size,
        "cx": rng.uniform(0.0, 1.0, n),
        "cy": rng.uniform(0.0, 1.0, n),
        "angle": rng.uniform(-MAX_TILT, MAX_TILT, n),
        "mirror": rng.choice([-1.0, 1.0], n),
        "fg": np.where(light_pattern, light, dark),
        "bg": np.where(light_pattern, dark, light),
        "grad_amp": rng.uniform(-MAX_GRADIENT, MAX_GRADIENT, n),
        "grad_dir": rng.uniform(0.0, 2 * np.pi, n),
        "noise": rng.normal(0.0, 1.0, (n, size, size, 3)) * rng.uniform(0.0, MAX_NOISE_STD, (n, 1, 1, 1)),
    }


def _render(p: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Rasterise a batch of images described by stacked block parameters into uint8 (N, H, W, 3)."""
    n = len(p["label"])
    fine = (np.arange(size * SUPERSAMPLE, dtype=np.float32) + 0.5) / (size * SUPERSAMPLE)
    dx = fine[None, None, :] - p["cx"].astype(np.float32)[:, None, None]
    dy = fine[None, :, None] - p["cy"].astype(np.float32)[:, None, None]
    cos = (np.cos(p["angle"]) / p["period"]).astype(np.float32)[:, None, None]
    sin = (np.sin(p["angle"]) / p["period"]).astype(np.float32)[:, None, None]
    u = (cos * dx + sin * dy) * p["mirror"].astype(np.float32)[:, None, None]
    v = cos * dy - sin * dx
    mask = np.zeros(u.shape, dtype=bool)
    for label, pattern in enumerate(PATTERNS):
        rows = p["label"] == label
        mask[rows] = pattern(u[rows], v[rows])
    k = SUPERSAMPLE
    alpha = mask.reshape(n, size, k, size, k).mean(axis=(2, 4))

    coarse = (np.arange(size) + 0.5) / size - 0.5
    ys, xs = coarse[None, :, None], coarse[None, None, :]
    along = xs * np.cos(p["grad_dir"])[:, None, None] + ys * np.sin(p["grad_dir"])[:, None, None]
    tone = p["bg"][:, None, None] * (1.0 - alpha) + p["fg"][:, None, None] * alpha
    image = (tone + p["grad_amp"][:, None, None] * along)[..., None] + p["noise"]
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def generate(split: str, seed: int, count: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images (uint8, N x size x size x 3) and labels (int64) of one split's stream."""
    if split not in SPLIT_STREAMS:
        raise ValueError(f"split {split!r} must be one of {sorted(SPLIT_STREAMS)}")
    n = len(PATTERNS)
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
        write_atomic(path, lambda handle: np.savez(handle, images=images, labels=labels))
    except OSError as err:
        logger.warning("could not cache the synthetic dataset at %s: %s", path, err)
    return images, labels
