"""Images/s of the augmentation pipeline: the batched device stage, and the pretraining loader.

    python bench/augment.py [--batch 64] [--size 224] [--repeats 5] [--loader-steps 20] [--loader-batch 128]

1. ``device_augment`` (colour jitter, grayscale, blur as one depthwise conv per direction over the whole batch,
   solarise, clip, normalise) against a Python loop calling it on one image at a time (PASSL's approach for the
   blur: a horizontal and a vertical conv call per image), in the same run, on views of matplotlib's sample photo
   drawn by ``ViewSampler``. The two paths are checked to agree before timing. Run twice: with view-1 parameters
   (blur always on) and view-2 parameters (blur on ~10 % of images; the loop skips the others, and so does
   the batched path on the CPU: it gathers the images an op applies to, changes them, scatters them back).
2. ``pretrain_loader`` on the embedded Synthetic dataset at 32 px with 0 and 2 workers: one image = its
   two views (CPU part of the pipeline, no device ops); the first batch (worker start-up) is not timed.

Prints the thread count so numbers can be compared across machines. A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from byol_lib import runtime  # noqa: E402

THREADS = runtime.configure()

import numpy as np  # noqa: E402
import paddle  # noqa: E402

from byol_lib.config import load_config  # noqa: E402
from byol_lib.data.augment import (  # noqa: E402
    AUGMENT_DEFAULTS,
    BLUR_ON,
    SOLARIZE_ON,
    ViewSampler,
    blur_taps,
    device_augment,
)
from byol_lib.data.datasets import build_dataset  # noqa: E402
from byol_lib.data.loader import pretrain_loader  # noqa: E402
from byol_lib.data.preview import sample_photo  # noqa: E402
from byol_lib.plan import resolve  # noqa: E402


def per_image_augment(x: paddle.Tensor, params: paddle.Tensor, aug: Mapping[str, Any]) -> paddle.Tensor:
    """The device stage one image at a time."""
    return paddle.concat([device_augment(x[i:i + 1], params[i:i + 1], aug) for i in range(x.shape[0])])


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_device(aug: Mapping[str, Any], view: str, batch: int, repeats: int) -> None:
    """Batched ``device_augment`` vs the per-image loop on ``batch`` views drawn for ``view``."""
    sampler, photo = ViewSampler(aug, view), sample_photo()
    drawn = [sampler(photo, np.random.default_rng([0, i])) for i in range(batch)]
    x = paddle.to_tensor(np.stack([d[0] for d in drawn]))
    params = np.stack([d[1] for d in drawn])
    params_t = paddle.to_tensor(params)
    np.testing.assert_allclose(device_augment(x, params_t, aug).numpy(), per_image_augment(x, params_t, aug).numpy(),
                               atol=1e-5)
    batched, looped = [], []
    for _ in range(repeats):  # after the check above (a warm-up of both); interleaved: same load on both
        batched.append(timed(lambda: device_augment(x, params_t, aug).numpy()))
        looped.append(timed(lambda: per_image_augment(x, params_t, aug).numpy()))
    b, loop = statistics.median(batched), statistics.median(looped)
    blurred, solarised = int(params[:, BLUR_ON].sum()), int(params[:, SOLARIZE_ON].sum())
    print(f"  {view} params ({blurred}/{batch} blurred, {solarised}/{batch} solarised):")
    print(f"    batched device_augment: {batch / b:8.1f} images/s  ({b * 1000:6.1f} ms/batch)")
    print(f"    per-image loop:         {batch / loop:8.1f} images/s  ({loop * 1000:6.1f} ms/batch)")
    print(f"    batched / per-image:    {loop / b:8.2f}x  (median of {repeats})")


def bench_loader(workers: int, steps: int, batch: int) -> None:
    """Images/s of ``pretrain_loader`` on Synthetic at 32 px with ``workers`` workers."""
    cfg = load_config(None, ["dataloader.train.dataset.name=Synthetic", "augmentation.image_size=32",
                             f"dataloader.train.num_workers={workers}", f"dataloader.train.sampler.batch_size={batch}"])
    images = build_dataset(cfg["dataloader"]["train"]["dataset"], "train")
    cfg = resolve(cfg, 1, len(images), len(images.classes))
    batches = iter(pretrain_loader(images, cfg, 0, 1, 0))
    first = timed(lambda: next(batches))
    seconds = timed(lambda: [next(batches) for _ in range(steps)])
    print(f"  {workers} workers: {batch * steps / seconds:8.1f} images/s  ({seconds / steps * 1000:6.1f} ms/batch of "
          f"{batch}, mean over {steps} batches; first batch {first:.2f} s, not timed)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64, help="device-op batch")
    parser.add_argument("--size", type=int, default=224, help="device-op image size")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each device path")
    parser.add_argument("--loader-steps", type=int, default=20, help="timed loader batches per worker count")
    parser.add_argument("--loader-batch", type=int, default=128)
    args = parser.parse_args()

    aug = copy.deepcopy(AUGMENT_DEFAULTS)
    aug["image_size"] = args.size
    taps = blur_taps(args.size, aug["blur"]["kernel_fraction"])
    print(f"Device stage (jitter, grayscale, blur, solarise, clip, normalise), batch {args.batch} at "
          f"{args.size}x{args.size} ({taps}-tap blur), paddle {paddle.__version__}, {THREADS} threads")
    for view in ("view1", "view2"):
        bench_device(aug, view, args.batch, args.repeats)
    print(f"pretrain_loader, Synthetic 32x32, batch {args.loader_batch} (two views per image), {THREADS} threads "
          "in the main process")
    for workers in (0, 2):
        bench_loader(workers, args.loader_steps, args.loader_batch)


if __name__ == "__main__":
    main()
