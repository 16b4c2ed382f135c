"""BYOL pretraining: the step (views -> loss -> LARS -> EMA) and the loop around it.

One step, as in DeepMind's ``byol_experiment.py``: apply the batched device augmentations, run
online and target networks on both views, back-propagate the symmetric loss plus the online
classifier's loss, average gradients over ranks, take the LARS step with the scheduled lr, then
move the target towards the *updated* online weights with the scheduled tau.

With ``accum_steps: N`` a step's batch is split into N chunks whose gradients are averaged before the
one LARS step and one target update (the paper's batch-size ablation: BN sees batch / N). PASSL switches
handled here (the deviations D1-D20 are in docs/sources.md): ``model.update_target: False`` (D1, the target
keeps its initial weights), ``model.init: passl`` (D6, see ``passl_init``) and ``loop_length: passl_epochs`` (D10,
see ``plan.plan_for``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import paddle
import paddle.nn as nn

from byol_lib import amp, console, distributed, results, run_folder, runtime
from byol_lib.checkpoint import latest_checkpoint, load_checkpoint, resume_state, save_checkpoint
from byol_lib.config import Config, ConfigError
from byol_lib.data.augment import device_augment
from byol_lib.data.datasets import build_dataset
from byol_lib.data.loader import pretrain_loader
from byol_lib.ema import update_target, weights
from byol_lib.knn import KnnMonitor
from byol_lib.model import BYOL, build_model
from byol_lib.optim import LARS
from byol_lib.passl_init import passl_initialize
from byol_lib.plan import Plan, plan_for
from byol_lib.variants import BASELINE

KIND = "pretrain"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


def build_optimizer(model: BYOL, cfg: Config) -> LARS:
    opt = cfg["optimizer"]
    return LARS(model.online_parameters(), momentum=opt["momentum"], eta=opt["lars_coeff"],
                weight_decay=opt["lars_weight_decay"], exclude_from_weight_decay=opt["exclude_from_weight_decay"],
                epsilon=opt["epsilon"], formula=opt["formula"])


def synchronize_batch_norm(model: BYOL, cfg: Config, ctx: distributed.Context) -> None:
    """Cross-replica BN on multi-GPU runs: encoders, projectors and (unless D4 is on) the predictor."""
    if not (ctx.on_gpu and ctx.world_size > 1 and cfg["model"]["use_synch_bn"]):
        return
    convert = nn.SyncBatchNorm.convert_sync_batchnorm
    model.online, model.target = convert(model.online), convert(model.target)
    if cfg["model"]["sync_predictor_bn"]:
        model.predictor = convert(model.predictor)


def workers_sharing_cores(cfg: Config, ctx: distributed.Context) -> int:
    """Loader processes that take cores from Paddle's CPU threads: the configured workers on the CPU, none on a GPU
    (the step runs on the device; its host threads are left as they are)."""
    return 0 if ctx.on_gpu else cfg["dataloader"]["train"]["num_workers"]


def all_finite(model: nn.Layer) -> bool:
    """No NaN or infinity in any parameter or BN statistic (checked before every checkpoint)."""
    with paddle.no_grad():
        return all(bool(paddle.isfinite(p).all()) for p in model.parameters())


def checkpoint_every(ckpt: Config, plan: Plan) -> int:
    """Steps between checkpoints of the config's ``checkpoint`` section."""
    if ckpt["by_epoch"]:
        return max(1, round(ckpt["interval"] * plan.steps_per_epoch))
    return ckpt["interval"]


def _holding_run(checkpoint: Path) -> Path | None:
    """The pretraining run folder of ours that holds ``checkpoint`` in its ``checkpoints/``, if any."""
    folder = checkpoint.resolve().parent
    if folder.name == "checkpoints" and results.read_summary(folder.parent).get("kind") == KIND:
        return folder.parent
    return None


def _run_folder(cfg: Config, resume: Path | None, wait: bool, stack: contextlib.ExitStack) -> Path:
    """The run folder, held for the rest of ``stack``: the one holding ``resume`` when it is ours, else
    ``output_dir/run_id`` or a run of this config under ``output_dir`` (the newest unfinished one, or a new one).
    Runs choosing a folder take turns, so two identical runs meet at the same folder (and one refuses)."""
    if resume is not None and (holder := _holding_run(resume)) is not None:
        return stack.enter_context(run_folder.hold(holder, wait))
    output_dir = Path(cfg["output_dir"])
    with run_folder.choosing(output_dir):
        if cfg["run_id"]:
            folder = output_dir / cfg["run_id"]
        else:
            digest = results.config_hash(cfg)
            folder = results.find_resumable(output_dir, KIND, digest) or results.new_run_dir(output_dir, KIND, digest)
        try:
            return stack.enter_context(run_folder.hold(folder))
        except run_folder.RunFolderBusy:
            if not wait:
                raise
    return stack.enter_context(run_folder.hold(folder, wait=True))  # others may choose their folders meanwhile


class Progress:
    """Step lines: tqdm on a terminal; else plain lines (logs, notebooks, CI) paced by ``console.Pacer``: the first
    step of this session, every ``every`` steps, the last, and at least every ``console.HEARTBEAT_S`` seconds."""

    def __init__(self, total: int, start: int, every: int, enabled: bool,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
        self.total, self.start, self.enabled, self.clock = total, start, enabled, clock
        self.began = clock()
        self.pacer = console.Pacer(total, every, first=start + 1, clock=clock)

    def update(self, done: int, row: dict[str, Any], logged: bool) -> None:
        """Step ``done`` finished; ``row``: the log window's figures so far (``logged``: written to metrics.jsonl)."""
        if self.bar is not None:
            self.bar.update(1)
            if logged:
                self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.3g}",
                                     img_s=f"{row['images_per_s']:.1f}")
        elif self.enabled and self.pacer.due(done):
            print(step_line(done, self.total, self.clock() - self.began, row, skipped=self.start), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def step_line(done: int, total: int, elapsed: float, row: dict[str, Any], skipped: int = 0) -> str:
    """``step n/N  <elapsed> elapsed, ETA <left>  loss .. acc .. lr .. img/s``."""
    details = (f"loss {row['loss']:.4f}  acc {row['online_accuracy']:.3f}  lr {row['lr']:.3g}  "
               f"{row['images_per_s']:.0f} img/s")
    return console.progress_line("step", done, total, elapsed, details, skipped=skipped)


@dataclasses.dataclass
class Learner:
    """What a training step updates, and the fixed choices it follows."""

    model: BYOL
    optimizer: LARS
    plan: Plan
    augmentation: Mapping[str, Any]
    ctx: distributed.Context
    accum_steps: int = 1
    update_target: bool = True  # False: PASSL's frozen target (D1)
    net: nn.Layer | None = None  # what runs the forward pass: ``model``, or ``paddle.DataParallel(model)``
    precision: amp.Precision = amp.FLOAT32  # or mixed precision (config ``amp``, byol_lib/amp.py)

    def __post_init__(self) -> None:
        if self.net is None:
            self.net = paddle.DataParallel(self.model) if self.ctx.world_size > 1 else self.model


def train_step(learner: Learner, step: int, batch: Sequence[paddle.Tensor]) -> dict[str, float]:
    """One BYOL update at 0-based ``step`` (paper Algorithm 1; DeepMind's ``_update_fn``); returns its metrics.

    ``batch``: the loader's ``(view1, params1, view2, params2, labels)``. Batched device augmentations, then
    per chunk (``accum_steps``) the online and target networks on both views, the symmetric loss plus the online
    classifier's loss, backward; gradients averaged over chunks and ranks; the LARS step with the scheduled lr;
    then the target moves towards the *updated* online weights with the scheduled tau. Under ``amp`` the forward
    pass runs in auto_cast; a float16 step whose scaled gradients overflowed is skipped (no LARS step, no EMA).
    """
    lr, tau, chunks, precision = learner.plan.lr(step), learner.plan.tau(step), learner.accum_steps, learner.precision
    view1, params1, view2, params2, labels = batch
    aug = learner.augmentation
    inputs = (device_augment(view1, params1, aug), device_augment(view2, params2, aug), labels)
    sums: dict[str, float] = {}
    for chunk in zip(*(paddle.split(t, chunks) for t in inputs), strict=True):
        with precision.autocast():
            out = learner.net(*chunk)
        precision.scaled(out["loss"] / chunks).backward()
        for key, value in out.items():
            sums[key] = sums.get(key, 0.0) + float(value) / chunks
    metrics = distributed.mean_over_ranks(sums, learner.ctx)
    if not math.isfinite(metrics["loss"]):
        learner.optimizer.clear_grad()
        raise NonFiniteLossError(f"loss is {metrics['loss']} (byol {metrics['byol_loss']})")
    stepped = precision.gradients_finite(learner.optimizer.params)
    if stepped:
        learner.optimizer.step(lr)
    learner.optimizer.clear_grad()
    if stepped and learner.update_target:
        update_target(learner.model.online, learner.model.target, tau)
    runtime.keep_freed_memory()  # from the second step on: see byol_lib.runtime
    return {**metrics, **precision.metrics(stepped), "lr": lr, "tau": tau}


def pretrain(cfg: Config, resume: Path | None = None, verbose: bool = True, wait: bool = False) -> Path:
    """Run (or resume) BYOL pretraining for a validated config; return the run folder.

    ``wait``: when another process holds the run folder, wait for it instead of raising ``RunFolderBusy``.
    """
    ctx = distributed.init(cfg["device"])
    with runtime.cores_left_for_workers(workers_sharing_cores(cfg, ctx)), contextlib.ExitStack() as stack:
        run = _open_run(cfg, ctx, resume, wait, stack)
        if run.start_step >= run.plan.total_steps and run.previous_status == "finished":
            if verbose and ctx.is_main:
                print(f"already finished: {run.folder}", flush=True)
            return run.folder
        loader = pretrain_loader(run.images, run.cfg, ctx.rank, ctx.world_size, run.start_step)
        summary = {"run_id": run.folder.name, "kind": KIND, "status": "running",
                   "config_hash": results.config_hash(run.cfg), "variant": cfg["variant"] or BASELINE,
                   "grid": cfg["grid"] or None, "seed": cfg["seed"], "world_size": ctx.world_size,
                   "device": ctx.device, **results.environment()}
        # "running" only from here: a signal during the set-up above leaves the summary as it was, one from here on
        # is recorded as "interrupted"
        started = time.perf_counter()
        try:
            if ctx.is_main:
                results.write_config(run.folder, run.cfg)
                run_folder.write_summary(run.folder, summary)
                if verbose:
                    _print_plan(run)
            _loop(run, loader, verbose)
        except BaseException as err:
            if ctx.is_main:
                run_folder.record_end(run.folder, summary, err, stopped_at_step=run.step)
            raise
        _finish(run, summary, loader, time.perf_counter() - started, verbose)
        return run.folder


@dataclasses.dataclass
class _Run:
    """An opened pretraining run: its resolved config and plan, network state, folder and where to start."""

    cfg: Config
    plan: Plan
    learner: Learner
    images: Any
    folder: Path
    start_step: int
    elapsed_before: float
    previous_status: str | None
    knn_every: int  # steps between kNN measurements, 0: none
    knn_monitor: KnnMonitor | None  # on rank 0 when measuring; the others wait
    step: int = 0  # the step in progress

    def __post_init__(self) -> None:
        self.step = self.start_step

    @property
    def checkpoints(self) -> Path:
        return self.folder / "checkpoints"


def _open_run(cfg: Config, ctx: distributed.Context, resume: Path | None, wait: bool,
              stack: contextlib.ExitStack) -> _Run:
    """Dataset, plan, networks, optimiser and kNN monitor; the run folder (held on ``stack``) and the state to
    resume from."""
    precision = amp.precision(cfg["amp"], ctx.device)  # refuses AMP on the CPU before any work
    images = build_dataset(cfg["dataloader"]["train"]["dataset"], "train")
    plan = plan_for(cfg, ctx.world_size, len(images), len(images.classes))
    cfg = {**copy.deepcopy(cfg), "derived": {**plan.derived(), "classes": list(images.classes)}}
    paddle.seed(cfg["seed"])
    model = build_model(cfg)
    if cfg["model"]["init"] == "passl":
        passl_initialize(model, align_target=cfg["model"]["align_init_network"])
    synchronize_batch_norm(model, cfg, ctx)
    optimizer = build_optimizer(model, cfg)
    resumed = load_checkpoint(resume, model, optimizer) if resume else None  # a bad file: no folder is made
    folder = Path(distributed.broadcast_object(str(_run_folder(cfg, resume, wait, stack)) if ctx.is_main else None,
                                               ctx))
    previous = results.read_summary(folder)
    if previous.get("config_hash") is not None and not results.same_config(folder, cfg):
        raise ConfigError(f"{folder} holds a run of a different config; choose another run_id or output_dir")
    state = resumed or resume_state(folder / "checkpoints", model, optimizer) or {"step": 0, "extra": {}}
    learner = Learner(model, optimizer, plan, cfg["augmentation"], ctx, accum_steps=cfg["accum_steps"],
                      update_target=cfg["model"]["update_target"], precision=precision)
    knn = cfg["knn_monitor"]
    knn_every = round(knn["interval_epochs"] * plan.steps_per_epoch) if knn["interval_epochs"] else 0
    monitor = None
    if knn_every and ctx.is_main:
        monitor = KnnMonitor(cfg["dataloader"]["train"]["dataset"], cfg["augmentation"], k=knn["k"],
                             temperature=knn["temperature"], num_train=knn["num_train"], num_val=knn["num_val"],
                             batch_size=plan.per_device_batch)
    return _Run(cfg, plan, learner, images, folder, state["step"], state["extra"].get("wall_time_s", 0.0),
                previous.get("status"), knn_every, monitor)


def _print_plan(run: _Run) -> None:
    ctx, plan = run.learner.ctx, run.plan
    print(f"run {run.folder}" + (f", resumed at step {run.start_step}" if run.start_step else ""), flush=True)
    print(f"{ctx.world_size} process(es) on {ctx.device}, batch {plan.global_batch} ({plan.per_device_batch}/process),"
          f" lr {plan.peak_lr:.4g} (= base lr x {plan.schedule_batch}/256 unless set), {plan.total_steps} steps "
          f"({plan.warmup_steps} warm-up)", flush=True)


def _loop(run: _Run, loader: Iterable[Sequence[paddle.Tensor]], verbose: bool) -> None:
    """Train from ``run.start_step`` to the end (``run.step``: the step in progress). Logs metrics, measures kNN,
    writes checkpoints; stops on a non-finite loss or weights."""
    cfg, plan, learner = run.cfg, run.plan, run.learner
    ctx, model = learner.ctx, learner.model
    every_ckpt, every_log = checkpoint_every(cfg["checkpoint"], plan), cfg["log_config"]["interval"]
    every_knn, monitor = run.knn_every, run.knn_monitor
    metrics = results.MetricsLog(run.folder / "metrics.jsonl", run.start_step) if ctx.is_main else None
    progress = Progress(plan.total_steps, run.start_step, every_log, verbose and ctx.is_main)
    sums: dict[str, float] = {}
    window_start, window_steps, run_start = time.perf_counter(), 0, time.perf_counter()
    model.train()
    try:
        for step, batch in enumerate(loader, start=run.start_step):
            run.step = step
            try:
                values = train_step(learner, step, batch)
            except NonFiniteLossError as err:
                raise NonFiniteLossError(
                    f"step {step}: {err}; stopping. The last good checkpoint is "
                    f"{latest_checkpoint(run.checkpoints) or 'none (no checkpoint written yet)'}; lower the "
                    "learning rate or check the data") from None
            lr, tau = values.pop("lr"), values.pop("tau")
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
            window_steps += 1
            done = step + 1
            row = {"step": done, "epoch": plan.epoch(done), "lr": lr, "tau": tau,
                   **{k: v / window_steps for k, v in sums.items()},
                   "images_per_s": plan.global_batch * window_steps / max(time.perf_counter() - window_start, 1e-9)}
            logged = done % every_log == 0 or done == plan.total_steps
            if logged:
                if metrics is not None:
                    metrics.append(row)
                sums, window_steps, window_start = {}, 0, time.perf_counter()
            progress.update(done, row, logged)
            if every_knn and (done % every_knn == 0 or done == plan.total_steps):
                if monitor is not None:
                    measured_at = time.perf_counter()
                    knn = {"step": done, "epoch": plan.epoch(done), "knn_top1": monitor(model.online.encoder)}
                    window_start += time.perf_counter() - measured_at  # not part of the training throughput
                    if metrics is not None:
                        metrics.append(knn)
                    if verbose:
                        print(f"step {done}/{plan.total_steps}  kNN top-1 {console.percent(knn['knn_top1'])} "
                              f"(k={monitor.k})", flush=True)
                distributed.barrier(ctx)
            if done % every_ckpt == 0 or done == plan.total_steps:
                finite = distributed.mean_over_ranks({"finite": float(all_finite(model))}, ctx)["finite"] == 1.0
                if not finite:  # every rank agrees, so every rank stops
                    raise NonFiniteLossError(
                        f"step {step}: the weights became NaN or infinite (loss was {values['loss']}); stopping "
                        f"without writing a checkpoint. The last good one is "
                        f"{latest_checkpoint(run.checkpoints) or 'none'}; lower the learning rate")
                if ctx.is_main:
                    wall = run.elapsed_before + time.perf_counter() - run_start
                    save_checkpoint(run.checkpoints, done, model, learner.optimizer, {"wall_time_s": wall},
                                    keep=cfg["checkpoint"]["keep"])
    finally:
        progress.close()


def _finish(run: _Run, summary: dict[str, Any], loader: Any, seconds: float, verbose: bool) -> None:
    """Check the replicas agree and write the finished summary."""
    model, ctx, plan = run.learner.model, run.learner.ctx, run.plan
    identical = distributed.replicas_identical([*weights(model.online), *weights(model.predictor)], ctx)
    if not ctx.is_main:
        return
    rows = results.read_metrics(run.folder)
    steps_run = plan.total_steps - run.start_step
    run_folder.write_summary(run.folder, {
        **summary, "status": "finished", "evaluation": "online probe", "total_steps": plan.total_steps,
        "epochs": run.cfg["epochs"], "global_batch": plan.global_batch,
        "dataset": run.cfg["dataloader"]["train"]["dataset"]["name"],
        "backbone": f"resnet{run.cfg['model']['backbone']['depth']}", "wall_time_s": run.elapsed_before + seconds,
        "images_per_s": plan.global_batch * steps_run / max(seconds, 1e-9),
        "replicas_identical": identical, "final": rows[-1] if rows else {},
        "skipped_files": {"count": len(loader.skipped_files()), "files": loader.skipped_files()},
    })
    if verbose:
        print(f"finished: {run.folder}", flush=True)
