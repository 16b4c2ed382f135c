"""Configs: PASSL-compatible YAML, ``-o key.sub=value`` overrides, validation and derived values.

The schema is the key layout of PASSL's ``configs/byol/byol_r50_IM.yaml``; its defaults are the
paper's 300-epoch recipe (paper §5, the JAX code's 300-epoch preset): base lr 0.3 x global batch / 256, LARS (eta 1e-3,
wd 1e-6), 10 warm-up epochs, tau_base 0.99. Every key a user can set is listed here; anything else
is rejected with the closest valid key. A file may start from another (``_base_: other.yaml``, see
``read_config_file``). ``resolve`` adds the values that depend on the world size
and the dataset (global batch, learning rate, number of steps) under ``derived``.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from byol_lib import amp
from byol_lib.choices import DEVICES, RESULTS_DIR
from byol_lib.data.augment import AUGMENT_DEFAULTS, validate_augment
from byol_lib.data.passl_transforms import TransformListError, augmentation_from_passl
from byol_lib.fast import KERNEL_NAMES
from byol_lib.model import PADDINGS

Config = dict[str, Any]


class ConfigError(ValueError):
    """A config file, key or value that cannot be used; the message names it."""


def _dataset_defaults(dataroot: str, num_workers: int, batch_size: int, drop_last: bool) -> Config:
    return {
        "num_workers": num_workers,
        "loader": {"num_workers": None, "use_shared_memory": None},  # PASSL's layout; see _passl_loader
        "sampler": {"batch_size": batch_size, "shuffle": True, "drop_last": drop_last},
        "dataset": {
            "name": "ImageNet",
            "dataroot": dataroot,
            "list_file": "",
            "return_label": True,
            "return_two_sample": True,
            "bad_files": "skip",
            "num_images": 0,
            "seed": 0,
            "transforms": [],
            "view_trans1": [],
            "view_trans2": [],
        },
    }


_RUN_DEFAULTS: Config = {"seed": 0, "device": "auto", "cpu_kernels": "auto", "output_dir": RESULTS_DIR, "run_id": "",
                         "global_batch_size": None}
_BACKBONE_DEFAULTS: Config = {"name": "ResNet", "depth": 50, "stem": "imagenet", "width": 64, "with_pool": True,
                              "num_classes": 0, "zero_init_residual": False, "padding": "same"}
_MLP_DEFAULTS: Config = {"name": "NonLinearNeckV2", "in_channels": None, "hid_channels": 4096, "out_channels": 256,
                         "with_avg_pool": False, "last_bias": False}

PRETRAIN_DEFAULTS: Config = {
    "epochs": 300,
    **_RUN_DEFAULTS,
    "variant": "",
    "grid": "",
    "total_images": None,
    "use_byol_iters": True,
    "loop_length": "schedule",
    "accum_steps": 1,
    "model": {
        "name": "BYOL",
        "backbone": dict(_BACKBONE_DEFAULTS),
        "neck": dict(_MLP_DEFAULTS),
        "predictor": dict(_MLP_DEFAULTS),
        "head": {"name": "L2Head"},
        "target_decay_method": "cosine",
        "target_decay_rate": 0.99,
        "align_init_network": True,
        "update_target": True,
        "init": "jax",
        "use_synch_bn": True,
        "sync_predictor_bn": True,
        "num_classes": None,
        "embedding_dim": None,
    },
    "dataloader": {"train": _dataset_defaults("data/ILSVRC2012/train", 2, 128, True)},
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
    "knn_monitor": {"interval_epochs": 0.0, "k": 20, "temperature": 0.07, "num_train": 5000, "num_val": 1000},
    "custom_config": [],
    "amp": dict(amp.DEFAULTS),  # off: the paper trains in float32 (byol_lib/amp.py)
}

LINEAR_DEFAULTS: Config = {
    "epochs": None,  # the protocol's (LINEAR_PROTOCOLS)
    **_RUN_DEFAULTS,
    "model": {
        "name": "ByolClassification",
        "backbone": {**_BACKBONE_DEFAULTS, "frozen_stages": 4, "pretrained": ""},
        "head": {"name": "ClasHead", "with_avg_pool": False, "in_channels": None, "num_classes": None},
    },
    "dataloader": {
        "train": _dataset_defaults("data/ILSVRC2012/train", 2, 128, False),
        "val": _dataset_defaults("data/ILSVRC2012/val", 2, 128, False),
    },
    "augmentation": {**AUGMENT_DEFAULTS, "eval_resize": None},  # the protocol's
    "lr_scheduler": {
        "name": "CosineWarmup",
        "lr_grid": [0.4, 0.3, 0.2, 0.1, 0.05],
        "scale_lr_by_batch": True,
        "learning_rate": None,
        "warmup_steps": 0,
        "start_lr": 0.0,
        "end_lr": None,
        "total_image": None,
        "total_batch": None,
        "total_steps": None,
    },
    "optimizer": {"name": "Momentum", "momentum": 0.9, "use_nesterov": True, "weight_decay": 0.0},
    "linear_eval": {
        "protocol": "paper",
        "augment": True,
        "holdout": 10009,
        "extend_grid": 4,  # a held-out choice at the grid's edge adds lr x2 (or /2) beyond it, up to 4 times
        "standardize": False,  # heads on standardised features (folded into the saved head); the paper: raw
        "head_init": None,  # the protocol's
        "knn_k": [20, 200],
        "knn_temperature": 0.07,
        "random_init_baseline": False,
    },
    "log_config": {"name": "LogHook", "interval": 10},
    "custom_config": [],
}

# What each linear-evaluation protocol (``linear_eval.protocol``) sets where the config leaves the key empty (None);
# the protocol itself also decides the lr selection and the testing (byol_lib.evaluate). ``augmentation.eval_resize``
# picks the resizes of both linear-evaluation transforms (train crops and val: TF bicubic, or PASSL's Pillow bicubic
# and bilinear). Paper App. C.1 and the JAX eval code; PASSL's configs/byol/byol_clas_r50.yaml (D18 in docs/sources.md).
LINEAR_PROTOCOLS: dict[str, dict[str, Any]] = {
    "paper": {"epochs": 80, "linear_eval.head_init": "jax", "augmentation.eval_resize": "jax"},
    "passl": {"epochs": 100, "linear_eval.head_init": "passl", "augmentation.eval_resize": "passl"},
}

_Check = tuple[str, Callable[[Any], bool], str]


def _positive(*keys: str) -> tuple[_Check, ...]:
    return tuple((k, lambda v: v is None or v > 0, "must be > 0") for k in keys)


def _non_negative(*keys: str) -> tuple[_Check, ...]:
    return tuple((k, lambda v: v is None or v >= 0, "must be >= 0") for k in keys)


def _plain_name(value: str) -> bool:
    """A single folder name (or empty): no path separator, not absolute, not ``.`` or ``..``."""
    separators = [sep for sep in ("/", os.sep, os.altsep) if sep]
    return value == "" or (value not in (".", "..") and not any(sep in value for sep in separators)
                           and not Path(value).is_absolute())


_RUN_CHECKS: tuple[_Check, ...] = (
    ("seed", lambda v: 0 <= v < 2**32, "must be in [0, 2**32)"),
    ("run_id", _plain_name, "must be a plain folder name (no '/', not absolute, not '..'): it goes under output_dir"),
)


def _dataset_rules(split: str) -> tuple[dict[str, tuple[Any, ...]], tuple[_Check, ...]]:
    """Allowed values and range checks of one ``dataloader.<split>`` section."""
    base = f"dataloader.{split}"
    choices = {f"{base}.dataset.name": ("ImageNet", "Synthetic", "CIFAR10", "CIFAR100"),
               f"{base}.dataset.bad_files": ("skip", "strict")}
    checks = (*_non_negative(f"{base}.num_workers", f"{base}.loader.num_workers", f"{base}.dataset.num_images",
                             f"{base}.dataset.seed"),
              *_positive(f"{base}.sampler.batch_size"))
    return choices, checks


_HOOKS_CHECK: _Check = (
    "custom_config", lambda v: all(isinstance(h, dict) and h.get("name") in ("BYOLHook", "EvaluateHook") for h in v),
    "may only list PASSL's BYOLHook / EvaluateHook (the EMA update and the evaluation always run here)")

_MODEL_CHOICES = {"model.backbone.name": ("ResNet",), "model.backbone.depth": (18, 34, 50),
                  "model.backbone.stem": ("imagenet", "cifar"), "model.backbone.padding": PADDINGS,
                  "model.backbone.with_pool": (True,),
                  "model.backbone.num_classes": (0,), "device": DEVICES,
                  "cpu_kernels": KERNEL_NAMES}


@dataclass(frozen=True)
class Schema:
    """Every key of one kind of config: defaults, types of None-default keys, allowed values, range checks."""

    kind: str
    defaults: Config
    none_types: dict[str, type | tuple[type, ...]] = field(default_factory=dict)
    choices: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    checks: tuple[_Check, ...] = ()
    splits: tuple[str, ...] = ("train",)


def _loader_types(*splits: str) -> dict[str, type]:
    """Types of PASSL's ``dataloader.<split>.loader`` keys (empty by default)."""
    return {f"dataloader.{split}.loader.{key}": kind for split in splits
            for key, kind in (("num_workers", int), ("use_shared_memory", bool))}


PRETRAIN = Schema(
    kind="pretrain",
    defaults=PRETRAIN_DEFAULTS,
    none_types={**_loader_types("train"), "global_batch_size": int, "total_images": int, "model.neck.in_channels": int,
                "model.predictor.in_channels": int, "model.num_classes": int, "model.embedding_dim": int,
                "lr_scheduler.learning_rate": float,
                "lr_scheduler.end_lr": float, "lr_scheduler.warmup_steps": int, "lr_scheduler.T_max": int},
    choices={**_MODEL_CHOICES, **_dataset_rules("train")[0],
             "model.name": ("BYOL",), "model.neck.name": ("NonLinearNeckV2",),
             "model.predictor.name": ("NonLinearNeckV2",), "model.neck.with_avg_pool": (False, True),
             "model.head.name": ("L2Head",), "model.target_decay_method": ("cosine", "fixed"),
             "use_byol_iters": (True,), "loop_length": ("schedule", "passl_epochs"),
             "model.init": ("jax", "passl"), "lr_scheduler.name": ("CosineWarmup",),
             "optimizer.name": ("LarsMomentumOptimizer",), "optimizer.formula": ("jax", "passl"),
             "log_config.name": ("LogHook",), "checkpoint.name": ("CheckpointHook",),
             "amp.dtype": amp.DTYPES, "amp.level": amp.LEVELS},
    checks=(
        ("amp.level", lambda v: v != "O2", amp.O2_REFUSED),
        *_positive("epochs", "global_batch_size", "total_images", "accum_steps", "model.backbone.width",
                   "model.neck.hid_channels", "model.neck.out_channels", "model.predictor.hid_channels",
                   "model.predictor.out_channels",
                   "model.num_classes", "lr_scheduler.T_max", "optimizer.lars_coeff", "log_config.interval",
                   "checkpoint.interval", "checkpoint.keep", "knn_monitor.k", "knn_monitor.temperature",
                   "knn_monitor.num_train", "knn_monitor.num_val"),
        *_non_negative("lr_scheduler.base_lr", "lr_scheduler.learning_rate", "lr_scheduler.start_lr",
                       "lr_scheduler.warmup_epochs", "lr_scheduler.warmup_steps", "optimizer.lars_weight_decay",
                       "knn_monitor.interval_epochs",
                       "optimizer.epsilon"),
        ("model.target_decay_rate", lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]"),
        ("optimizer.momentum", lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
        *_dataset_rules("train")[1],
        _HOOKS_CHECK, *_RUN_CHECKS,
    ),
)

LINEAR = Schema(
    kind="linear",
    defaults=LINEAR_DEFAULTS,
    none_types={**_loader_types("train", "val"), "global_batch_size": int, "epochs": int,
                "linear_eval.head_init": str,
                "augmentation.eval_resize": str, "model.head.in_channels": int, "model.head.num_classes": int,
                "lr_scheduler.learning_rate": float, "lr_scheduler.end_lr": float, "lr_scheduler.total_image": int,
                "lr_scheduler.total_batch": int, "lr_scheduler.total_steps": int},
    choices={**_MODEL_CHOICES, **_dataset_rules("train")[0], **_dataset_rules("val")[0],
             "model.name": ("ByolClassification", "Classification"), "model.backbone.frozen_stages": (4,),
             "model.head.name": ("ClasHead",), "model.head.with_avg_pool": (False, True),
             "lr_scheduler.name": ("CosineWarmup", "CosinWarmup", "ByolLRScheduler"),
             "lr_scheduler.warmup_steps": (0,), "optimizer.name": ("Momentum",),
             "linear_eval.protocol": ("paper", "passl"), "linear_eval.head_init": ("jax", "passl"),
             "log_config.name": ("LogHook",)},
    checks=(
        *_positive("epochs", "global_batch_size", "model.backbone.width", "model.head.in_channels",
                   "model.head.num_classes", "log_config.interval", "linear_eval.knn_temperature"),
        *_non_negative("lr_scheduler.learning_rate", "lr_scheduler.start_lr", "optimizer.weight_decay",
                       "linear_eval.holdout", "linear_eval.extend_grid"),
        ("lr_scheduler.lr_grid", lambda v: bool(v) and all(isinstance(x, (int, float)) and x > 0 for x in v),
         "must be a non-empty list of positive learning rates"),
        ("linear_eval.knn_k", lambda v: all(isinstance(x, int) and x > 0 for x in v), "must be positive integers"),
        ("optimizer.momentum", lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),
        *_dataset_rules("train")[1], *_dataset_rules("val")[1],
        _HOOKS_CHECK, *_RUN_CHECKS,
    ),
    splits=("train", "val"),
)


def schema_for(data: Mapping[str, Any]) -> Schema:
    """The schema a config file is written for, by its ``model.name`` (BYOL unless a classification name)."""
    model = data.get("model") if isinstance(data, Mapping) else None
    name = model.get("name") if isinstance(model, Mapping) else None
    return LINEAR if name in LINEAR.choices["model.name"] else PRETRAIN


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


BASE_KEY = "_base_"


def _read_yaml(path: Path) -> dict[str, Any]:
    """One YAML file's mapping, as written (its ``_base_`` key, if any, unresolved)."""
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


def read_config_file(path: Path, including: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's keys with its ``_base_`` chain resolved.

    ``_base_: other.yaml`` (a path relative to the including file) names a file whose keys this one starts from;
    the base is read the same way (it may have a base of its own), then this file's keys are merged into it key by
    key, sub-mapping by sub-mapping, this file winning (a list or value replaces the base's whole).
    """
    data = _read_yaml(path)
    if BASE_KEY not in data:
        return data
    chain = (*including, path.resolve())
    base_name = data.pop(BASE_KEY)
    if not isinstance(base_name, str) or not base_name.strip():
        raise ConfigError(f"{path}: key '{BASE_KEY}' must be the path of a config file, got {base_name!r}")
    base_path = path.parent / base_name
    if not base_path.is_file():
        raise ConfigError(f"{path}: key '{BASE_KEY}' = {base_name!r}: config file not found: {base_path}")
    if base_path.resolve() in chain:
        cycle = " -> ".join(str(p) for p in (*chain, base_path.resolve()))
        raise ConfigError(f"{path}: key '{BASE_KEY}' = {base_name!r} makes a cycle of bases: {cycle}")
    return _deep_merge(read_config_file(base_path, chain), data)


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``update``'s keys merged in: mappings key by key, anything else replaced."""
    merged = dict(base)
    for key, value in update.items():
        both_mappings = isinstance(value, Mapping) and isinstance(merged.get(key), Mapping)
        merged[key] = _deep_merge(merged[key], value) if both_mappings else value
    return merged


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
        elif isinstance(value, Mapping):
            raise ConfigError(f"{source}: key '{path}' is a single value, not a mapping of sub-keys; got {value!r}")
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


def validate(cfg: Config, schema: Schema, source: str = "config") -> None:
    """Types, choices and ranges of every key; raises ``ConfigError`` naming key and value."""
    flat, reference = flatten(cfg), flatten(schema.defaults)
    for key, default in reference.items():
        value = flat[key]
        expected = schema.none_types.get(key, type(default))
        if value is None and (default is None or key in schema.none_types):
            continue
        if not _type_ok(value, expected):
            raise ConfigError(f"{source}: key '{key}' must be {_type_name(expected)}, got {value!r}")
        if not all(math.isfinite(x) for x in (value if isinstance(value, list) else [value]) if isinstance(x, float)):
            raise ConfigError(f"{source}: key '{key}' = {value!r} must be a finite number")
    for key, choices in schema.choices.items():
        if flat[key] not in choices:
            raise ConfigError(f"{source}: key '{key}' = {flat[key]!r} is not one of {list(choices)}")
    for key, ok, message in schema.checks:
        if not ok(flat[key]):
            raise ConfigError(f"{source}: key '{key}' = {flat[key]!r} {message}")
    try:
        validate_augment(cfg["augmentation"])
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from err
    for split in schema.splits:
        _validate_dataroot(cfg["dataloader"][split]["dataset"], f"dataloader.{split}.dataset.dataroot", source)


def _validate_dataroot(dataset: Config, key: str, source: str) -> None:
    if dataset["name"] == "Synthetic":
        return
    root = Path(dataset["dataroot"])
    if not root.exists():
        raise ConfigError(
            f"{source}: key '{key}' = '{root}' does not exist (dataset {dataset['name']}); point it at your data, "
            f"or use -o {key.rsplit('.', 1)[0]}.name=Synthetic for the embedded default dataset"
        )


def load_config(path: str | Path | None, overrides: Iterable[str] = (), schema: Schema | None = None) -> Config:
    """Defaults <- YAML file (after its ``_base_`` chain, ``read_config_file``) <- ``-o`` overrides, validated.
    The schema follows the file's ``model.name``."""
    data = read_config_file(Path(path)) if path else {}
    schema = schema or schema_for(data)
    cfg = copy.deepcopy(schema.defaults)
    overrides = list(overrides)
    source = str(path) if path else f"{schema.kind} defaults"
    _merge(cfg, data, schema.defaults, source)
    _translate_passl_transforms(cfg, schema, source)
    for text in overrides:
        key, value = parse_override(text)
        if key.rsplit(".", 1)[-1] in _PASSL_LISTS:
            raise ConfigError(f"override '-o {text}': set augmentation.* keys instead of PASSL transform lists")
        _merge(cfg, _nest(key, value), schema.defaults, f"override '-o {text}'")
    _passl_loader(cfg, schema)
    if schema is LINEAR and cfg["linear_eval"]["protocol"] in LINEAR_PROTOCOLS:
        for key, value in LINEAR_PROTOCOLS[cfg["linear_eval"]["protocol"]].items():
            if get(cfg, key) is None:
                _set(cfg, key, value)
    validate(cfg, schema, source + (" with overrides" if overrides else ""))
    return cfg


_PASSL_LISTS = ("transforms", "view_trans1", "view_trans2")


def _passl_loader(cfg: Config, schema: Schema) -> None:
    """PASSL's ``dataloader.<split>.loader.num_workers`` sets the split's ``num_workers``; its
    ``use_shared_memory`` is accepted and has no effect here (each loader chooses shared memory itself)."""
    for split in schema.splits:
        section = cfg["dataloader"][split]
        if section["loader"]["num_workers"] is not None:
            section["num_workers"] = section["loader"]["num_workers"]


def _translate_passl_transforms(cfg: Config, schema: Schema, source: str) -> None:
    """PASSL transform lists in the file become ``augmentation`` settings (the training split's lists)."""
    for split in schema.splits:  # the training lists set the recipe; the others are only checked
        prefix = f"dataloader.{split}.dataset"
        dataset = cfg["dataloader"][split]["dataset"]
        lists = {key: dataset[key] for key in _PASSL_LISTS}
        if not any(lists.values()):
            continue
        for key, value in lists.items():
            if not isinstance(value, list):
                raise ConfigError(f"{source}: key '{prefix}.{key}' must be a list, got {value!r}")
        try:
            translated = augmentation_from_passl(cfg["augmentation"], lists, prefix)
        except TransformListError as err:
            raise ConfigError(f"{source}: {err}") from err
        if split == "train":
            cfg["augmentation"] = translated


def passl_original_notice(path: str | Path | None) -> str | None:
    """One line for a file recognisably PASSL's own (its ``dataloader.train.loader`` section, which this project's
    configs never use): which semantics run, and how to get PASSL's (docs/sources.md). ``None`` for other files, and
    on every process of a launch but rank 0 (``PADDLE_TRAINER_ID``), so that a launch prints it once."""
    if path is None or not Path(path).is_file() or os.environ.get("PADDLE_TRAINER_ID", "0") != "0":
        return None
    try:
        data = _read_yaml(Path(path))
    except ConfigError:
        return None
    train = data.get("dataloader", {}).get("train", {}) if isinstance(data.get("dataloader"), dict) else {}
    if not isinstance(train, dict) or not isinstance(train.get("loader"), dict):
        return None
    if schema_for(data) is LINEAR:
        return (f"{path}: PASSL's own file, read with the paper's linear protocol and the file's values; "
                "add -o linear_eval.protocol=passl for PASSL's (docs/sources.md, D18)")
    return (f"{path}: PASSL's own file, read as the faithful BYOL with the file's values (D7, D9; its epsilon is "
            "unused); PASSL's algorithm: -c configs/byol/passl_r50_IM_ema.yaml (with its EMA hook) or "
            "passl_r50_IM.yaml (PASSL at HEAD, target never updated) (docs/sources.md)")


def config_kind(cfg: Config) -> str:
    """``pretrain`` or ``linear``."""
    return schema_for(cfg).kind


# ---------------------------------------------------------------------------------------------
# Derived values


def backbone_channels(cfg: Config) -> int:
    """Width of the encoder output y: 512 (R18/34) or 2048 (R50) at width 64, scaled by width/64."""
    backbone = cfg["model"]["backbone"]
    expansion = 4 if backbone["depth"] == 50 else 1
    return backbone["width"] * 8 * expansion


BACKBONE_KEYS = ("depth", "stem", "width", "padding")


def backbone_overrides(backbone: Mapping[str, Any]) -> list[str]:
    """``-o`` overrides that give a linear-evaluation config a pretrained backbone's architecture.

    A run recorded before ``model.backbone.padding`` existed was padded symmetrically."""
    values = {"padding": "symmetric", **backbone} if backbone else {}
    return [f"model.backbone.{key}={values[key]}" for key in BACKBONE_KEYS if key in values]
