"""Loader headroom: images/s per loader-worker core at 224 px on ImageNet-sized JPEGs, and the cores a GPU needs.

    python bench/loader.py [--images 300] [--size 224] [--repeats 3] [--gpu-rate 2500] [--batch 64]

1. Writes ``--images`` JPEGs of 500 x 375 (ImageNet's typical size; quality 90) cut from matplotlib's sample photo
   at random offsets and scales, with noise, into a temporary folder (deleted at the end).
2. Worker CPU time per image, one thread (a loader worker has one core), measured with ``time.process_time``:
   * ``view pipeline``: what a pretraining loader worker runs per image: decode (Pillow) + ``ViewSampler`` for
     view 1 and view 2 (``TwoViewDataset.__getitem__`` without the loader's bookkeeping);
   * ``plain Pillow``: decode + ``RandomResizedCrop`` (bicubic) + flip + colour jitter (ImageEnhance brightness,
     contrast, saturation, and a hue shift through Pillow's HSV mode) + grayscale + to float32 CHW, two views, the
     usual torchvision-style CPU pipeline, as a yardstick.
   Repeats are interleaved (the machine may be shared), medians reported.
3. The batched device stage (``device_augment`` of both views) on this machine's CPU, per image, for scale: on a
   GPU it runs on the accelerator; on a CPU run it runs in the training process, not in the workers.
4. Loader cores needed to feed ``--gpu-rate`` images/s (e.g. a node's step rate: images per step / step time).

To compare versions of the pipeline (same API), run a copy of this file from outside the repository with
``PYTHONPATH`` pointing at the other checkout (the first line printed names the ``byol_lib`` measured).
A benchmark, never a test.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BYOL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core per loader worker

import argparse  # noqa: E402
import copy  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from byol_lib import runtime  # noqa: E402

THREADS = runtime.configure()

import numpy as np  # noqa: E402
import paddle  # noqa: E402
from PIL import Image, ImageEnhance  # noqa: E402

import byol_lib  # noqa: E402
from byol_lib.data.augment import AUGMENT_DEFAULTS, ViewSampler, device_augment, sample_crop  # noqa: E402
from byol_lib.data.preview import sample_photo  # noqa: E402

WIDTH, HEIGHT = 500, 375


def write_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` 500 x 375 JPEGs cut from the sample photo at random scales and offsets, with noise."""
    photo, rng = Image.fromarray(sample_photo()), np.random.default_rng(seed)
    paths = []
    for i in range(count):
        scale = rng.uniform(1.0, 1.6)
        big = photo.resize((round(WIDTH * scale), round(HEIGHT * scale * 1.4)), Image.BILINEAR)
        top, left = rng.integers(0, big.height - HEIGHT + 1), rng.integers(0, big.width - WIDTH + 1)
        pixels = np.asarray(big.crop((left, top, left + WIDTH, top + HEIGHT)), dtype=np.int16)
        pixels = np.clip(pixels + rng.integers(-12, 13, pixels.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.JPEG"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def decode(path: Path) -> np.ndarray:
    """The dataset's decode: Pillow, RGB, uint8 H x W x 3."""
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def view_pipeline(samplers: list[ViewSampler]) -> Callable[[Path, int], Any]:
    """Decode + both views' CPU part, as a loader worker does per image."""
    def run(path: Path, key: int) -> Any:
        image = decode(path)
        return [sampler(image, np.random.default_rng([key, v])) for v, sampler in enumerate(samplers)]
    return run


def _pil_hue(image: Image.Image, delta: float) -> Image.Image:
    """torchvision's PIL hue shift: H channel of Pillow's HSV mode moved by ``delta`` turns (uint8 wrap-around)."""
    h, s, v = image.convert("HSV").split()
    shifted = (np.asarray(h, dtype=np.uint8).astype(np.int16) + round(delta * 255)) % 256
    return Image.merge("HSV", (Image.fromarray(shifted.astype(np.uint8), "L"), s, v)).convert("RGB")


def pillow_pipeline(aug: dict[str, Any]) -> Callable[[Path, int], Any]:
    """Decode + two plain Pillow views (crop, bicubic resize, flip, jitter in random order, grayscale, float CHW)."""
    size = aug["image_size"]

    def one_view(image: Image.Image, rng: np.random.Generator, p: dict[str, float]) -> np.ndarray:
        top, left, h, w = sample_crop(image.height, image.width, aug["crop"], rng)
        view = image.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))
        if rng.random() < p["flip"]:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < p["color_jitter"]:
            b, c, s, hue = rng.uniform(-1, 1, 4) * [p["brightness"], p["contrast"], p["saturation"], p["hue"]]
            ops = [lambda x: ImageEnhance.Brightness(x).enhance(1 + b),
                   lambda x: ImageEnhance.Contrast(x).enhance(1 + c),
                   lambda x: ImageEnhance.Color(x).enhance(1 + s), lambda x: _pil_hue(x, hue)]
            for i in rng.permutation(4):
                view = ops[i](view)
        if rng.random() < p["grayscale"]:
            view = view.convert("L").convert("RGB")
        return np.asarray(view, dtype=np.float32).transpose(2, 0, 1) * np.float32(1 / 255)

    def run(path: Path, key: int) -> Any:
        with Image.open(path) as im:
            image = im.convert("RGB")
        return [one_view(image, np.random.default_rng([key, v]), aug[f"view{v + 1}"]) for v in range(2)]
    return run


def cpu_seconds_per_image(fn: Callable[[Path, int], Any], paths: list[Path]) -> float:
    """Process CPU seconds per image of ``fn`` over ``paths``."""
    start = time.process_time()
    for key, path in enumerate(paths):
        fn(path, key)
    return (time.process_time() - start) / len(paths)


def device_seconds_per_image(aug: dict[str, Any], paths: list[Path], batch: int, repeats: int) -> float:
    """Wall seconds per image of ``device_augment`` on both views of a ``batch``, on this CPU (median)."""
    samplers = [ViewSampler(aug, "view1"), ViewSampler(aug, "view2")]
    drawn = [view_pipeline(samplers)(paths[i % len(paths)], i) for i in range(batch)]
    views = [tuple(paddle.to_tensor(np.stack([d[v][part] for d in drawn])) for part in (0, 1)) for v in range(2)]
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        for x, params in views:
            device_augment(x, params, aug).numpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:]) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="device-stage batch")
    parser.add_argument("--gpu-rate", type=float, default=2500.0,
                        help="images/s the GPUs consume: images per step / seconds per step (default: an example)")
    args = parser.parse_args()

    aug = copy.deepcopy(AUGMENT_DEFAULTS)
    aug["image_size"] = args.size
    folder = Path(tempfile.mkdtemp(prefix="byol-loader-bench-"))
    try:
        paths = write_jpegs(folder, args.images)
        kib = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        samplers = [ViewSampler(aug, "view1"), ViewSampler(aug, "view2")]
        pipelines = {"view pipeline (decode + 2 views)": view_pipeline(samplers),
                     "plain Pillow (decode + 2 views)": pillow_pipeline(aug),
                     "decode only": lambda path, key: decode(path)}
        seconds: dict[str, list[float]] = {name: [] for name in pipelines}
        for _ in range(args.repeats):
            for name, fn in pipelines.items():
                seconds[name].append(cpu_seconds_per_image(fn, paths))
        device = device_seconds_per_image(aug, paths, args.batch, args.repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"byol_lib from {Path(byol_lib.__file__).parent.parent}, {args.images} JPEGs {WIDTH}x{HEIGHT}"
          f" (~{kib:.0f} KiB), views {args.size}x{args.size}, one thread, paddle "
          f"{paddle.__version__}, medians of {args.repeats} interleaved passes (shared machine)")
    view_rate = 1.0 / statistics.median(seconds["view pipeline (decode + 2 views)"])
    for name, values in seconds.items():
        per = statistics.median(values)
        print(f"  {name:34s} {per * 1000:7.2f} ms CPU/image  {1 / per:7.1f} images/s per core  "
              f"(all: {', '.join(f'{v * 1000:.2f}' for v in values)} ms)")
    pillow_rate = 1.0 / statistics.median(seconds["plain Pillow (decode + 2 views)"])
    print(f"  view pipeline / plain Pillow: {view_rate / pillow_rate:.2f}x images/s per core")
    print(f"  device stage (both views, batch {args.batch}, this CPU): {device * 1000:.2f} ms/image "
          "(on a GPU: on the accelerator; on a CPU run: in the training process)")
    print(f"  to feed {args.gpu_rate:.0f} images/s: {args.gpu_rate / view_rate:.0f} loader cores with the view "
          f"pipeline, {args.gpu_rate / pillow_rate:.0f} with plain Pillow")


if __name__ == "__main__":
    main()
