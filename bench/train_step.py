"""Images/s of one BYOL training step on random tensors (default: ResNet-18, CIFAR stem, 32x32, batch 128).

    python bench/train_step.py [--steps 5] [--batch 128] [--depth 18] [--width 64] [--size 32]

The step is the project's: online and target forward on both views, symmetric loss plus the
online classifier, backward, LARS, EMA. Prints the thread count and peak RSS so numbers can be
compared with other implementations on the same machine. A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from byol_lib import runtime  # noqa: E402

THREADS = runtime.configure()

import paddle  # noqa: E402

from byol_lib.config import load_config, resolve  # noqa: E402
from byol_lib.ema import update_target  # noqa: E402
from byol_lib.model import build_model  # noqa: E402
from byol_lib.train import build_optimizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after 1 warm-up step)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--depth", type=int, default=18, choices=(18, 34, 50))
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--stem", default="cifar", choices=("cifar", "imagenet"))
    args = parser.parse_args()

    cfg = load_config(None, ["dataloader.train.dataset.name=Synthetic", f"model.backbone.depth={args.depth}",
                             f"model.backbone.width={args.width}", f"model.backbone.stem={args.stem}"])
    cfg = resolve(cfg, 1, 50000, 10)
    paddle.seed(0)
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg)
    views = [paddle.randn([args.batch, 3, args.size, args.size]) for _ in range(2)]
    labels = paddle.randint(0, 10, [args.batch])

    def step() -> float:
        start = time.perf_counter()
        out = model(views[0], views[1], labels)
        out["loss"].backward()
        optimizer.step(0.1)
        optimizer.clear_grad()
        update_target(model.online, model.target, 0.99)
        float(out["loss"])
        return time.perf_counter() - start

    step()
    times = [step() for _ in range(args.steps)]
    median = statistics.median(times)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"BYOL step, ResNet-{args.depth} width {args.width} ({args.stem} stem), {args.size}x{args.size}, "
          f"batch {args.batch}, paddle {paddle.__version__}, {THREADS} threads")
    print(f"  eager (dygraph): {args.batch / median:.1f} images/s  (median of {args.steps} steps, "
          f"{median * 1000:.0f} ms/step)  peak RSS {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
