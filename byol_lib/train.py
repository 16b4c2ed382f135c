"""BYOL pretraining: the step (views -> loss -> LARS -> EMA) and the loop around it.

One step, as in DeepMind's ``byol_experiment.py``: apply the batched device augmentations, run
online and target networks on both views, back-propagate the symmetric loss plus the online
classifier's loss, average gradients over ranks, take the LARS step with the scheduled lr, then
move the target towards the *updated* online weights with the scheduled tau.

With ``accum_steps: N`` a step's batch is split into N chunks whose gradients are averaged before the
one LARS step and one target update (the paper's batch-size ablation: BN sees batch / N). PASSL switches
handled here: ``model.update_target: False`` (D1, the target keeps its initial weights),
``model.init: passl`` (D6, see ``passl_init``) and ``loop_length: passl_epochs`` (D10, see ``config.resolve``).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paddle
import paddle.nn as nn

from byol_lib import console, distributed, results, run_folder, runtime
from byol_lib.checkpoint import latest_checkpoint, load_checkpoint, resume_state, save_checkpoint
from byol_lib.config import Config, ConfigError, resolve
from byol_lib.data.augment import device_augment
from byol_lib.data.datasets import build_dataset
from byol_lib.data.loader import pretrain_loader
from byol_lib.ema import update_target, weights
from byol_lib.evaluate import KnnMonitor
from byol_lib.model import BYOL, build_model
from byol_lib.optim import LARS, lr_at, tau_at
from byol_lib.passl_init import passl_initialise

KIND = "pretrain"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


def build_optimizer(model: BYOL, cfg: Config) -> LARS:
    opt = cfg["optimizer"]
    return LARS(model.online_parameters(), momentum=opt["momentum"], eta=opt["lars_coeff"],
                weight_decay=opt["lars_weight_decay"], exclude_from_weight_decay=opt["exclude_from_weight_decay"],
                epsilon=opt["epsilon"], formula=opt["formula"])


def synchronise_batch_norm(model: BYOL, cfg: Config, ctx: distributed.Context) -> None:
    """Cross-replica BN on multi-GPU runs: encoders, projectors and (unless D4 is on) the predictor."""
    if not (ctx.on_gpu and ctx.world_size > 1 and cfg["model"]["use_synch_bn"]):
        return
    convert = nn.SyncBatchNorm.convert_sync_batchnorm
    model.online, model.target = convert(model.online), convert(model.target)
    if cfg["model"]["sync_predictor_bn"]:
        model.predictor = convert(model.predictor)


def all_finite(model: nn.Layer) -> bool:
    """No NaN or infinity in any parameter or BN statistic (checked before every checkpoint)."""
    with paddle.no_grad():
        return all(bool(paddle.isfinite(p).all()) for p in model.parameters())


def checkpoint_every(cfg: Config) -> int:
    ckpt = cfg["checkpoint"]
    if ckpt["by_epoch"]:
        return max(1, round(ckpt["interval"] * cfg["derived"]["steps_per_epoch"]))
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


def pretrain(cfg: Config, resume: Path | None = None, verbose: bool = True, wait: bool = False) -> Path:
    """Run (or resume) BYOL pretraining for a validated config; return the run folder.

    ``wait``: when another process holds the run folder, wait for it instead of raising ``RunFolderBusy``.
    """
    ctx = distributed.init(cfg["device"])
    workers = 0 if ctx.on_gpu else cfg["dataloader"]["train"]["num_workers"]
    with runtime.cores_left_for_workers(workers), contextlib.ExitStack() as stack:
        return _pretrain(cfg, ctx, resume, verbose, wait, stack)


def _pretrain(cfg: Config, ctx: distributed.Context, resume: Path | None, verbose: bool, wait: bool,
              stack: contextlib.ExitStack) -> Path:
    """The body of ``pretrain`` on an initialised device context."""
    images = build_dataset(cfg["dataloader"]["train"]["dataset"], "train")
    cfg = resolve(cfg, ctx.world_size, len(images), len(images.classes))
    cfg["derived"]["classes"] = list(images.classes)
    derived = cfg["derived"]
    paddle.seed(cfg["seed"])
    model = build_model(cfg)
    if cfg["model"]["init"] == "passl":
        passl_initialise(model, align_target=cfg["model"]["align_init_network"])
    synchronise_batch_norm(model, cfg, ctx)
    optimizer = build_optimizer(model, cfg)
    resumed = load_checkpoint(resume, model, optimizer) if resume else None  # a bad file: no folder is made

    run_dir = Path(distributed.broadcast_object(str(_run_folder(cfg, resume, wait, stack)) if ctx.is_main else None,
                                                ctx))
    previous = results.read_summary(run_dir)
    if previous.get("config_hash") is not None and not results.same_config(run_dir, cfg):
        raise ConfigError(f"{run_dir} holds a run of a different config; choose another run_id or output_dir")
    ckpt_dir = run_dir / "checkpoints"
    state = resumed
    if state is None:
        state = resume_state(ckpt_dir, model, optimizer) or {"step": 0, "extra": {}}
    start_step, elapsed_before = state["step"], state["extra"].get("wall_time_s", 0.0)
    if start_step >= derived["total_steps"] and previous.get("status") == "finished":
        if verbose and ctx.is_main:
            print(f"already finished: {run_dir}", flush=True)
        return run_dir
    net = paddle.DataParallel(model) if ctx.world_size > 1 else model
    loader = pretrain_loader(images, cfg, ctx.rank, ctx.world_size, start_step)

    sched, aug, chunks = cfg["lr_scheduler"], cfg["augmentation"], cfg["accum_steps"]
    periodic = cfg["loop_length"] == "passl_epochs"
    every_ckpt, every_log = checkpoint_every(cfg), cfg["log_config"]["interval"]
    knn_cfg = cfg["knn_monitor"]
    every_knn = round(knn_cfg["interval_epochs"] * derived["steps_per_epoch"]) if knn_cfg["interval_epochs"] else 0
    monitor = None
    if every_knn and ctx.is_main:  # rank 0 measures while the others wait
        monitor = KnnMonitor(cfg["dataloader"]["train"]["dataset"], aug, k=knn_cfg["k"],
                             temperature=knn_cfg["temperature"], num_train=knn_cfg["num_train"],
                             num_val=knn_cfg["num_val"], batch_size=derived["per_device_batch"])
    # "running" only from here: a signal during the set-up above leaves the summary as it was, one from here on is
    # recorded as "interrupted"
    summary = {"run_id": run_dir.name, "kind": KIND, "status": "running", "config_hash": results.config_hash(cfg),
               "variant": cfg["variant"] or "baseline", "grid": cfg["grid"] or None, "seed": cfg["seed"],
               "world_size": ctx.world_size, "device": ctx.device, **results.environment()}
    metrics, progress, step = None, None, start_step
    try:
        if ctx.is_main:
            results.write_config(run_dir, cfg)
            run_folder.write_summary(run_dir, summary)
            metrics = results.MetricsLog(run_dir / "metrics.jsonl", start_step)
            if verbose:
                print(f"run {run_dir}" + (f", resumed at step {start_step}" if start_step else ""), flush=True)
                print(f"{ctx.world_size} process(es) on {ctx.device}, batch {derived['global_batch']} "
                      f"({derived['per_device_batch']}/process), lr {derived['peak_lr']:.4g} (= base lr x "
                      f"{derived['schedule_batch']}/256 unless set), {derived['total_steps']} steps "
                      f"({derived['warmup_steps']} warm-up)", flush=True)
        progress = Progress(derived["total_steps"], start_step, every_log, verbose and ctx.is_main)
        sums: dict[str, float] = {}
        window_start, window_steps, run_start = time.perf_counter(), 0, time.perf_counter()
        model.train()
        for step, (view1, params1, view2, params2, labels) in enumerate(loader, start=start_step):
            lr = lr_at(step, peak_lr=derived["peak_lr"], warmup_steps=derived["warmup_steps"],
                       total_steps=derived["lr_steps"], start_lr=sched["start_lr"], periodic=periodic)
            tau = tau_at(step, base_tau=cfg["model"]["target_decay_rate"], total_steps=derived["tau_steps"],
                         method=cfg["model"]["target_decay_method"], periodic=periodic)
            batch = (device_augment(view1, params1, aug), device_augment(view2, params2, aug), labels)
            sums_step: dict[str, float] = {}
            for chunk in zip(*(paddle.split(t, chunks) for t in batch), strict=True):
                out = net(*chunk)
                (out["loss"] / chunks).backward()
                for key, value in out.items():
                    sums_step[key] = sums_step.get(key, 0.0) + float(value) / chunks
            values = distributed.mean_over_ranks(sums_step, ctx)
            if not math.isfinite(values["loss"]):
                raise NonFiniteLossError(
                    f"step {step}: loss is {values['loss']} (byol {values['byol_loss']}); stopping. The last good "
                    f"checkpoint is {latest_checkpoint(ckpt_dir) or 'none (no checkpoint written yet)'}; lower the "
                    "learning rate or check the data")
            optimizer.step(lr)
            optimizer.clear_grad()
            if cfg["model"]["update_target"]:
                update_target(model.online, model.target, tau)

            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
            window_steps += 1
            done = step + 1
            row = {"step": done, "epoch": done / derived["steps_per_epoch"], "lr": lr, "tau": tau,
                   **{k: v / window_steps for k, v in sums.items()},
                   "images_per_s": derived["global_batch"] * window_steps
                   / max(time.perf_counter() - window_start, 1e-9)}
            logged = done % every_log == 0 or done == derived["total_steps"]
            if logged:
                if metrics is not None:
                    metrics.append(row)
                sums, window_steps, window_start = {}, 0, time.perf_counter()
            progress.update(done, row, logged)
            if every_knn and (done % every_knn == 0 or done == derived["total_steps"]):
                if monitor is not None:
                    measured_at = time.perf_counter()
                    knn = {"step": done, "epoch": done / derived["steps_per_epoch"],
                           "knn_top1": monitor(model.online.encoder)}
                    window_start += time.perf_counter() - measured_at  # not part of the training throughput
                    if metrics is not None:
                        metrics.append(knn)
                    if verbose:
                        print(f"step {done}/{derived['total_steps']}  kNN top-1 {console.percent(knn['knn_top1'])} "
                              f"(k={monitor.k})", flush=True)
                distributed.barrier(ctx)
            if done % every_ckpt == 0 or done == derived["total_steps"]:
                finite = distributed.mean_over_ranks({"finite": float(all_finite(model))}, ctx)["finite"] == 1.0
                if not finite:  # every rank agrees, so every rank stops
                    raise NonFiniteLossError(
                        f"step {step}: the weights became NaN or infinite (loss was {values['loss']}); stopping "
                        f"without writing a checkpoint. The last good one is "
                        f"{latest_checkpoint(ckpt_dir) or 'none'}; lower the learning rate")
                if ctx.is_main:
                    wall = elapsed_before + time.perf_counter() - run_start
                    save_checkpoint(ckpt_dir, done, model, optimizer, {"wall_time_s": wall},
                                    keep=cfg["checkpoint"]["keep"])
    except BaseException as err:
        if ctx.is_main:
            run_folder.record_end(run_dir, summary, err, stopped_at_step=step)
        raise
    finally:
        if progress is not None:
            progress.close()

    identical = distributed.replicas_identical([*weights(model.online), *weights(model.predictor)], ctx)
    if ctx.is_main:
        wall = elapsed_before + time.perf_counter() - run_start
        rows = results.read_metrics(run_dir)
        final = rows[-1] if rows else {}
        steps_run = derived["total_steps"] - start_step
        run_folder.write_summary(run_dir, {
            **summary, "status": "finished", "evaluation": "online probe", "total_steps": derived["total_steps"],
            "epochs": cfg["epochs"], "global_batch": derived["global_batch"],
            "dataset": cfg["dataloader"]["train"]["dataset"]["name"],
            "backbone": f"resnet{cfg['model']['backbone']['depth']}", "wall_time_s": wall,
            "images_per_s": derived["global_batch"] * steps_run / max(time.perf_counter() - run_start, 1e-9),
            "replicas_identical": identical, "final": final,
            "skipped_files": {"count": len(loader.skipped_files()), "files": loader.skipped_files()},
        })
        if verbose:
            print(f"finished: {run_dir}", flush=True)
    return run_dir
