"""The linear-evaluation run: a classification config -> frozen backbone -> ``evaluate`` -> a run folder.

``tools/train.py -c configs/byol/byol_clas_r50.yaml --pretrained W`` trains the linear head on a frozen
backbone and saves ``classifier.pdparams`` (backbone + head, like PASSL's ``byol_r50_clas.pdparams``);
``--load CLS_W --evaluate-only`` evaluates such a file on the validation split.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from byol_lib import console, distributed, results, run_folder
from byol_lib.atomic import write_atomic
from byol_lib.checkpoint import latest_checkpoint
from byol_lib.choices import RANDOM_WEIGHTS
from byol_lib.config import Config, ConfigError
from byol_lib.data.datasets import build_dataset
from byol_lib.evaluate import Features, LinearEvalSettings, compute_features, evaluate_head, linear_eval
from byol_lib.export import ExportError, extract_online_encoder, load_any_checkpoint, save_weights
from byol_lib.knn import knn_predict
from byol_lib.model import ResNet, encoder_from_config

KIND = "linear"
IMAGENET_TRAIN, IMAGENET_HOLDOUT = 1281167, 10009
PROGRESS_LINES = 8  # at most this many epoch lines (+ the last) per training of heads
PREDICTIONS = "predictions.npz"  # per test image: labels, the linear head's and each kNN's predicted class
RANDOM_INIT_PREFIX = "random_init_"  # the same predictions of the random-init baseline, under these keys


def build_backbone(cfg: Config) -> ResNet:
    return encoder_from_config(cfg["model"]["backbone"], cfg["cpu_kernels"])


def _load_strict(backbone: ResNet, state: Mapping[str, np.ndarray], source: str) -> None:
    own = backbone.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if list(own[k].shape) != list(np.shape(state[k])))
    if missing or unexpected or wrong:
        raise ConfigError(
            f"{source} does not fit the backbone in the config ({len(own)} tensors): missing {missing[:6]}, "
            f"unexpected {unexpected[:6]}, wrong shape {wrong[:6]}; check model.backbone.depth/stem/width/padding")
    backbone.set_state_dict({k: np.asarray(v) for k, v in state.items()})


def load_pretrained(backbone: ResNet, path: str) -> None:
    """Backbone weights from one of our checkpoints (or a pretraining run folder: its latest), a PASSL checkpoint
    or an extracted file; all keys must fit."""
    source = Path(path)
    if source.is_dir():
        found = latest_checkpoint(source / "checkpoints")
        if found is None:
            raise ConfigError(f"--pretrained {path}: a folder without checkpoints (no {source / 'checkpoints'}/step_*)")
        source = found
    try:
        state = extract_online_encoder(load_any_checkpoint(source))
    except ExportError as err:
        raise ConfigError(f"--pretrained {path}: {err}") from err
    _load_strict(backbone, state, f"--pretrained {path}")


def load_classifier(backbone: ResNet, path: Path) -> dict[str, np.ndarray]:
    """A saved classifier (``backbone.*`` + ``head.fc.*``, ours or PASSL's): loads the backbone, returns the head."""
    try:
        state = load_any_checkpoint(path)
    except ExportError as err:
        raise ConfigError(f"--load {path}: {err}") from err
    head = {k.rsplit(".", 1)[-1]: np.asarray(v) for k, v in state.items() if k.startswith(("head.fc.", "head."))}
    if set(head) != {"weight", "bias"}:
        raise ConfigError(f"--load {path}: no linear head (head.fc.weight / head.fc.bias) in the file")
    body = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    _load_strict(backbone, body, f"--load {path}")
    return head


def save_classifier(path: Path, backbone: ResNet, head: Mapping[str, np.ndarray]) -> None:
    state = {f"backbone.{k}": v.numpy() for k, v in backbone.state_dict().items()}
    state.update({f"head.fc.{k}": np.asarray(v) for k, v in head.items()})
    save_weights(state, path, (".pdparams",))


def holdout_size(cfg: Config, num_train: int, num_classes: int) -> int:
    """The paper's 10,009 of 1,281,167 images, proportionally on smaller sets (at least 20 per class, at most 1/5)."""
    requested = cfg["linear_eval"]["holdout"]
    if num_train >= IMAGENET_TRAIN:
        return requested
    proportional = round(requested * num_train / IMAGENET_TRAIN)
    return min(max(proportional, 20 * num_classes), num_train // 5)


def settings_from(cfg: Config, world_size: int, num_train: int, num_classes: int) -> LinearEvalSettings:
    """Evaluation settings from a classification config; PASSL's absolute-lr keys mean a single, unscaled lr."""
    per_device = cfg["dataloader"]["train"]["sampler"]["batch_size"]
    batch = cfg["global_batch_size"] or per_device * world_size
    sched, evaluation = cfg["lr_scheduler"], cfg["linear_eval"]
    for key, expected in (("total_steps", cfg["epochs"]), ("total_batch", batch)):
        if sched[key] is not None and sched[key] != expected:
            raise ConfigError(f"key 'lr_scheduler.{key}' = {sched[key]} but the run has {expected} "
                              f"({'epochs' if key == 'total_steps' else 'global batch'}); drop it or make them agree")
    absolute = sched["learning_rate"] if sched["learning_rate"] is not None else sched["end_lr"]
    grid = [absolute] if absolute is not None else list(sched["lr_grid"])
    return LinearEvalSettings(
        protocol=evaluation["protocol"], epochs=cfg["epochs"], batch_size=batch, lr_grid=tuple(grid),
        scale_lr_by_batch=sched["scale_lr_by_batch"] and absolute is None,
        momentum=cfg["optimizer"]["momentum"], nesterov=cfg["optimizer"]["use_nesterov"],
        weight_decay=cfg["optimizer"]["weight_decay"], augment=evaluation["augment"],
        holdout=holdout_size(cfg, num_train, num_classes) if evaluation["protocol"] == "paper" else 0,
        head_init=evaluation["head_init"], extend_grid=evaluation["extend_grid"],
        standardize=evaluation["standardize"], seed=cfg["seed"],
        num_workers=cfg["dataloader"]["train"]["num_workers"])


def split_features(backbone: ResNet, train: Any, test: Any, aug: Config,
                   settings: LinearEvalSettings) -> tuple[Features, Features]:
    """The centre-crop features of both splits, computed once for the linear heads and the kNN."""
    train_features, test_features = (compute_features(backbone, split, aug, batch_size=settings.batch_size,
                                                      num_workers=settings.num_workers) for split in (train, test))
    return train_features, test_features


def _evaluate(backbone: ResNet, train: Any, test: Any, cfg: Config, settings: LinearEvalSettings,
              log: Any) -> dict[str, Any]:
    """The linear evaluation's result, each kNN's top-1 (``knn_top1_k<k>``) and every per-image prediction."""
    aug, evaluation = cfg["augmentation"], cfg["linear_eval"]
    features = split_features(backbone, train, test, aug, settings)
    result = linear_eval(backbone, train, test, aug, settings, log=log, features=features)
    (train_x, train_y), (test_x, labels) = features
    ks = [k for k in evaluation["knn_k"] if k <= len(train_y)]
    knn = knn_predict(train_x, train_y, test_x, ks=ks, temperature=evaluation["knn_temperature"],
                      num_classes=len(train.classes))
    predictions = {"labels": labels, "linear": result.test_predictions,
                   **{f"knn_k{k}": predicted for k, predicted in knn.items()}}
    return {"result": result, "predictions": predictions,
            **{f"knn_top1_k{k}": float((predicted == labels).mean()) for k, predicted in knn.items()}}


def _random_init_baseline(cfg: Config, train: Any, test: Any, settings: LinearEvalSettings,
                          log: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    """The same evaluation on an untrained backbone: what pretraining bought."""
    paddle.seed(cfg["seed"] + 1)
    outcome = _evaluate(build_backbone(cfg), train, test, cfg, settings, log=log)
    result = outcome.pop("result")
    return {"top1": result.test_top1, "top5": result.test_top5, "chosen_lr": result.chosen_lr, **outcome}


class EpochProgress:
    """Console lines of linear evaluation: per training of the heads (the grid, each extension of it, the random-init
    baseline) at most ``PROGRESS_LINES`` + 1 lines: epoch n/N, elapsed, ETA and the best head's held-out top-1."""

    def __init__(self, label: str, epochs: int, clock: Callable[[], float] = time.perf_counter) -> None:
        self.label, self.epochs, self.clock = label, epochs, clock
        self.began = clock()
        self.pacer = console.Pacer(epochs, math.ceil(epochs / PROGRESS_LINES), heartbeat=None, clock=clock)

    def __call__(self, entry: Mapping[str, Any]) -> None:
        if entry["epoch"] == 1:  # a new training of heads: its clock starts when its first epoch did
            self.began = self.clock() - entry["seconds"]
        if self.pacer.due(entry["epoch"]):
            print(epoch_line(self.label, entry, self.epochs, self.clock() - self.began), flush=True)


def epoch_line(label: str, entry: Mapping[str, Any], epochs: int, elapsed: float) -> str:
    """``<label> epoch n/N  <elapsed> elapsed, ETA <left>  held-out top-1 61.2% (lr 6.4)`` (PASSL: the test top-1;
    without either: the lowest training loss)."""
    scores = entry.get("holdout_top1")
    if scores:
        lr, top1 = max(scores.items(), key=lambda item: item[1])
        details = f"best held-out top-1 {console.percent(top1, 1)} (lr {lr:g})"
    elif "test_top1" in entry:
        details = f"test top-1 {console.percent(entry['test_top1'], 1)}"
    else:
        lr, loss = min(entry["train_loss"].items(), key=lambda item: item[1])
        details = f"train loss {loss:.4f} (lr {lr:g})"
    return f"{label} " + console.progress_line("epoch", entry["epoch"], epochs, elapsed, details)


def result_line(figures: Mapping[str, Any]) -> str:
    """The run's result in one line: linear top-1 (and the chosen lr), kNN top-1, the random-init encoder's."""
    parts = [f"top-1 {console.percent(figures['top1'])}"
             + (f" (lr {figures['chosen_lr']:g})" if figures.get("chosen_lr") is not None else "")]
    k = console.knn_k(figures)
    if k is not None:
        parts.append(f"kNN {console.percent(figures[f'knn_top1_k{k}'])} (k={k})")
    random = figures.get("random_init")
    if isinstance(random, Mapping):
        knn = f", kNN {console.percent(random[f'knn_top1_k{k}'])}" if f"knn_top1_k{k}" in random else ""
        parts.append(f"random init: top-1 {console.percent(random['top1'])}{knn}")
    return "; ".join(parts)


def run_linear_eval(cfg: Config, pretrained: str | None = None, load: Path | None = None,
                    evaluate_only: bool = False, verbose: bool = True, wait: bool = False) -> Path:
    """Linear evaluation (or evaluation of a saved classifier) for a validated classification config.

    ``wait``: when another process holds a named run's folder, wait for it instead of raising ``RunFolderBusy``.
    """
    with contextlib.ExitStack() as stack:
        return _run_linear_eval(cfg, pretrained, load, evaluate_only, verbose, wait, stack)


def _run_linear_eval(cfg: Config, pretrained: str | None, load: Path | None, evaluate_only: bool, verbose: bool,
                     wait: bool, stack: contextlib.ExitStack) -> Path:
    """The body of ``run_linear_eval``; the run folder is held until ``stack`` closes."""
    ctx = distributed.init(cfg["device"])
    pretrained = pretrained or cfg["model"]["backbone"]["pretrained"] or None
    if evaluate_only and load is None:
        raise ConfigError("--evaluate-only needs --load CLASSIFIER_WEIGHTS (a saved classifier.pdparams)")
    if load is None and pretrained is None:
        raise ConfigError("no backbone weights: pass --pretrained WEIGHTS (a checkpoint or an extracted file), "
                          f"or --pretrained {RANDOM_WEIGHTS} for the random-initialisation baseline")
    train = build_dataset(cfg["dataloader"]["train"]["dataset"], "train")
    test = build_dataset(cfg["dataloader"]["val"]["dataset"], "val")
    paddle.seed(cfg["seed"])
    backbone = build_backbone(cfg)
    head = None
    if load is not None:
        head = load_classifier(backbone, load)
    elif pretrained != RANDOM_WEIGHTS:
        load_pretrained(backbone, pretrained)
    settings = settings_from(cfg, ctx.world_size, len(train), len(train.classes))
    cfg = {**cfg, "derived": {"world_size": ctx.world_size, "batch_size": settings.batch_size,
                              "holdout": settings.holdout, "num_train": len(train), "num_test": len(test),
                              "classes": list(train.classes), "pretrained": str(load or pretrained)}}
    digest = results.config_hash(cfg)
    kind = "evaluate" if evaluate_only else KIND
    if cfg["run_id"]:  # a named run: reuse it when it finished with this config, else (re)run into it
        run_dir = Path(cfg["output_dir"]) / cfg["run_id"]
        if ctx.is_main:
            stack.enter_context(run_folder.hold(run_dir, wait))
        previous = results.read_summary(run_dir)
        same = bool(previous) and results.same_config(run_dir, cfg)
        if previous.get("status") == "finished" and same:
            if verbose and ctx.is_main:
                print(f"already finished: {run_dir}", flush=True)
            return run_dir
        if previous.get("config_hash") is not None and not same:
            raise ConfigError(f"{run_dir} holds a run of a different config; choose another run_id or output_dir")
        if ctx.is_main:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    else:
        run_dir = Path(distributed.broadcast_object(
            str(results.new_run_dir(Path(cfg["output_dir"]), kind, digest)) if ctx.is_main else None, ctx))
        if ctx.is_main:
            stack.enter_context(run_folder.hold(run_dir, wait))
    summary: dict[str, Any] = {"run_id": run_dir.name, "kind": kind, "status": "running", "config_hash": digest,
                               "world_size": ctx.world_size, "device": ctx.device,
                               "pretrained": str(load or pretrained),
                               "dataset": cfg["dataloader"]["train"]["dataset"]["name"],
                               "backbone": f"resnet{cfg['model']['backbone']['depth']}", "seed": cfg["seed"],
                               **results.environment()}
    start = time.perf_counter()
    if ctx.is_main:
        results.write_config(run_dir, cfg)
        run_folder.write_summary(run_dir, summary)
    metrics = results.MetricsLog(run_dir / "metrics.jsonl", 0) if ctx.is_main else None
    talk = verbose and ctx.is_main
    progress = EpochProgress("linear", settings.epochs)

    def log(row: dict[str, Any]) -> None:
        if metrics is not None:
            metrics.append(row)
        if talk:
            progress(row)

    try:
        if evaluate_only:
            assert head is not None
            scores = evaluate_head(backbone, head, test, cfg["augmentation"], batch_size=settings.batch_size)
            figures: dict[str, Any] = {"top1": scores["top1"], "top5": scores["top5"]}
        else:
            outcome = _evaluate(backbone, train, test, cfg, settings, log)
            result, predictions = outcome.pop("result"), outcome.pop("predictions")
            figures = {"protocol": result.protocol, "top1": result.test_top1, "top5": result.test_top5,
                       "chosen_lr": result.chosen_lr, "grid_extended": result.grid_extended,
                       "holdout_top1": {str(k): v for k, v in result.holdout_top1.items()},
                       "batch_size": settings.batch_size, "epochs": settings.epochs, **outcome}
            if ctx.is_main:
                save_classifier(run_dir / "classifier.pdparams", backbone, result.head)
            if cfg["linear_eval"]["random_init_baseline"] and pretrained != RANDOM_WEIGHTS:
                figures["random_init"] = _random_init_baseline(
                    cfg, train, test, settings, EpochProgress("random init", settings.epochs) if talk else None)
                untrained = figures["random_init"].pop("predictions")
                predictions.update({RANDOM_INIT_PREFIX + key: value for key, value in untrained.items()
                                    if key != "labels"})
            if ctx.is_main:
                write_atomic(run_dir / PREDICTIONS, lambda handle: np.savez(handle, **predictions))
    except BaseException as err:
        if ctx.is_main:
            run_folder.record_end(run_dir, summary, err)
        raise
    if ctx.is_main:
        run_folder.write_summary(run_dir, {
            **summary, "status": "finished", "evaluation": "offline linear", **figures,
            "wall_time_s": time.perf_counter() - start})
        if verbose:
            print(f"result: {result_line(figures)}  ->  {run_dir}", flush=True)
    return run_dir
