"""The results registry: every ``results/<run_id>/summary.json`` (with its resolved ``config.yaml``) as one table.

One row per (run, evaluation), with the fixed columns of ``COLUMNS``:

* a pretraining run gives an ``online probe`` row (the online classifier's last logged accuracy);
* a linear-evaluation run gives an ``offline linear`` row, one ``kNN`` row per k (``knn_k``), and the same rows
  again with ``variant = "random init"`` for its random-init baseline;
* an ``--evaluate-only`` run gives an ``offline linear`` row of kind ``evaluate``; a notebook run that created no
  other record (see ``byol_lib.notebook``) gives one row of kind ``notebook``.

``kind`` is ``pretrain``, ``linear``, ``knn`` (the kNN rows of a linear run), ``ablation`` (any row of a run whose
``variant`` is not the baseline), ``evaluate`` or ``notebook``. A missing ``variant`` means ``baseline``.
``epochs``, ``global_batch`` and ``seed`` describe the pretraining behind a number: a linear run takes them, and
its variant and grid (the ablation grid that ran it, ``byol_lib.ablation``), from the pretraining run whose folder
holds its ``--pretrained`` weights (``pretrain_run``).
``top1``/``top5`` are percentages. Failed, running and unreadable runs keep their row, with ``status`` and
``error``, so a report shows them instead of dropping them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from byol_lib.checkpoint import latest_checkpoint
from byol_lib.choices import RANDOM_WEIGHTS, RESULTS_DIR
from byol_lib.config import backbone_overrides as config_backbone_overrides
from byol_lib.results import repo_root
from byol_lib.variants import BASELINE

COLUMNS: dict[str, str] = {
    "run_id": "str", "kind": "str", "status": "str", "evaluation": "str", "variant": "str", "grid": "str",
    "dataset": "str", "backbone": "str", "epochs": "Int64", "global_batch": "Int64", "seed": "Int64", "protocol": "str",
    "knn_k": "Int64", "top1": "float64", "top5": "float64", "images_per_s": "float64", "wall_time_s": "float64",
    "device": "str", "world_size": "Int64", "paddle_version": "str", "git_commit": "str", "pretrain_run": "str",
    "error": "str", "path": "str",
}
RANDOM_INIT = "random init"  # the variant of the random-init baseline's rows
ONLINE, LINEAR, KNN = "online probe", "offline linear", "kNN"
_KNN_PREFIX = "knn_top1_k"
NOTEBOOK_RECORD = "notebook.json"  # byol_lib.notebook's record of a notebook run, written while it runs
NOTEBOOK_KIND = "notebook"  # the kind of a run that is a notebook alone (byol_lib.notebook)


def results_path(results_dir: str | Path | None = None) -> Path:
    """``results_dir`` resolved against the repo root (default: ``<repo>/results``)."""
    return repo_root() / (results_dir or RESULTS_DIR)


def read_run(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The summary and resolved config of a run folder (an empty config when it has none).

    A folder with only a notebook record (a notebook still running, or killed) reads as a ``notebook`` run.
    """
    if (folder / "summary.json").is_file():
        summary = json.loads((folder / "summary.json").read_text())
    else:
        record = json.loads((folder / NOTEBOOK_RECORD).read_text())
        summary = {"run_id": folder.name, "kind": NOTEBOOK_KIND, "status": record.get("status"),
                   "error": record.get("error"), "notebook": record}
    config_file = folder / "config.yaml"
    cfg = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    if not isinstance(summary, dict) or not isinstance(cfg, dict):
        raise ValueError("summary.json and config.yaml must each hold a mapping")
    return summary, cfg


def _dig(tree: Mapping[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _percent(value: Any) -> float | None:
    return None if value is None else 100.0 * float(value)


def _backbone(summary: Mapping[str, Any], cfg: Mapping[str, Any]) -> str | None:
    depth = _dig(cfg, "model.backbone.depth")
    return summary.get("backbone") or (f"resnet{depth}" if depth else None)


def _common(folder: Path, summary: Mapping[str, Any], cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The columns every row of a run shares."""
    return {
        "run_id": summary.get("run_id", folder.name), "kind": summary.get("kind"), "status": summary.get("status"),
        "variant": summary.get("variant") or cfg.get("variant") or BASELINE,
        "grid": summary.get("grid") or cfg.get("grid") or None,
        "dataset": summary.get("dataset") or _dig(cfg, "dataloader.train.dataset.name"),
        "backbone": _backbone(summary, cfg), "seed": summary.get("seed", cfg.get("seed")),
        "images_per_s": summary.get("images_per_s"), "wall_time_s": summary.get("wall_time_s"),
        "device": summary.get("device"), "world_size": summary.get("world_size"),
        "paddle_version": summary.get("paddle_version"), "git_commit": summary.get("git_commit"),
        "error": summary.get("error"), "path": str(folder),
    }


def _pretrain_rows(base: dict[str, Any], summary: Mapping[str, Any], cfg: Mapping[str, Any]) -> list[dict]:
    final = summary.get("final") or {}
    return [{**base, "evaluation": ONLINE, "epochs": summary.get("epochs", cfg.get("epochs")),
             "global_batch": summary.get("global_batch", _dig(cfg, "derived.global_batch")),
             "top1": _percent(final.get("online_accuracy"))}]


def _eval_rows(base: dict[str, Any], figures: Mapping[str, Any]) -> list[dict]:
    """The offline-linear row and one kNN row per k of one set of figures (a run's or its random-init baseline)."""
    knn = sorted((int(key[len(_KNN_PREFIX):]), value) for key, value in figures.items()
                 if key.startswith(_KNN_PREFIX) and key[len(_KNN_PREFIX):].isdigit())
    top1, top5 = _percent(figures.get("top1")), _percent(figures.get("top5"))
    return [{**base, "evaluation": LINEAR, "top1": top1, "top5": top5},
            *({**base, "kind": "knn", "evaluation": KNN, "knn_k": k, "top1": _percent(value)} for k, value in knn)]


def _pretrain_run_of(pretrained: str | None, known: Mapping[str, dict[str, Any]]) -> str | None:
    """The run id of the pretraining folder that holds ``pretrained`` (a checkpoint or an export inside it)."""
    parts = Path(pretrained).parts if pretrained else ()
    return next((part for part in reversed(parts) if part in known), None)


def _linear_rows(base: dict[str, Any], summary: Mapping[str, Any], cfg: Mapping[str, Any],
                 known: Mapping[str, dict[str, Any]]) -> list[dict]:
    pretrained = summary.get("pretrained") or _dig(cfg, "derived.pretrained")
    source = _pretrain_run_of(pretrained, known)
    own_seed = base["seed"]
    base = {**base, "protocol": summary.get("protocol") or _dig(cfg, "linear_eval.protocol"),
            "pretrain_run": source}
    if source is not None:
        trained = known[source]
        base.update(epochs=trained["epochs"], global_batch=trained["global_batch"], seed=trained["seed"],
                    variant=trained["variant"], grid=trained["grid"])
    elif pretrained == RANDOM_WEIGHTS:
        base.update(variant=RANDOM_INIT, epochs=0)
    rows = _eval_rows(base, summary)
    if summary.get("kind") == "evaluate":
        return rows[:1]
    if isinstance(summary.get("random_init"), Mapping):
        untrained = {"variant": RANDOM_INIT, "grid": None, "epochs": 0, "global_batch": None, "seed": own_seed,
                     "pretrain_run": None}
        rows += _eval_rows({**base, **untrained}, summary["random_init"])
    return rows


def _label_ablations(rows: list[dict]) -> list[dict]:
    for row in rows:
        if row["variant"] not in (BASELINE, RANDOM_INIT) and row["kind"] in ("pretrain", "linear", "knn"):
            row["kind"] = "ablation"
    return rows


def table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows (dicts, any subset of ``COLUMNS``) as a frame with exactly ``COLUMNS``, in order and typed."""
    frame = pd.DataFrame([{name: row.get(name) for name in COLUMNS} for row in rows], columns=list(COLUMNS))
    return frame.astype(COLUMNS)


def load_runs(results_dir: str | Path | None = None) -> pd.DataFrame:
    """Every run under ``results_dir`` (default ``<repo>/results``) as one table with the fixed ``COLUMNS``."""
    root = results_path(results_dir)
    folders = sorted({p.parent for name in ("summary.json", NOTEBOOK_RECORD) for p in root.glob(f"*/{name}")})
    read: dict[Path, tuple[dict, dict]] = {}
    rows: list[dict[str, Any]] = []
    for folder in folders:
        try:
            read[folder] = read_run(folder)
        except (OSError, ValueError, yaml.YAMLError) as err:  # json.JSONDecodeError is a ValueError
            rows.append({"run_id": folder.name, "status": "unreadable", "error": f"{type(err).__name__}: {err}",
                         "path": str(folder), "variant": BASELINE})
    known: dict[str, dict[str, Any]] = {}
    for folder, (summary, cfg) in read.items():
        if summary.get("kind") == "pretrain":
            known[folder.name] = _pretrain_rows(_common(folder, summary, cfg), summary, cfg)[0]
    for folder, (summary, cfg) in read.items():
        base = _common(folder, summary, cfg)
        kind = summary.get("kind")
        if kind == "pretrain":
            rows += _pretrain_rows(base, summary, cfg)
        elif kind in ("linear", "evaluate"):
            rows += _linear_rows(base, summary, cfg, known)
        else:
            rows.append({**base, "evaluation": summary.get("evaluation"), "top1": _percent(summary.get("top1")),
                         "top5": _percent(summary.get("top5"))})
    return table(_label_ablations(rows))


def find_run(run: str | Path = "", results_dir: str | Path | None = None, kind: str = "pretrain") -> Path:
    """A run folder: ``run`` as a path or a run id under ``results_dir``; empty: the newest finished run of ``kind``.

    Run ids start with their UTC start time, so the newest is the last in name order.
    """
    root = results_path(results_dir)
    if run:
        for folder in (Path(run), root / str(run), repo_root() / str(run)):
            if (folder / "summary.json").is_file():
                return folder
        raise FileNotFoundError(f"run {str(run)!r}: no summary.json there or under {root}")
    for summary_file in sorted(root.glob("*/summary.json"), reverse=True):
        summary, _ = read_run(summary_file.parent)
        if summary.get("kind") == kind and summary.get("status") == "finished":
            return summary_file.parent
    raise FileNotFoundError(f"no finished {kind} run under {root}; run notebooks/10_pretrain.ipynb first")


def resolve_weights(pretrained: str = "", results_dir: str | Path | None = None) -> tuple[str, list[str]]:
    """Backbone weights for a linear evaluation, and the ``-o`` overrides that give its config their backbone.

    ``random``: the random-init baseline (the config's backbone). A weight file: as is, with the backbone of the
    pretraining run folder it lies in, if any. Otherwise a pretraining run id or folder (empty: the newest finished
    one): its latest checkpoint and its backbone.
    """
    if pretrained == RANDOM_WEIGHTS:
        return pretrained, []
    for path in (Path(pretrained), repo_root() / pretrained):
        if pretrained and path.is_file():
            run = next((p for p in path.resolve().parents if (p / "summary.json").is_file()), None)
            return str(path), backbone_overrides(run) if run is not None else []
    run = find_run(pretrained, results_dir)
    return str(checkpoint_of(run)), backbone_overrides(run)


def checkpoint_of(run: Path) -> Path:
    """The latest checkpoint of a pretraining run folder."""
    found = latest_checkpoint(run / "checkpoints")
    if found is None:
        raise FileNotFoundError(f"{run}: no checkpoint in {run / 'checkpoints'}")
    return found


def backbone_overrides(run: Path) -> list[str]:
    """``-o`` overrides that give a linear-evaluation config the backbone a pretraining run was trained with."""
    _, cfg = read_run(run)
    return config_backbone_overrides(_dig(cfg, "model.backbone") or {})
