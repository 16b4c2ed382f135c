"""Run folders: ``results/<run_id>/`` with the resolved config, metrics, summary and checkpoints.

``run_id = <utc time>-<kind>-<config hash>``. Re-running the same command finds the newest
unfinished run with the same config hash and resumes it, so a killed run continues where its
last checkpoint left off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from byol_lib.atomic import write_atomic

logger = logging.getLogger(__name__)
_VOLATILE_KEYS = ("run_id", "output_dir", "device", "cpu_kernels", "variant", "grid")  # labels, places, kernels


def repo_root() -> Path:
    """The checkout's root (the folder holding pyproject.toml), else the current folder."""
    here = Path(__file__).resolve().parent
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    return Path.cwd()


def config_hash(cfg: dict[str, Any]) -> str:
    """Short hash of everything that changes the result: not the run id, device name or loader processes, and no
    location: absolute paths count relative to the output folder or the checkout they lie in (``portable``), so a
    results folder copied or moved elsewhere keeps its runs."""
    stable = {k: v for k, v in cfg.items() if k not in _VOLATILE_KEYS}
    if isinstance(stable.get("amp"), dict) and not stable["amp"].get("enabled"):  # float32: hashes as before amp
        del stable["amp"]
    if isinstance(stable.get("dataloader"), dict):  # loader processes change the speed, not the batches
        stable["dataloader"] = {split: {k: v for k, v in part.items() if k != "num_workers"}
                                if isinstance(part, dict) else part for split, part in stable["dataloader"].items()}
    places = {"<repo>": repo_root()}
    if cfg.get("output_dir"):
        places["<output>"] = Path(cfg["output_dir"]).resolve()
    return hashlib.sha256(json.dumps(portable(stable, places), sort_keys=True, default=str).encode()).hexdigest()[:8]


def portable(value: Any, places: dict[str, Path]) -> Any:
    """``value`` with every absolute path inside one of ``places`` (the deepest that holds it) written as
    ``<name>/relative/path``; other values, and paths elsewhere (data outside the checkout), unchanged."""
    if isinstance(value, dict):
        return {k: portable(v, places) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [portable(v, places) for v in value]
    if not (isinstance(value, str) and os.path.isabs(value)):
        return value
    path = Path(os.path.normpath(value))
    holders = [(len(base.parts), name, base) for name, base in places.items() if path.is_relative_to(base)]
    if not holders:
        return value
    _, name, base = max(holders)
    return f"{name}/{path.relative_to(base).as_posix()}"


def same_config(folder: Path, cfg: dict[str, Any]) -> bool:
    """Whether the run in ``folder`` was made with ``cfg``: its summary's hash, or (a run hashed before hashes were
    location-free) the hash of the config.yaml it wrote."""
    digest = config_hash(cfg)
    if read_summary(folder).get("config_hash") == digest:
        return True
    written = Path(folder) / "config.yaml"
    return written.is_file() and config_hash(yaml.safe_load(written.read_text())) == digest


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo_root(), capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip() if out.returncode == 0 else "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_root(),
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return f"{commit}-dirty" if dirty and commit != "unknown" else commit


def environment() -> dict[str, Any]:
    import paddle

    return {
        "paddle_version": paddle.__version__,
        "paddle_cuda": paddle.is_compiled_with_cuda(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "git_commit": git_commit(),
    }


def find_resumable(output_dir: Path, kind: str, digest: str) -> Path | None:
    """The newest run folder of this kind and config hash that has not finished."""
    candidates = sorted(output_dir.glob(f"*-{kind}-{digest}"))
    for folder in reversed(candidates):
        if read_summary(folder).get("status") != "finished":
            return folder
    return None


def new_run_dir(output_dir: Path, kind: str, digest: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    folder = output_dir / f"{stamp}-{kind}-{digest}"
    output_dir.mkdir(parents=True, exist_ok=True)
    suffix = 0
    while True:  # mkdir, not exists(): two runs started in the same second get two folders
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            suffix += 1
            folder = output_dir / f"{stamp}.{suffix}-{kind}-{digest}"


def write_config(folder: Path, cfg: dict[str, Any]) -> None:
    write_atomic(folder / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))


def _rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics file; lines that do not parse (a torn last line after a crash) are dropped, with
    one warning."""
    rows, torn = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            torn.append(number)
    if torn:
        logger.warning("%s: dropped %d unreadable line(s) (line %s; a write cut short)", path, len(torn),
                       ", ".join(map(str, torn)))
    return rows


class MetricsLog:
    """Appends one JSON object per logged step to ``metrics.jsonl``; drops rows logged after the resumed checkpoint
    (and unreadable lines)."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        if path.exists():
            kept = [row for row in _rows(path) if resume_step and row.get("step", 0) <= resume_step]
            write_atomic(path, "".join(json.dumps(row) + "\n" for row in kept))

    def append(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


def read_summary(folder: Path) -> dict[str, Any]:
    """A run folder's summary.json, or {} when there is none yet; one that does not parse (torn by a crash) reads
    as an interrupted run, with one warning."""
    path = Path(folder) / "summary.json"
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        logger.warning("%s is unreadable (%s): taking the run as interrupted", path, err)
        return {"run_id": Path(folder).name, "status": "interrupted", "error": f"unreadable summary.json ({err})"}
    return summary if isinstance(summary, dict) else {}


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """A run folder's metrics rows ([] when it has none); see ``_rows`` for unreadable lines."""
    path = Path(folder) / "metrics.jsonl"
    return _rows(path) if path.exists() else []
