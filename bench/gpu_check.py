"""Acceptance check for a GPU host, about five minutes: one pass/fail table.

    python bench/gpu_check.py                          # ResNet-50 at 224 px, 64 images per GPU, GPUs 0,1
    python bench/gpu_check.py --data /data/ILSVRC2012  # the loader row on your ImageNet folder
    python bench/gpu_check.py --tiny                   # seconds: the tiny config (CI runs it on the CPU)

Rows:

* ``one-device step, float32``: the project's ``train_step`` for ``--steps`` steps on one device: finite losses,
  the weights move, float32 parameters; its images/s (the batch fetched once, so the loader is not timed).
* ``one-device step, AMP bfloat16 / float16``: the same steps under ``amp.enabled`` (O1): finite losses, master
  weights float32, the first loss (same weights, same batch) within 2 % of float32's; float16: not every step
  skipped by the loss scaler.
* ``two-process launch``: ``paddle.distributed.launch`` with two GPUs (``--devices``; on a CPU: two gloo processes)
  running ``--steps`` steps of the real loop pieces (rank-sharded loader, DataParallel, SyncBatchNorm on GPUs): the
  replicas end bit-identical (``distributed.replicas_identical``).
* ``BatchNorm statistics across ranks``: the running mean and variance of every BN layer gathered from both ranks:
  equal on GPUs (SyncBatchNorm); on a CPU (per-process BN under gloo) they must differ, which shows the comparison
  can see a difference.
* ``loader vs step``: the training loader's images/s (``dataloader.train.num_workers`` workers, ``--workers``)
  against the float32 step's: on a GPU the loader must keep up; on a CPU both share the cores (information).
* ``peak GPU memory``: ``paddle.device.cuda.max_memory_allocated`` over the float32 steps (on a CPU: peak RSS).

On a CPU everything except AMP and SyncBatchNorm runs in CPU mode, so CI keeps the script working
(tests/test_device_branches.py runs ``--tiny``). Exit code 0 when no row failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddle.distributed as dist  # noqa: E402
import paddle.nn as nn  # noqa: E402

from byol_lib import amp, distributed, launch  # noqa: E402
from byol_lib.config import Config, load_config  # noqa: E402
from byol_lib.data.datasets import ImageDataset, build_dataset  # noqa: E402
from byol_lib.data.loader import pretrain_loader  # noqa: E402
from byol_lib.ema import weights  # noqa: E402
from byol_lib.model import build_model  # noqa: E402
from byol_lib.plan import plan_for, resolve  # noqa: E402
from byol_lib.train import Learner, build_optimizer, synchronize_batch_norm, train_step  # noqa: E402

TINY = ROOT / "configs" / "byol" / "tiny_cpu.yaml"
R50 = ROOT / "configs" / "byol" / "byol_r50_IM.yaml"
AMP_LOSS_TOLERANCE = 0.02  # relative difference of the first loss, AMP vs float32
NOT_ON_CPU = ("Paddle's CPU build has no float16/bfloat16 conv2d/matmul kernels and its auto_cast is a no-op "
              "(byol amp refuses the CPU)")


@dataclass
class Row:
    check: str
    status: str  # "pass", "FAIL", "n/a" (cannot run here; the detail says why), "info"
    detail: str


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny config (width-8 ResNet-18, 16 px): seconds")
    parser.add_argument("--cpu", action="store_true", help="CPU mode even when a GPU is visible")
    parser.add_argument("--devices", default="0,1", help="the two GPUs of the launch row")
    parser.add_argument("--batch", type=int, default=None, help="images per device (default: 64; tiny: 16)")
    parser.add_argument("--steps", type=int, default=None, help="steps per row (default: 20; tiny: 3)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: the config's)")
    parser.add_argument("--data", default=None, help="an ImageNet folder for the loader row (default: Synthetic)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # a launched process: its result file
    args = parser.parse_args(argv)
    args.batch = args.batch or (16 if args.tiny else 64)
    args.steps = args.steps or (3 if args.tiny else 20)
    return args


def check_config(args: argparse.Namespace, device: str, world_size: int) -> Config:
    """The config the checks train: tiny or ResNet-50, ``args.batch`` images per device, enough epochs for the
    steps, Synthetic images unless ``--data``."""
    dataset = ([f"dataloader.train.dataset.dataroot={args.data}"] if args.data else
               ["dataloader.train.dataset.name=Synthetic",
                f"dataloader.train.dataset.num_images={max(128, 2 * args.batch * world_size)}"])
    workers = [] if args.workers is None else [f"dataloader.train.num_workers={args.workers}"]
    return load_config(TINY if args.tiny else R50, [
        *dataset, *workers, f"device={'cpu' if device == 'cpu' else 'gpu'}", "total_images=null",
        f"global_batch_size={args.batch * world_size}", "epochs=1000", "knn_monitor.interval_epochs=0"])


def open_learner(cfg: Config, images: ImageDataset, ctx: distributed.Context,
                 precision: amp.Precision = amp.FLOAT32) -> tuple[Learner, Config]:
    """Model, LARS and learner as ``train._open_run`` builds them (seeded, SyncBatchNorm on multi-GPU)."""
    plan = plan_for(cfg, ctx.world_size, len(images), len(images.classes))
    cfg = {**cfg, "derived": plan.derived()}
    paddle.seed(cfg["seed"])
    model = build_model(cfg)
    synchronize_batch_norm(model, cfg, ctx)
    return Learner(model, build_optimizer(model, cfg), plan, cfg["augmentation"], ctx, precision=precision), cfg


def timed_steps(learner: Learner, batch: tuple[paddle.Tensor, ...], steps: int) -> tuple[list[float], float]:
    """Losses of ``steps`` steps on one batch, and images/s over all but the first (warm-up) step."""
    losses, started = [], 0.0
    for step in range(steps):
        if step == 1:
            _synchronise(learner.ctx)
            started = time.perf_counter()
        losses.append(train_step(learner, step, batch)["loss"])
    _synchronise(learner.ctx)
    images = int(batch[0].shape[0]) * max(steps - 1, 1)
    return losses, images / max(time.perf_counter() - started, 1e-9)


def _synchronise(ctx: distributed.Context) -> None:
    if ctx.on_gpu:
        paddle.device.cuda.synchronize()


def _moved(before: list[np.ndarray], model: nn.Layer) -> bool:
    return any((a != p.numpy()).any() for a, p in zip(before, weights(model.online), strict=True))


def one_device_rows(args: argparse.Namespace, device: str) -> tuple[list[Row], float]:
    """The float32 and AMP rows, the peak-memory row; returns them and the float32 step's images/s."""
    ctx = distributed.Context(0, 1, device)
    cfg = check_config(args, device, 1)
    images = build_dataset(cfg["dataloader"]["train"]["dataset"], "train")
    learner, resolved = open_learner(cfg, images, ctx)
    batch = tuple(next(iter(pretrain_loader(images, resolved, 0, 1, 0))))
    if ctx.on_gpu:
        paddle.device.cuda.reset_max_memory_allocated()
    before = [p.numpy().copy() for p in weights(learner.model.online)]
    losses, step_ips = timed_steps(learner, batch, args.steps)
    ok = all(map(math.isfinite, losses)) and _moved(before, learner.model) and all(
        p.dtype == paddle.float32 for p in learner.model.parameters())
    rows = [Row("one-device step, float32", "pass" if ok else "FAIL",
                f"{device}, {args.batch} images: losses {losses[0]:.4f} .. {losses[-1]:.4f}, {step_ips:.1f} img/s")]
    if ctx.on_gpu:
        peak = paddle.device.cuda.max_memory_allocated() / 2**30
        memory = Row("peak GPU memory", "info", f"{peak:.2f} GiB allocated in the float32 steps at batch "
                                               f"{args.batch}")
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        memory = Row("peak GPU memory", "n/a", f"on the CPU; peak RSS of this process {rss:.2f} GiB")
    for dtype in amp.DTYPES:
        rows.append(amp_row(args, cfg, images, batch, ctx, dtype, losses[0]))
    return [*rows, memory], step_ips


def amp_row(args: argparse.Namespace, cfg: Config, images: ImageDataset, batch: tuple[paddle.Tensor, ...],
            ctx: distributed.Context, dtype: str, float32_loss: float) -> Row:
    name = f"one-device step, AMP {dtype}"
    if not ctx.on_gpu:
        return Row(name, "n/a", NOT_ON_CPU)
    precision = amp.precision({"enabled": True, "dtype": dtype, "level": "O1"}, ctx.device)
    learner, _ = open_learner(cfg, images, ctx, precision)
    skipped = 0
    losses = []
    for step in range(args.steps):
        metrics = train_step(learner, step, batch)
        losses.append(metrics["loss"])
        skipped += int(metrics.get("amp_skipped", 0))
    gap = abs(losses[0] - float32_loss) / max(abs(float32_loss), 1e-12)
    master = all(p.dtype == paddle.float32 for p in learner.model.parameters())
    ok = all(map(math.isfinite, losses)) and master and gap <= AMP_LOSS_TOLERANCE and skipped < args.steps
    return Row(name, "pass" if ok else "FAIL",
               f"first loss {losses[0]:.4f} vs float32 {float32_loss:.4f} ({gap:.2%}, limit "
               f"{AMP_LOSS_TOLERANCE:.0%}); master weights {'float32' if master else 'NOT float32'}; "
               f"{skipped}/{args.steps} steps skipped by the loss scaler")


def loader_row(args: argparse.Namespace, device: str, step_ips: float) -> Row:
    """Images/s of the training loader alone (the first batch, which starts the workers, not timed)."""
    cfg = check_config(args, device, 1)
    images = build_dataset(cfg["dataloader"]["train"]["dataset"], "train")
    resolved = resolve(cfg, 1, len(images), len(images.classes))
    loader = iter(pretrain_loader(images, resolved, 0, 1, 0))
    next(loader)
    started, batches = time.perf_counter(), 0
    for _ in range(args.steps):
        next(loader)
        batches += 1
    loader_ips = args.batch * batches / max(time.perf_counter() - started, 1e-9)
    workers = resolved["dataloader"]["train"]["num_workers"]
    source = "your images" if args.data else "Synthetic 32-px images (pass --data for your JPEGs)"
    detail = (f"loader {loader_ips:.1f} img/s ({workers} workers, {source}) vs step {step_ips:.1f} img/s")
    if device == "cpu":
        return Row("loader vs step", "info", detail + "; on the CPU both share the cores")
    keeps_up = loader_ips >= step_ips
    return Row("loader vs step", "pass" if keeps_up else "FAIL",
               detail + ("" if keeps_up else "; the GPU waits for data: more workers (--workers, "
                                             "dataloader.train.num_workers) or more cores per GPU"))


def launch_rows(args: argparse.Namespace, device: str) -> list[Row]:
    """Two processes under paddle.distributed.launch (two GPUs, or two gloo CPU processes)."""
    names = ("two-process launch: replicas identical", "BatchNorm statistics across ranks")
    if device != "cpu" and paddle.device.cuda.device_count() < 2:
        return [Row(name, "FAIL", f"needs two GPUs, {paddle.device.cuda.device_count()} visible") for name in names]
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        out = Path(tmp) / "result.json"
        own = [*(["--tiny"] if args.tiny else []), *(["--cpu"] if device == "cpu" else []),
               "--batch", str(args.batch), "--steps", str(args.steps), "--worker", str(out),
               *(["--data", args.data] if args.data else []),
               *(["--workers", str(args.workers)] if args.workers is not None else [])]
        where: dict[str, Any] = {"nproc_per_node": 2} if device == "cpu" else {"devices": args.devices}
        started = time.perf_counter()
        result = launch.run_launch(launch.launch_command(__file__, own, log_dir=Path(tmp) / "log", **where),
                                   Path(tmp) / "log", stream=False)
        seconds = time.perf_counter() - started
        if result.returncode != 0 or not out.is_file():
            tail = result.failure_tail.splitlines()[-1] if result.failure_tail else "no result"
            return [Row(name, "FAIL", f"exit code {result.returncode}: {tail}") for name in names]
        found = json.loads(out.read_text())
    launched = f"{'2 gloo processes' if device == 'cpu' else 'GPUs ' + args.devices}, {args.steps} steps"
    rows = [Row(names[0], "pass" if found["identical"] else "FAIL",
                f"{launched}, {seconds:.0f} s with start-up; final losses {found['losses']}")]
    gap = found["bn_max_gap"]
    if found["synced"]:
        rows.append(Row(names[1], "pass" if gap <= 1e-6 else "FAIL",
                        f"SyncBatchNorm in {found['synced']} layers; largest relative gap between ranks {gap:.2e}"))
    else:
        rows.append(Row(names[1], "pass" if gap > 0 else "FAIL",
                        f"per-process BatchNorm on the CPU (no SyncBatchNorm kernel): the ranks' statistics "
                        f"differ as they must (largest relative gap {gap:.2e}); equal on GPUs"))
    return rows


def worker(args: argparse.Namespace) -> None:
    """One launched process: train ``args.steps`` steps with the rank-sharded loader; rank 0 writes the result."""
    ctx = distributed.init("cpu" if args.cpu else "gpu")
    cfg = check_config(args, ctx.device, ctx.world_size)
    images = build_dataset(cfg["dataloader"]["train"]["dataset"], "train")
    learner, resolved = open_learner(cfg, images, ctx)
    losses = []
    for step, batch in enumerate(pretrain_loader(images, resolved, ctx.rank, ctx.world_size, 0)):
        if step == args.steps:
            break
        losses.append(round(train_step(learner, step, batch)["loss"], 4))
    model = learner.model
    identical = distributed.replicas_identical([*weights(model.online), *weights(model.predictor)], ctx)
    norms = [layer for layer in model.sublayers() if isinstance(layer, nn.layer.norm._BatchNormBase)]
    gap = 0.0
    for layer in norms:
        for stat in (layer._mean, layer._variance):
            gathered: list[paddle.Tensor] = []
            dist.all_gather(gathered, stat.detach())
            a, b = (g.numpy().astype(np.float64) for g in gathered)
            gap = max(gap, float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12)))
    if ctx.is_main:
        synced = sum(isinstance(layer, nn.SyncBatchNorm) for layer in norms)
        Path(args.worker).write_text(json.dumps({"identical": identical, "synced": synced, "bn_max_gap": gap,
                                                 "losses": losses}))


def print_table(rows: list[Row]) -> None:
    width = max(len(r.check) for r in rows)
    print(f"{'check':<{width}}  {'status':<6}  detail")
    for row in rows:
        print(f"{row.check:<{width}}  {row.status:<6}  {row.detail}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    warnings.filterwarnings("ignore", message="When training, we now always track global mean and variance")
    device = "cpu" if args.cpu else distributed.select_device("auto")
    paddle.set_device(device)
    rows = [Row("device", "pass", f"{device}; Paddle {paddle.__version__}, "
                                  f"{'CUDA' if paddle.is_compiled_with_cuda() else 'CPU-only'} build")]
    step_rows, step_ips = one_device_rows(args, device)
    rows += [*step_rows, *launch_rows(args, device), loader_row(args, device, step_ips)]
    print_table(rows)
    failed = [r.check for r in rows if r.status == "FAIL"]
    print(f"\n{'FAIL: ' + ', '.join(failed) if failed else 'PASS'}")
    if device == "cpu":
        print("CPU mode. On a GPU host run `python bench/gpu_check.py` (ResNet-50, 224 px, GPUs 0,1; --data for "
              "your ImageNet): the AMP rows, SyncBatchNorm statistics equal across ranks, the loader keeping up "
              "with the GPU step, and the peak GPU memory are only measured there.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
