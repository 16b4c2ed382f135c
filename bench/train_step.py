"""Images/s of one BYOL training step on random tensors (default: ResNet-18, CIFAR stem, 32x32, batch 128).

    python bench/train_step.py [--steps 5] [--batch 128] [--width 64] [--size 32] [--threads N] [--only NAME]

Three steps, built in the same process and timed interleaved (naive, project, fast, naive, ...; medians),
so that a busy machine slows all of them alike:

* ``naive``: a straightforward Paddle dygraph BYOL step: a ResNet-18 written like ``paddle.vision``'s
  (CIFAR stem), target forward with autograd on (outputs detached), a Python LARS and EMA with
  out-of-place ops (``set_value``), Paddle's NCHW kernels.
* ``project``: the project's step (no-grad target forward, in-place LARS and EMA) with Paddle's kernels
  (``cpu_kernels: paddle``).
* ``fast``: the same step with the default CPU kernels (``cpu_kernels: auto``: ``byol_lib.fast``'s NHWC
  convolutions through oneDNN). Faithful: tests/test_fast.py checks loss and weights against ``project``.

All three do the same work: online and target forward on both views, symmetric loss plus the online
classifier, backward, LARS (JAX formula), EMA. Prints images/s, ratios to ``naive``, thread counts and
peak RSS (of the whole process; ``--only NAME`` runs one step kind alone for its own peak). With
``--torch-anchor SCRIPT --torch-python PYTHON`` (``byol_step_torch.py``, a PyTorch eager BYOL step of the
same network, in a venv with torch) each round also runs the anchor once in its own process (same width,
threads, batch), interleaved, and the ratios to its median are printed; ``--torch IMAGES_PER_S`` gives its
number instead. Images per CPU-second (process CPU time) are printed beside: on a shared machine another
process steals wall time from a one-thread step but not CPU time. A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import copy
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from byol_lib import runtime  # noqa: E402

THREADS = runtime.configure()

import paddle  # noqa: E402
import paddle.nn as nn  # noqa: E402
import paddle.nn.functional as F  # noqa: E402

from byol_lib import fast  # noqa: E402
from byol_lib.config import load_config  # noqa: E402
from byol_lib.data.augment import device_params_length  # noqa: E402
from byol_lib.distributed import Context  # noqa: E402
from byol_lib.model import build_model  # noqa: E402
from byol_lib.plan import plan_for, resolve  # noqa: E402
from byol_lib.train import Learner, build_optimizer, train_step  # noqa: E402

NAMES = ("naive", "project", "fast")


class NaiveBlock(nn.Layer):
    """``paddle.vision``'s BasicBlock."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2D(cin, width, 3, stride=stride, padding=1, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(width)
        self.conv2 = nn.Conv2D(width, width, 3, padding=1, bias_attr=False)
        self.bn2 = nn.BatchNorm2D(width)
        self.downsample = None
        if stride != 1 or cin != width:
            self.downsample = nn.Sequential(nn.Conv2D(cin, width, 1, stride=stride, bias_attr=False),
                                            nn.BatchNorm2D(width))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


def naive_tower(width: int, hidden: int, out: int) -> nn.Sequential:
    """ResNet-18 with the CIFAR stem (3x3 conv, no max-pool), pooled and flattened, then the projector."""
    layers: list[nn.Layer] = [nn.Conv2D(3, width, 3, padding=1, bias_attr=False), nn.BatchNorm2D(width), nn.ReLU()]
    cin = width
    for stage in range(4):
        for b in range(2):
            layers.append(NaiveBlock(cin, width * 2**stage, 2 if stage > 0 and b == 0 else 1))
            cin = width * 2**stage
    layers += [nn.AdaptiveAvgPool2D(1), nn.Flatten(), nn.Linear(cin, hidden), nn.BatchNorm1D(hidden), nn.ReLU(),
               nn.Linear(hidden, out, bias_attr=False)]
    return nn.Sequential(*layers)


def naive_step(width: int, views: list[paddle.Tensor], labels: paddle.Tensor) -> Callable[[], float]:
    """A straightforward BYOL step (see the module docstring); returns a function running one step."""
    online = naive_tower(width, 4096, 256)
    predictor = nn.Sequential(nn.Linear(256, 4096), nn.BatchNorm1D(4096), nn.ReLU(),
                              nn.Linear(4096, 256, bias_attr=False))
    classifier = nn.Linear(width * 8, 10)
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.stop_gradient = True
    encoder = online[:-4]
    params = [p for layer in (online, predictor, classifier) for p in layer.parameters() if not p.stop_gradient]
    momenta = [paddle.zeros_like(p) for p in params]
    ema_pairs = [(t, o) for t, o in zip(target.parameters(), online.parameters(), strict=True) if not o.stop_gradient]

    def loss_fn(p: paddle.Tensor, z: paddle.Tensor) -> paddle.Tensor:
        return (F.normalize(p, axis=-1) - F.normalize(z, axis=-1)).pow(2).sum(axis=-1)

    def step() -> float:
        y1 = encoder(views[0])
        z1, z2 = online[-4:](y1), online(views[1])
        t1, t2 = target(views[0]).detach(), target(views[1]).detach()
        byol = (loss_fn(predictor(z1), t2) + loss_fn(predictor(z2), t1)).mean()
        loss = byol + F.cross_entropy(classifier(y1.detach()), labels.reshape([-1, 1]))
        loss.backward()
        with paddle.no_grad():
            for p, v in zip(params, momenta, strict=True):
                g = p.grad + 1e-6 * p
                trust = 1e-3 * paddle.linalg.norm(p) / paddle.linalg.norm(g)
                v.set_value(0.9 * v + trust * g)
                p.set_value(p - 0.1 * v)
                p.clear_gradient()
            for t, o in ema_pairs:
                t.set_value(0.99 * t + 0.01 * o)
        return float(loss)

    return step


def project_step(args: argparse.Namespace, views: list[paddle.Tensor], labels: paddle.Tensor,
                 kernels: str) -> Callable[[], float]:
    """The loop's own ``train_step`` (device stage with every augmentation off, model, LARS, EMA) with the given
    CPU kernels."""
    cfg = load_config(None, ["dataloader.train.dataset.name=Synthetic", f"model.backbone.depth={args.depth}",
                             f"model.backbone.width={args.width}", f"model.backbone.stem={args.stem}",
                             f"cpu_kernels={kernels}", f"augmentation.image_size={args.size}"])
    plan = plan_for(cfg, 1, 50000, 10)
    model = build_model(resolve(cfg, 1, 50000, 10))
    learner = Learner(model, build_optimizer(model, cfg), plan, cfg["augmentation"], Context(0, 1, "cpu"))
    off = paddle.zeros([views[0].shape[0], device_params_length(cfg["augmentation"])])
    batch = (views[0], off, views[1], off, labels)
    steps = iter(range(plan.warmup_steps, plan.total_steps))  # past the warm-up: the lr is not 0

    def step() -> float:
        return train_step(learner, next(steps), batch)["loss"]

    return step


def torch_anchor(args: argparse.Namespace) -> Callable[[], tuple[float, float]]:
    """One run of the PyTorch anchor script (``--torch-anchor``) in its own interpreter: its images/s and images
    per CPU-second (images/s over its printed cpu utilisation). Not its peak RSS: a forked child starts with this
    process's high-water mark, so run the anchor from a shell for that."""
    command = [args.torch_python, args.torch_anchor, "--width", str(args.width), "--threads", str(args.threads),
               "--batch", str(args.batch), "--image-size", str(args.size), "--warmup", "1", "--steps", "1"]

    def run() -> tuple[float, float]:
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rate = re.search(r"^THROUGHPUT ([\d.]+)", out, re.MULTILINE)
        cores = re.search(r"^cpu utilisation .* = ([\d.]+) cores", out, re.MULTILINE)
        if rate is None or cores is None:
            raise RuntimeError(f"{args.torch_anchor} printed no THROUGHPUT or cpu utilisation line:\n{out}")
        return float(rate.group(1)), float(rate.group(1)) / float(cores.group(1))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each kind (after 1 warm-up step)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--depth", type=int, default=18, choices=(18, 34, 50))
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--stem", default="cifar", choices=("cifar", "imagenet"))
    parser.add_argument("--threads", type=int, default=THREADS,
                        help="Paddle and oneDNN threads (default: the project's choice, %(default)s here; "
                             "CPU pretraining uses one less per loader worker)")
    parser.add_argument("--only", choices=NAMES, help="run one step kind alone (its own peak RSS)")
    parser.add_argument("--torch", type=float, metavar="IMAGES_PER_S",
                        help="the PyTorch anchor's images/s measured beside this run: prints the ratio to it")
    parser.add_argument("--torch-anchor", metavar="SCRIPT",
                        help="the PyTorch anchor script (byol_step_torch.py): one run of it per round, interleaved")
    parser.add_argument("--torch-python", default=sys.executable, metavar="PYTHON",
                        help="the interpreter with torch installed, for --torch-anchor")
    args = parser.parse_args()
    runtime.set_threads(args.threads)

    paddle.seed(0)
    views = [paddle.rand([args.batch, 3, args.size, args.size]) for _ in range(2)]
    labels = paddle.randint(0, 10, [args.batch])
    names = [args.only] if args.only else list(NAMES)
    if "naive" in names and (args.depth, args.stem) != (18, "cifar"):
        names.remove("naive")  # the naive network is the CIFAR-stem ResNet-18 only
    builders = {"naive": lambda: naive_step(args.width, views, labels),
                "project": lambda: project_step(args, views, labels, "paddle"),
                "fast": lambda: project_step(args, views, labels, "auto")}
    steps = {name: builders[name]() for name in names}
    anchor = torch_anchor(args) if args.torch_anchor else None
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu_times: dict[str, list[float]] = {name: [] for name in names}  # a busy machine steals wall time, not CPU
    torch_rates: list[tuple[float, float]] = []
    for repeat in range(args.steps + 1):
        for name, step in steps.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            step()
            if repeat:  # the first round is warm-up
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu_start)
        if anchor and repeat:
            torch_rates.append(anchor())
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this process only, not the anchor

    print(f"BYOL step, ResNet-{args.depth} width {args.width} ({args.stem} stem), {args.size}x{args.size}, "
          f"batch {args.batch}, paddle {paddle.__version__}, {runtime.threads()} threads (Paddle, oneDNN); "
          f"medians of {args.steps} interleaved steps; fast = "
          f"{'oneDNN' if fast.use_onednn(views[0], 'auto') else 'Paddle'} convolutions")
    rates = {name: args.batch / statistics.median(t) for name, t in times.items()}
    per_cpu = {name: args.batch / statistics.median(t) for name, t in cpu_times.items()}
    if torch_rates:
        rates["pytorch"] = statistics.median(rate for rate, _ in torch_rates)
        per_cpu["pytorch"] = statistics.median(rate for _, rate in torch_rates)
    reference = rates.get("pytorch", args.torch)
    for name, rate in rates.items():
        ratio = f"  {rate / rates['naive']:5.2f}x naive" if "naive" in rates else ""
        if reference:
            ratio += f"  {rate / reference:5.2f}x PyTorch"
        cpu_ratio = f", {per_cpu[name] / per_cpu['pytorch']:5.2f}x PyTorch" if "pytorch" in per_cpu else ""
        print(f"  {name:8s} {rate:7.2f} images/s  ({args.batch / rate * 1000:7.0f} ms/step){ratio}  "
              f"[{per_cpu[name]:7.2f} images per CPU-second{cpu_ratio}]")
    if args.torch and not torch_rates:
        print(f"  pytorch  {args.torch:7.2f} images/s  (given with --torch)")
    print(f"  peak RSS {rss_mb:.0f} MB ({'+'.join(names)} in one process)")


if __name__ == "__main__":
    main()
