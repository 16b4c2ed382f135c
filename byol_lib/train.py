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

import math
import sys
import time
from pathlib import Path
from typing import Any

import paddle
import paddle.nn as nn

from byol_lib import distributed, fast, results, runtime
from byol_lib.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
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


def _run_folder(cfg: Config, resume: Path | None) -> Path:
    if resume is not None:
        return resume.resolve().parent.parent
    output_dir = Path(cfg["output_dir"])
    if cfg["run_id"]:
        folder = output_dir / cfg["run_id"]
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    digest = results.config_hash(cfg)
    return results.find_resumable(output_dir, KIND, digest) or results.new_run_dir(output_dir, KIND, digest)


class Progress:
    """tqdm on a terminal; plain periodic lines otherwise (logs, notebooks, CI)."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
        self.enabled = enabled

    def update(self, steps: int, row: dict[str, Any] | None) -> None:
        if self.bar is not None:
            self.bar.update(steps)
            if row:
                self.bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.3g}",
                                     img_s=f"{row['images_per_s']:.1f}")
        elif self.enabled and row:
            print(f"step {row['step']:>7d}  epoch {row['epoch']:7.2f}  loss {row['loss']:.4f}  "
                  f"byol {row['byol_loss']:.4f}  acc {row['online_accuracy']:.3f}  lr {row['lr']:.4g}  "
                  f"tau {row['tau']:.5f}  z_std {row['z_std']:.4f}  {row['images_per_s']:.1f} img/s", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def pretrain(cfg: Config, resume: Path | None = None, verbose: bool = True) -> Path:
    """Run (or resume) BYOL pretraining for a validated config; return the run folder."""
    ctx = distributed.init(cfg["device"])
    workers = 0 if ctx.on_gpu else cfg["dataloader"]["train"]["num_workers"]
    with runtime.cores_left_for_workers(workers):
        return _pretrain(cfg, ctx, resume, verbose)


def _pretrain(cfg: Config, ctx: distributed.Context, resume: Path | None, verbose: bool) -> Path:
    """The body of ``pretrain`` on an initialised device context."""
    fast.set_cpu_kernels(cfg["cpu_kernels"])
    images = build_dataset(cfg["dataloader"]["train"]["dataset"], "train")
    cfg = resolve(cfg, ctx.world_size, len(images), len(images.classes))
    cfg["derived"]["classes"] = list(images.classes)
    derived = cfg["derived"]
    run_dir = Path(distributed.broadcast_object(str(_run_folder(cfg, resume)) if ctx.is_main else None, ctx))
    previous = results.read_summary(run_dir)
    if previous and previous.get("config_hash") != results.config_hash(cfg):
        raise ConfigError(f"{run_dir} holds a run of a different config; choose another run_id or output_dir")
    ckpt_dir = run_dir / "checkpoints"

    paddle.seed(cfg["seed"])
    model = build_model(cfg)
    if cfg["model"]["init"] == "passl":
        passl_initialise(model, align_target=cfg["model"]["align_init_network"])
    synchronise_batch_norm(model, cfg, ctx)
    optimizer = build_optimizer(model, cfg)
    source = resume or latest_checkpoint(ckpt_dir)
    state = load_checkpoint(source, model, optimizer) if source else {"step": 0, "extra": {}}
    start_step, elapsed_before = state["step"], state["extra"].get("wall_time_s", 0.0)
    if start_step >= derived["total_steps"] and (run_dir / "summary.json").is_file():
        if verbose and ctx.is_main:
            print(f"already finished: {run_dir}", flush=True)
        return run_dir
    net = paddle.DataParallel(model) if ctx.world_size > 1 else model
    loader = pretrain_loader(images, cfg, ctx.rank, ctx.world_size, start_step)

    summary = {"run_id": run_dir.name, "kind": KIND, "status": "running", "config_hash": results.config_hash(cfg),
               "variant": cfg["variant"] or "baseline", "grid": cfg["grid"] or None, "seed": cfg["seed"],
               "world_size": ctx.world_size, "device": ctx.device, **results.environment()}
    metrics = None
    if ctx.is_main:
        results.write_config(run_dir, cfg)
        results.write_json_atomic(run_dir / "summary.json", summary)
        metrics = results.MetricsLog(run_dir / "metrics.jsonl", start_step)
        if verbose:
            print(f"run {run_dir}  |  {ctx.world_size} process(es) on {ctx.device}  |  global batch "
                  f"{derived['global_batch']} ({derived['per_device_batch']}/process)  |  lr {derived['peak_lr']:.4g} "
                  f"(= {cfg['lr_scheduler']['base_lr']} x {derived['schedule_batch']}/256 unless set)  |  "
                  f"{derived['total_steps']} steps, warm-up {derived['warmup_steps']}"
                  + (f"  |  resumed at step {start_step}" if start_step else ""), flush=True)

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
    progress = Progress(derived["total_steps"], start_step, verbose and ctx.is_main)
    sums: dict[str, float] = {}
    window_start, window_steps, run_start = time.perf_counter(), 0, time.perf_counter()
    step = start_step
    model.train()
    try:
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
            row = None
            if done % every_log == 0 or done == derived["total_steps"]:
                seconds = time.perf_counter() - window_start
                row = {"step": done, "epoch": done / derived["steps_per_epoch"], "lr": lr, "tau": tau,
                       **{k: v / window_steps for k, v in sums.items()},
                       "images_per_s": derived["global_batch"] * window_steps / max(seconds, 1e-9)}
                if metrics is not None:
                    metrics.append(row)
                sums, window_steps, window_start = {}, 0, time.perf_counter()
            progress.update(1, row)
            if every_knn and (done % every_knn == 0 or done == derived["total_steps"]):
                if monitor is not None:
                    measured_at = time.perf_counter()
                    knn = {"step": done, "epoch": done / derived["steps_per_epoch"],
                           "knn_top1": monitor(model.online.encoder)}
                    window_start += time.perf_counter() - measured_at  # not part of the training throughput
                    if metrics is not None:
                        metrics.append(knn)
                    if verbose:
                        print(f"step {done:>7d}  kNN top-1 (k={monitor.k}) {knn['knn_top1']:.4f}", flush=True)
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
            results.write_json_atomic(run_dir / "summary.json",
                                      {**summary, "status": "failed", "failed_at_step": step,
                                       "error": f"{type(err).__name__}: {err}"})
        raise
    finally:
        progress.close()

    identical = distributed.replicas_identical([*weights(model.online), *weights(model.predictor)], ctx)
    if ctx.is_main:
        wall = elapsed_before + time.perf_counter() - run_start
        rows = results.read_metrics(run_dir)
        final = rows[-1] if rows else {}
        steps_run = derived["total_steps"] - start_step
        results.write_json_atomic(run_dir / "summary.json", {
            **summary, "status": "finished", "evaluation": "online probe", "total_steps": derived["total_steps"],
            "epochs": cfg["epochs"], "global_batch": derived["global_batch"],
            "dataset": cfg["dataloader"]["train"]["dataset"]["name"],
            "backbone": f"resnet{cfg['model']['backbone']['depth']}", "wall_time_s": wall,
            "images_per_s": derived["global_batch"] * steps_run / max(time.perf_counter() - run_start, 1e-9),
            "replicas_identical": identical, "final": final,
        })
        if verbose:
            print(f"finished: {run_dir}", flush=True)
    return run_dir
