"""The linear-evaluation run: a classification config -> frozen backbone -> ``evaluate`` -> a run folder.

``tools/train.py -c configs/byol/byol_clas_r50.yaml --pretrained W`` trains the linear head on a frozen
backbone and saves ``classifier.pdparams`` (backbone + head, like PASSL's ``byol_r50_clas.pdparams``);
``--load CLS_W --evaluate-only`` evaluates such a file on the validation split.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from byol_lib import distributed, fast, results
from byol_lib.checkpoint import latest_checkpoint
from byol_lib.config import Config, ConfigError
from byol_lib.data.datasets import build_dataset
from byol_lib.evaluate import Features, LinearEvalSettings, compute_features, evaluate_head, knn_predict, linear_eval
from byol_lib.export import ExportError, extract_online_encoder, load_any_checkpoint, save_weights
from byol_lib.model import ResNet

KIND = "linear"
IMAGENET_TRAIN, IMAGENET_HOLDOUT = 1281167, 10009
RANDOM_INIT = "random"
PREDICTIONS = "predictions.npz"  # per test image: labels, the linear head's and each kNN's predicted class
RANDOM_INIT_PREFIX = "random_init_"  # the same predictions of the random-init baseline, under these keys


def build_backbone(cfg: Config) -> ResNet:
    backbone = cfg["model"]["backbone"]
    return ResNet(backbone["depth"], backbone["stem"], backbone["width"], backbone["zero_init_residual"],
                  backbone["padding"])


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


def _random_init_baseline(cfg: Config, train: Any, test: Any, settings: LinearEvalSettings) -> dict[str, Any]:
    """The same evaluation on an untrained backbone: what pretraining bought."""
    paddle.seed(cfg["seed"] + 1)
    outcome = _evaluate(build_backbone(cfg), train, test, cfg, settings, log=None)
    result = outcome.pop("result")
    return {"top1": result.test_top1, "top5": result.test_top5, "chosen_lr": result.chosen_lr, **outcome}


def _format_row(row: Mapping[str, Any]) -> str:
    """One line per epoch: per-lr figures as lr:value pairs, the per-lr lr values left out."""
    parts = []
    for key, value in row.items():
        if key == "lr" or key == "seconds":
            continue
        if isinstance(value, Mapping):
            parts.append(f"{key} " + " ".join(f"{lr:g}:{v:.3f}" for lr, v in value.items()))
        else:
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return "  ".join(parts)


def run_linear_eval(cfg: Config, pretrained: str | None = None, load: Path | None = None,
                    evaluate_only: bool = False, verbose: bool = True) -> Path:
    """Linear evaluation (or evaluation of a saved classifier) for a validated classification config."""
    ctx = distributed.init(cfg["device"])
    fast.set_cpu_kernels(cfg["cpu_kernels"])
    pretrained = pretrained or cfg["model"]["backbone"]["pretrained"] or None
    if evaluate_only and load is None:
        raise ConfigError("--evaluate-only needs --load CLASSIFIER_WEIGHTS (a saved classifier.pdparams)")
    if load is None and pretrained is None:
        raise ConfigError("no backbone weights: pass --pretrained WEIGHTS (a checkpoint or an extracted file), "
                          f"or --pretrained {RANDOM_INIT} for the random-initialisation baseline")
    train = build_dataset(cfg["dataloader"]["train"]["dataset"], "train")
    test = build_dataset(cfg["dataloader"]["val"]["dataset"], "val")
    paddle.seed(cfg["seed"])
    backbone = build_backbone(cfg)
    head = None
    if load is not None:
        head = load_classifier(backbone, load)
    elif pretrained != RANDOM_INIT:
        load_pretrained(backbone, pretrained)
    settings = settings_from(cfg, ctx.world_size, len(train), len(train.classes))
    cfg = {**cfg, "derived": {"world_size": ctx.world_size, "batch_size": settings.batch_size,
                              "holdout": settings.holdout, "num_train": len(train), "num_test": len(test),
                              "classes": list(train.classes), "pretrained": str(load or pretrained)}}
    digest = results.config_hash(cfg)
    kind = "evaluate" if evaluate_only else KIND
    if cfg["run_id"]:  # a named run: reuse it when it finished with this config, else (re)run into it
        run_dir = Path(cfg["output_dir"]) / cfg["run_id"]
        previous = results.read_summary(run_dir)
        if previous.get("status") == "finished" and previous.get("config_hash") == digest:
            if verbose and ctx.is_main:
                print(f"already finished: {run_dir}", flush=True)
            return run_dir
        if previous and previous.get("config_hash") != digest:
            raise ConfigError(f"{run_dir} holds a run of a different config; choose another run_id or output_dir")
        if ctx.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    else:
        run_dir = Path(distributed.broadcast_object(
            str(results.new_run_dir(Path(cfg["output_dir"]), kind, digest)) if ctx.is_main else None, ctx))
    summary: dict[str, Any] = {"run_id": run_dir.name, "kind": kind, "status": "running", "config_hash": digest,
                               "world_size": ctx.world_size, "device": ctx.device,
                               "pretrained": str(load or pretrained),
                               "dataset": cfg["dataloader"]["train"]["dataset"]["name"],
                               "backbone": f"resnet{cfg['model']['backbone']['depth']}", "seed": cfg["seed"],
                               **results.environment()}
    start = time.perf_counter()
    if ctx.is_main:
        results.write_config(run_dir, cfg)
        results.write_json_atomic(run_dir / "summary.json", summary)
    metrics = results.MetricsLog(run_dir / "metrics.jsonl", 0) if ctx.is_main else None

    def log(row: dict[str, Any]) -> None:
        if metrics is not None:
            metrics.append(row)
        if verbose and ctx.is_main:
            print(_format_row(row), flush=True)

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
            if cfg["linear_eval"]["random_init_baseline"] and pretrained != RANDOM_INIT:
                figures["random_init"] = _random_init_baseline(cfg, train, test, settings)
                untrained = figures["random_init"].pop("predictions")
                predictions.update({RANDOM_INIT_PREFIX + key: value for key, value in untrained.items()
                                    if key != "labels"})
            if ctx.is_main:
                results.write_arrays_atomic(run_dir / PREDICTIONS, predictions)
    except BaseException as err:
        if ctx.is_main:
            results.write_json_atomic(run_dir / "summary.json",
                                      {**summary, "status": "failed", "error": f"{type(err).__name__}: {err}"})
        raise
    if ctx.is_main:
        results.write_json_atomic(run_dir / "summary.json", {
            **summary, "status": "finished", "evaluation": "offline linear", **figures,
            "wall_time_s": time.perf_counter() - start})
        if verbose:
            print(f"top-1 {figures['top1']:.4f}  top-5 {figures['top5']:.4f}  ->  {run_dir}", flush=True)
    return run_dir
