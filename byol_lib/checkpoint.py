"""Checkpoints: atomic writes, the latest one, and exact resume (read with ``safe_pickle``: no code runs).

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
from byol_lib.safe_pickle import WeightFileError, load_weights

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


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents, read without running code; ``WeightFileError`` (one line) unless it is one of ours."""
    state = load_weights(path)
    if not (isinstance(state, dict) and isinstance(state.get("model"), dict) and isinstance(state.get("step"), int)
            and isinstance(state.get("optimizer"), dict)):
        raise WeightFileError(f"{path}: not a byol-repro checkpoint (expected keys 'step', 'model' and 'optimizer')")
    return state


def load_checkpoint(path: Path, model: nn.Layer, optimizer: LARS | None = None) -> dict[str, Any]:
    """Restore ``model`` (and ``optimizer``) in place; return the checkpoint's ``step`` and ``extra``.

    Every key and shape is checked first: a checkpoint of another architecture or width changes nothing.
    """
    state = read_checkpoint(path)
    own = {key: list(value.shape) for key, value in model.state_dict().items()}
    saved = state["model"]
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    wrong = sorted(key for key in set(own) & set(saved) if own[key] != list(np.shape(saved[key])))
    if missing or unexpected or wrong:
        raise WeightFileError(f"{path} does not fit this model (check model.backbone.depth/width and the heads): "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}")
    by_key = {key: p.name for key, p in model.named_parameters()}
    if optimizer is not None and not set(state["optimizer"]) <= set(by_key):
        raise WeightFileError(f"{path}: optimizer state for parameters this model does not have: "
                              f"{sorted(set(state['optimizer']) - set(by_key))[:5]}")
    model.set_state_dict({k: np.asarray(v) for k, v in saved.items()})
    if optimizer is not None:
        optimizer.set_state_dict({by_key[k]: np.asarray(v) for k, v in state["optimizer"].items()})
    return {"step": state["step"], "extra": state.get("extra", {})}
