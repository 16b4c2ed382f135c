"""Epochs/s of linear evaluation with cached features versus recomputing the backbone every epoch.

    python bench/linear_eval.py [--images 1000] [--epochs 3] [--batch 256] [--width 8]

Both runs are ``byol_lib.evaluate.linear_eval`` (paper protocol, 5-lr grid trained together) on a random
ResNet-18 (CIFAR stem) and the Synthetic dataset at 32x32, in the same process:

* cached (``augment=False``): train, held-out and test features computed once, then each epoch only trains
  the heads on the stored features;
* recompute (``augment=True``): each epoch runs the backbone again on that epoch's random crops and flips.

A third run recomputes with a single lr, showing what the extra grid heads cost on top of the shared backbone
forward (separate runs per lr would pay the forward once per lr). A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from byol_lib import runtime  # noqa: E402

THREADS = runtime.configure()

import paddle  # noqa: E402

from byol_lib.data.augment import AUGMENT_DEFAULTS  # noqa: E402
from byol_lib.data.datasets import build_dataset  # noqa: E402
from byol_lib.evaluate import LinearEvalResult, LinearEvalSettings, linear_eval  # noqa: E402
from byol_lib.model import ResNet  # noqa: E402


def epoch_seconds(result: LinearEvalResult) -> float:
    return statistics.median(entry["seconds"] for entry in result.history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="train images (test: a fifth of it)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=8)
    args = parser.parse_args()

    train = build_dataset({"name": "Synthetic", "num_images": args.images}, "train")
    test = build_dataset({"name": "Synthetic", "num_images": args.images // 5}, "val")
    aug = {**AUGMENT_DEFAULTS, "image_size": 32}
    paddle.seed(0)
    backbone = ResNet(18, "cifar", args.width)
    base = {"epochs": args.epochs, "batch_size": args.batch, "holdout": args.images // 10}

    runs = {}
    for name, changes in (("cached", {"augment": False}), ("recompute", {"augment": True}),
                          ("recompute, 1 lr", {"augment": True, "lr_grid": (0.4,)})):
        runs[name] = linear_eval(backbone, train, test, aug, LinearEvalSettings(**base, **changes))

    print(f"linear eval, ResNet-18 width {args.width} (cifar stem), Synthetic 32x32, {args.images} train images "
          f"({base['holdout']} held out), {len(test)} test, batch {args.batch}, {args.epochs} epochs, "
          f"paddle {paddle.__version__}, {THREADS} threads")
    for name, result in runs.items():
        per_epoch = epoch_seconds(result)
        fixed = result.seconds - sum(entry["seconds"] for entry in result.history)
        heads = len(result.history[0]["lr"])
        print(f"  {name:16s} {1 / per_epoch:8.2f} epochs/s  ({per_epoch * 1000:7.1f} ms/epoch, {heads} heads; "
              f"one-off feature extraction {fixed:.2f} s; test top-1 {result.test_top1:.3f})")
    cached, recompute = epoch_seconds(runs["cached"]), epoch_seconds(runs["recompute"])
    fixed = runs["cached"].seconds - sum(entry["seconds"] for entry in runs["cached"].history)
    one_lr = epoch_seconds(runs["recompute, 1 lr"])
    print(f"  cached / recompute speed-up per epoch: {recompute / cached:.1f}x "
          f"(80 epochs: {fixed + 80 * cached:.1f} s vs {80 * recompute:.1f} s)")
    print(f"  5 heads on one forward cost {recompute / one_lr:.2f}x one head; 5 separate runs would cost ~5x")


if __name__ == "__main__":
    main()
