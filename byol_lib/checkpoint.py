"""Checkpoints: atomic writes with a checksum, the newest intact one, and exact resume (read with ``safe_pickle``:
no code runs).

A checkpoint holds the model (online, target, predictor, classifier and BN statistics), the
optimiser's buffers keyed by structured parameter names (Paddle's auto names change with
creation order, e.g. in a notebook kernel), and the number of completed steps. No RNG state is
needed: all randomness of the loop is a function of (seed, step, sample), see ``data.loader``.

Beside each ``step_<n>.pdckpt`` lies ``step_<n>.pdckpt.sha256`` (``sha256sum`` format, written first): a file
whose bytes do not match it is not read. ``resume_state`` falls back from a checkpoint that does not verify or
load (a torn write, a flipped bit) to the next older one and says which it took. Files without a checksum (written
before checksums were kept) are read unchecked.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import paddle
import paddle.nn as nn

from byol_lib.atomic import write_atomic
from byol_lib.optim import LARS
from byol_lib.safe_pickle import WeightFileError, load_weights

_NAME = re.compile(r"^step_(\d+)\.pdckpt$")
CHECKSUM_SUFFIX = ".sha256"
logger = logging.getLogger(__name__)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk); the message names the last good one."""


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step_{step:08d}.pdckpt"


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(steps completed, path) of every finished checkpoint in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def verify(path: Path) -> None:
    """``WeightFileError`` unless ``path``'s bytes match its recorded sha256 (no record: nothing to check)."""
    record = checksum_path(path)
    if not record.is_file():
        return
    expected = record.read_text().split(" ", 1)[0].strip()
    with open(path, "rb") as handle:
        actual = hashlib.file_digest(handle, "sha256").hexdigest()
    if actual != expected:
        raise WeightFileError(f"{path}: its bytes do not match its checksum {record.name} (a torn or damaged file)")


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint in ``folder`` whose bytes match its checksum."""
    for _, path in reversed(list_checkpoints(folder)):
        try:
            verify(path)
        except (WeightFileError, OSError):
            continue
        return path
    return None


def _structured_names(model: nn.Layer) -> dict[str, str]:
    return {p.name: key for key, p in model.named_parameters()}


def save_checkpoint(folder: Path, step: int, model: nn.Layer, optimizer: LARS, extra: dict[str, Any],
                    keep: int) -> Path:
    """Write ``step_<step>.pdckpt`` and its checksum atomically, then prune to ``keep`` files;
    ``CheckpointWriteError`` (naming the last good checkpoint) when the disk refuses."""
    folder.mkdir(parents=True, exist_ok=True)
    names = _structured_names(model)
    state = {
        "step": step,
        "model": {k: v.numpy() for k, v in model.state_dict().items()},
        "optimizer": {names[k]: v for k, v in optimizer.state_dict().items()},
        "extra": extra,
    }
    buffer = io.BytesIO()
    paddle.save(state, buffer)
    data = buffer.getvalue()
    final = checkpoint_path(folder, step)
    try:
        write_atomic(checksum_path(final), f"{hashlib.sha256(data).hexdigest()}  {final.name}\n")
        write_atomic(final, data)
    except OSError as err:
        checksum_path(final).unlink(missing_ok=True)
        raise CheckpointWriteError(
            f"cannot write checkpoint {final}: {err.strerror or err}; the last good checkpoint is "
            f"{latest_checkpoint(folder) or 'none'} (re-run the same command to resume from it)") from err
    for _, old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    for record in folder.glob(f"step_*.pdckpt{CHECKSUM_SUFFIX}"):  # pruned, or orphaned by a crash
        if not record.with_suffix("").exists():
            record.unlink(missing_ok=True)
    return final


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents, verified and read without running code; ``WeightFileError`` (one line) unless it is
    an intact one of ours."""
    verify(path)
    state = load_weights(path)
    if not (isinstance(state, dict) and isinstance(state.get("model"), dict) and isinstance(state.get("step"), int)
            and isinstance(state.get("optimizer"), dict)):
        raise WeightFileError(f"{path}: not a byol-repro checkpoint (expected keys 'step', 'model' and 'optimizer')")
    return state


def load_checkpoint(path: Path, model: nn.Layer, optimizer: LARS | None = None) -> dict[str, Any]:
    """Restore ``model`` (and ``optimizer``) in place from ``path``; return the checkpoint's ``step`` and ``extra``."""
    return apply_checkpoint(read_checkpoint(path), path, model, optimizer)


def resume_state(folder: Path, model: nn.Layer, optimizer: LARS) -> dict[str, Any] | None:
    """Restore from the newest checkpoint in ``folder`` that verifies and loads (None when there is none); the newer
    ones passed over are named in warnings. ``WeightFileError`` (the newest one's reason) when none loads."""
    found = list_checkpoints(folder)
    passed_over: list[str] = []
    for _, path in reversed(found):
        try:
            state = read_checkpoint(path)
        except (WeightFileError, OSError) as err:
            passed_over.append(str(err))
            continue
        for reason in passed_over:
            logger.warning("passing over a checkpoint: %s", reason)
        if passed_over:
            logger.warning("resuming from the older checkpoint %s", path.name)
        return apply_checkpoint(state, path, model, optimizer)
    if found:
        raise WeightFileError(f"no checkpoint in {folder} loads (newest: {passed_over[0]}); move them away to start "
                              "the run afresh")
    return None


def apply_checkpoint(state: dict[str, Any], path: Path, model: nn.Layer,
                     optimizer: LARS | None = None) -> dict[str, Any]:
    """Restore ``model`` (and ``optimizer``) from a read checkpoint; return its ``step`` and ``extra``.

    Every key and shape is checked first: a checkpoint of another architecture or width changes nothing.
    """
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
