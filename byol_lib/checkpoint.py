"""Checkpoints: atomic writes, the latest one, and exact resume.

A checkpoint holds the model (online, target, predictor, classifier and BN statistics), the
optimiser's buffers keyed by structured parameter names (Paddle's auto names change with
creation order, e.g. in a notebook kernel), and the number of completed steps. No RNG state is
needed: all randomness of the loop is a function of (seed, step, sample), see ``data.loader``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import paddle
import paddle.nn as nn

from byol_lib.optim import LARS

_NAME = re.compile(r"^step_(\d+)\.pdckpt$")


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step_{step:08d}.pdckpt"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(steps completed, path) of every finished checkpoint in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(folder: Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def _structured_names(model: nn.Layer) -> dict[str, str]:
    return {p.name: key for key, p in model.named_parameters()}


def save_checkpoint(folder: Path, step: int, model: nn.Layer, optimizer: LARS, extra: dict[str, Any],
                    keep: int) -> Path:
    """Write ``step_<step>.pdckpt`` atomically (temp file, fsync, rename), then prune to ``keep`` files."""
    folder.mkdir(parents=True, exist_ok=True)
    names = _structured_names(model)
    state = {
        "step": step,
        "model": {k: v.numpy() for k, v in model.state_dict().items()},
        "optimizer": {names[k]: v for k, v in optimizer.state_dict().items()},
        "extra": extra,
    }
    final = checkpoint_path(folder, step)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    paddle.save(state, str(tmp))
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    for _, old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: Path, model: nn.Layer, optimizer: LARS | None = None) -> dict[str, Any]:
    """Restore ``model`` (and ``optimizer``) in place; return the checkpoint's ``step`` and ``extra``."""
    state = paddle.load(str(path))
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise ValueError(f"{path} is not a byol-repro checkpoint (expected keys 'step' and 'model')")
    own = model.state_dict()
    missing = sorted(set(own) - set(state["model"]))
    unexpected = sorted(set(state["model"]) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path} does not match this model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.set_state_dict({k: np.asarray(v) for k, v in state["model"].items()})
    if optimizer is not None:
        by_key = {key: p.name for key, p in model.named_parameters()}
        optimizer.set_state_dict({by_key[k]: np.asarray(v) for k, v in state["optimizer"].items()})
    return {"step": int(state["step"]), "extra": state.get("extra", {})}
