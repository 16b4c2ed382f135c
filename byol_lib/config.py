"""Configs: PASSL-compatible YAML, ``-o key.sub=value`` overrides, validation and derived values.

The schema is the key layout of PASSL's ``configs/byol/byol_r50_IM.yaml``; its defaults are the
paper's 300-epoch recipe (reference §3.1): base lr 0.3 x global batch / 256, LARS (eta 1e-3,
wd 1e-6), 10 warm-up epochs, tau_base 0.99. Every key a user can set is listed here; anything else
is rejected with the closest valid key. ``resolve`` adds the values that depend on the world size
and the dataset (global batch, learning rate, number of steps) under ``derived``.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from byol_lib.data.augment import AUGMENT_DEFAULTS, validate_augment

Config = dict[str, Any]


class ConfigError(ValueError):
    """A config file, key or value that cannot be used; the message names it."""


PRETRAIN_DEFAULTS: Config = {
    "epochs": 300,
    "seed": 0,
    "device": "auto",
    "output_dir": "results",
    "run_id": "",
    "global_batch_size": None,
    "total_images": None,
    "use_byol_iters": True,
    "model": {
        "name": "BYOL",
        "backbone": {
            "name": "ResNet",
            "depth": 50,
            "stem": "imagenet",
            "width": 64,
            "with_pool": True,
            "num_classes": 0,
            "zero_init_residual": False,
        },
        "neck": {
            "name": "NonLinearNeckV2",
            "in_channels": None,
            "hid_channels": 4096,
            "out_channels": 256,
            "with_avg_pool": False,
            "last_bias": False,
        },
        "predictor": {
            "name": "NonLinearNeckV2",
            "in_channels": None,
            "hid_channels": 4096,
            "out_channels": 256,
            "with_avg_pool": False,
            "last_bias": False,
        },
        "head": {"name": "L2Head"},
        "target_decay_method": "cosine",
        "target_decay_rate": 0.99,
        "align_init_network": True,
        "use_synch_bn": True,
        "sync_predictor_bn": True,
        "num_classes": None,
    },
    "dataloader": {
        "train": {
            "num_workers": 2,
            "sampler": {"batch_size": 128, "shuffle": True, "drop_last": True},
            "dataset": {
                "name": "ImageNet",
                "dataroot": "data/ILSVRC2012/train",
                "list_file": "",
                "return_label": True,
                "return_two_sample": True,
                "bad_files": "skip",
                "num_images": 0,
                "seed": 0,
            },
        },
    },
    "augmentation": AUGMENT_DEFAULTS,
    "lr_scheduler": {
        "name": "CosineWarmup",
        "base_lr": 0.3,
        "learning_rate": None,
        "end_lr": None,
        "start_lr": 0.0,
        "warmup_epochs": 10.0,
        "warmup_steps": None,
        "T_max": None,
    },
    "optimizer": {
        "name": "LarsMomentumOptimizer",
        "momentum": 0.9,
        "lars_coeff": 0.001,
        "lars_weight_decay": 1.0e-6,
        "epsilon": 0.0,
        "exclude_from_weight_decay": [".b_0", "batch_norm"],
        "formula": "jax",
    },
    "log_config": {"name": "LogHook", "interval": 10},
    "checkpoint": {"name": "CheckpointHook", "by_epoch": True, "interval": 1, "keep": 2},
}

# Types of keys whose default is None (the others take the type of their default).
_NONE_TYPES: dict[str, type | tuple[type, ...]] = {
    "global_batch_size": int,
    "total_images": int,
    "model.neck.in_channels": int,
    "model.predictor.in_channels": int,
    "model.num_classes": int,
    "lr_scheduler.learning_rate": float,
    "lr_scheduler.end_lr": float,
    "lr_scheduler.warmup_steps": int,
    "lr_scheduler.T_max": int,
}

_CHOICES: dict[str, tuple[Any, ...]] = {
    "device": ("auto", "cpu", "gpu"),
    "model.name": ("BYOL",),
    "model.backbone.name": ("ResNet",),
    "model.backbone.depth": (18, 34, 50),
    "model.backbone.stem": ("imagenet", "cifar"),
    "model.backbone.with_pool": (True,),
    "model.backbone.num_classes": (0,),
    "model.neck.name": ("NonLinearNeckV2",),
    "model.predictor.name": ("NonLinearNeckV2",),
    "model.neck.with_avg_pool": (False, True),
    "model.head.name": ("L2Head",),
    "model.target_decay_method": ("cosine", "fixed"),
    "dataloader.train.dataset.name": ("ImageNet", "Synthetic", "CIFAR10", "CIFAR100"),
    "dataloader.train.dataset.bad_files": ("skip", "strict"),
    "use_byol_iters": (True,),
    "lr_scheduler.name": ("CosineWarmup",),
    "optimizer.name": ("LarsMomentumOptimizer",),
    "optimizer.formula": ("jax", "passl"),
    "log_config.name": ("LogHook",),
    "checkpoint.name": ("CheckpointHook",),
}

_Check = tuple[str, Callable[[Any], bool], str]
_CHECKS: tuple[_Check, ...] = (
    ("epochs", lambda v: v > 0, "must be > 0"),
    ("global_batch_size", lambda v: v is None or v > 0, "must be > 0"),
    ("total_images", lambda v: v is None or v > 0, "must be > 0"),
    ("model.backbone.width", lambda v: v > 0, "must be > 0"),
    ("model.neck.hid_channels", lambda v: v > 0, "must be > 0"),
    ("model.neck.out_channels", lambda v: v > 0, "must be > 0"),
    ("model.predictor.hid_channels", lambda v: v > 0, "must be > 0"),
    ("model.predictor.out_channels", lambda v: v > 0, "must be > 0"),
    ("model.target_decay_rate", lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]"),
    ("model.num_classes", lambda v: v is None or v > 0, "must be > 0"),
    ("dataloader.train.num_workers", lambda v: v >= 0, "must be >= 0"),
    ("dataloader.train.sampler.batch_size", lambda v: v > 0, "must be > 0"),
    ("dataloader.train.dataset.num_images", lambda v: v >= 0, "must be >= 0 (0 = the whole dataset)"),
    ("lr_scheduler.base_lr", lambda v: v >= 0, "must be >= 0"),
    ("lr_scheduler.learning_rate", lambda v: v is None or v >= 0, "must be >= 0"),
    ("lr_scheduler.start_lr", lambda v: v >= 0, "must be >= 0"),
    ("lr_scheduler.warmup_epochs", lambda v: v >= 0, "must be >= 0"),
    ("lr_scheduler.warmup_steps", lambda v: v is None or v >= 0, "must be >= 0"),
    ("lr_scheduler.T_max", lambda v: v is None or v > 0, "must be > 0"),
    ("optimizer.momentum", lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
    ("optimizer.lars_coeff", lambda v: v > 0, "must be > 0"),
    ("optimizer.lars_weight_decay", lambda v: v >= 0, "must be >= 0"),
    ("optimizer.epsilon", lambda v: v >= 0, "must be >= 0"),
    ("log_config.interval", lambda v: v > 0, "must be > 0"),
    ("checkpoint.interval", lambda v: v > 0, "must be > 0"),
    ("checkpoint.keep", lambda v: v > 0, "must be > 0"),
)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-6`` as a string; like YAML 1.2 (and PASSL's eval), read it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*\.?[\d_]*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\.inf|\.nan)$", re.X),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


# ---------------------------------------------------------------------------------------------
# Flat views of nested dicts


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def get(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _set(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[leaf] = value


def closest_key(key: str, valid: Iterable[str]) -> str:
    """The valid key most similar to ``key`` (by full path, then by its last part)."""
    valid = list(valid)
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [v for v in valid if v.rsplit(".", 1)[-1] == leaf]
    if same_leaf:
        return difflib.get_close_matches(key, same_leaf, n=1, cutoff=0.0)[0]
    return match[0] if match else ""


# ---------------------------------------------------------------------------------------------
# Loading, overriding, validating


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], update: Mapping[str, Any], defaults: Mapping[str, Any], source: str,
           prefix: str = "") -> None:
    """Copy ``update`` into ``base``, rejecting keys the schema does not have."""
    valid = flatten(defaults)
    for key, value in update.items():
        path = f"{prefix}{key}"
        if key not in base:
            prefixes = {p for v in valid for p in _prefixes(v)}
            candidates = list(valid) + sorted(prefixes)
            raise ConfigError(
                f"{source}: unknown key '{path}' (value {value!r}); did you mean '{closest_key(path, candidates)}'?"
            )
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: key '{path}' must be a mapping of sub-keys, got {value!r}")
            _merge(base[key], value, defaults, source, path + ".")
        else:
            base[key] = copy.deepcopy(value)


def _prefixes(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=0.1"`` -> ``("a.b", 0.1)``; the value is a YAML literal (never evaluated as code)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': value {raw!r} is not a YAML literal: {err}") from err
    return key, value


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    node: dict[str, Any] = {}
    *parents, leaf = dotted.split(".")
    cursor = node
    for part in parents:
        cursor = cursor.setdefault(part, {})
    cursor[leaf] = value
    return node


def _type_ok(value: Any, expected: type | tuple[type, ...]) -> bool:
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):
        return bool in types
    if float in types and isinstance(value, int):
        return True
    return isinstance(value, types)


def _type_name(expected: type | tuple[type, ...]) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(t.__name__ for t in types)


def validate(cfg: Config, source: str = "config") -> None:
    """Types, choices and ranges of every key; raises ``ConfigError`` naming key and value."""
    flat, reference = flatten(cfg), flatten(PRETRAIN_DEFAULTS)
    for key, default in reference.items():
        value = flat[key]
        expected = _NONE_TYPES.get(key, type(default))
        if value is None and (default is None or key in _NONE_TYPES):
            continue
        if not _type_ok(value, expected):
            raise ConfigError(f"{source}: key '{key}' must be {_type_name(expected)}, got {value!r}")
    for key, choices in _CHOICES.items():
        if flat[key] not in choices:
            raise ConfigError(f"{source}: key '{key}' = {flat[key]!r} is not one of {list(choices)}")
    for key, ok, message in _CHECKS:
        if not ok(flat[key]):
            raise ConfigError(f"{source}: key '{key}' = {flat[key]!r} {message}")
    try:
        validate_augment(cfg["augmentation"])
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from err
    _validate_dataset(cfg, source)


def _validate_dataset(cfg: Config, source: str) -> None:
    dataset = cfg["dataloader"]["train"]["dataset"]
    if dataset["name"] == "Synthetic":
        return
    root = Path(dataset["dataroot"])
    if not root.exists():
        raise ConfigError(
            f"{source}: key 'dataloader.train.dataset.dataroot' = '{root}' does not exist "
            f"(dataset {dataset['name']}); point it at your data, or use "
            "-o dataloader.train.dataset.name=Synthetic for the embedded default dataset"
        )


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> Config:
    """Defaults <- YAML file <- ``-o`` overrides, validated."""
    cfg = copy.deepcopy(PRETRAIN_DEFAULTS)
    source = str(path) if path else "defaults"
    if path:
        _merge(cfg, _read_yaml(Path(path)), PRETRAIN_DEFAULTS, source)
    for text in overrides:
        key, value = parse_override(text)
        _merge(cfg, _nest(key, value), PRETRAIN_DEFAULTS, f"override '-o {text}'")
    validate(cfg, source)
    return cfg


# ---------------------------------------------------------------------------------------------
# Derived values


def backbone_channels(cfg: Config) -> int:
    """Width of the encoder output y: 512 (R18/34) or 2048 (R50) at width 64, scaled by width/64."""
    backbone = cfg["model"]["backbone"]
    expansion = 4 if backbone["depth"] == 50 else 1
    return backbone["width"] * 8 * expansion


def resolve(cfg: Config, world_size: int, num_images: int, num_classes: int) -> Config:
    """Add ``derived``: global batch, per-device batch, lr, steps, warm-up, classes. Checks consistency."""
    cfg = copy.deepcopy(cfg)
    sampler = cfg["dataloader"]["train"]["sampler"]
    if cfg["global_batch_size"] is not None:
        global_batch = cfg["global_batch_size"]
        if global_batch % world_size:
            raise ConfigError(
                f"key 'global_batch_size' = {global_batch} is not divisible by the {world_size} processes"
            )
        per_device = global_batch // world_size
    else:
        per_device = sampler["batch_size"]
        global_batch = per_device * world_size
    total_images = cfg["total_images"] or num_images
    if total_images < global_batch:
        raise ConfigError(
            f"the dataset has {total_images} images, fewer than one global batch of {global_batch}; "
            "lower dataloader.train.sampler.batch_size"
        )
    steps_per_epoch = total_images / global_batch
    total_steps = cfg["epochs"] * total_images // global_batch
    sched = cfg["lr_scheduler"]
    peak_lr = sched["learning_rate"]
    if peak_lr is None:
        peak_lr = sched["base_lr"] * global_batch / 256
    if sched["end_lr"] is not None and not math.isclose(sched["end_lr"], peak_lr, rel_tol=1e-9):
        raise ConfigError(
            f"key 'lr_scheduler.end_lr' = {sched['end_lr']} differs from the peak learning rate {peak_lr}; "
            "PASSL's warm-up target and cosine peak must be equal: drop end_lr or set learning_rate"
        )
    warmup = sched["warmup_steps"]
    if warmup is None:
        warmup = int(sched["warmup_epochs"] * total_images // global_batch)
    if warmup > total_steps:
        raise ConfigError(f"warm-up of {warmup} steps is longer than the run ({total_steps} steps)")
    if sched["T_max"] is not None and sched["T_max"] != total_steps:
        raise ConfigError(
            f"key 'lr_scheduler.T_max' = {sched['T_max']} disagrees with the run's {total_steps} steps "
            f"(epochs x images // global batch = {cfg['epochs']} x {total_images} // {global_batch}); "
            "the schedule always follows the real number of steps here: drop T_max"
        )
    in_channels = backbone_channels(cfg)
    neck, predictor = cfg["model"]["neck"], cfg["model"]["predictor"]
    for key, given, expected in (
        ("model.neck.in_channels", neck["in_channels"], in_channels),
        ("model.predictor.in_channels", predictor["in_channels"], neck["out_channels"]),
    ):
        if given is not None and given != expected:
            raise ConfigError(f"key '{key}' = {given} but the network gives {expected} channels there")
    if cfg["model"]["num_classes"] is not None:
        num_classes = cfg["model"]["num_classes"]
    cfg["derived"] = {
        "world_size": world_size,
        "per_device_batch": per_device,
        "global_batch": global_batch,
        "num_images": total_images,
        "num_classes": num_classes,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "warmup_steps": warmup,
        "peak_lr": peak_lr,
        "backbone_channels": in_channels,
    }
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg, sort_keys=False))
