"""Build a small real dataset from the UCI optical digits bundled in scikit-learn's wheel (no install, no network).

The 1,797 handwritten digits (8x8, 17 grey levels 0..16, classes 0-9; Alpaydin and Kaynak 1998, UCI) are read
straight from ``sklearn/datasets/data/digits.csv.gz`` inside the wheel (a zip), scaled to 0..255, upscaled to
``--size`` pixels (default 32, bilinear: PIL ``Image.BILINEAR`` on the 8x8 grey image) and written as ImageNet-style
class folders of grey PNGs::

    <out>/train/<digit>/<index>.png   (1,297 images by default)
    <out>/val/<digit>/<index>.png     (500 images, stratified: 50 per class)

The split is a fixed stratified draw (numpy generator seeded by ``--seed``, default 0), so the same wheel and seed
give the same folders. Get the wheel once with ``pip download scikit-learn --no-deps -d /tmp/skl``; README "Small
real datasets" uses the folder with ``dataset: {name: ImageNet, dataroot: <out>}``.

    python tools/make_digits.py /tmp/skl/scikit_learn-*.whl --out /tmp/digits32
"""

from __future__ import annotations

import argparse
import gzip
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

MEMBER = "sklearn/datasets/data/digits.csv.gz"
RESAMPLE = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def read_digits(wheel: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 8, 8) uint8 in 0..255 and labels (N,) from the wheel's csv (64 pixel values 0..16, then the label)."""
    with zipfile.ZipFile(wheel) as zf, zf.open(MEMBER) as raw:
        table = np.loadtxt(io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="ascii"), delimiter=",")
    pixels, labels = table[:, :64], table[:, 64].astype(np.int64)
    images = np.round(pixels.reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)
    return images, labels


def stratified_split(labels: np.ndarray, val_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices: ``val_per_class`` images of every class drawn without replacement."""
    rng = np.random.default_rng(seed)
    val = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:val_per_class] for c in np.unique(labels)])
    train = np.setdiff1d(np.arange(len(labels)), val)
    return train, np.sort(val)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path, help="scikit-learn wheel (pip download scikit-learn --no-deps -d DIR)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (gets train/ and val/)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--resample", choices=tuple(RESAMPLE), default="bilinear")
    parser.add_argument("--val-per-class", type=int, default=50, help="validation images per class (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stratified split (default 0)")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"error: '{args.out}' exists and is not empty", file=sys.stderr)
        return 2
    images, labels = read_digits(args.wheel)
    for split, indices in zip(("train", "val"), stratified_split(labels, args.val_per_class, args.seed), strict=True):
        for i in indices:
            folder = args.out / split / str(labels[i])
            folder.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(images[i], mode="L").resize((args.size, args.size), RESAMPLE[args.resample])
            img.save(folder / f"{i:04d}.png")
        print(f"{split}: {len(indices)} images, {len(np.unique(labels[indices]))} classes -> {args.out / split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
