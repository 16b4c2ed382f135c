"""One run folder's lifecycle, shared by pretraining, linear evaluation, the ablation runner and notebooks.

``hold(folder)`` opens a run: it takes an exclusive ``flock`` on ``<folder>/.lock`` (which then names the holder's
pid), refusing with ``RunFolderBusy`` (one line naming that pid) when another process holds it, or waiting for it
with ``wait=True``; removes temp files left by writers that died (see ``byol_lib.atomic``); and, in the main thread,
turns SIGTERM and SIGINT into ``Interrupted``. The kernel drops the lock when the process dies, so a killed run never
leaves a stale lock behind.

The status in ``summary.json`` goes ``running`` -> ``finished``, ``failed`` (the error recorded) or ``interrupted``
(a signal; re-running the same command resumes). ``record_end`` writes the last two; on a full disk it warns instead
of raising, so the original error still reaches the user.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from byol_lib import atomic

LOCK = ".lock"
SUMMARY = "summary.json"
logger = logging.getLogger(__name__)


class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived while a run folder was held (a ``BaseException``, like ``KeyboardInterrupt``)."""

    def __init__(self, signum: int) -> None:
        self.signame = signal.Signals(signum).name
        self.exit_code = 128 + signum
        self.folder: Path | None = None
        super().__init__(f"interrupted by {self.signame}")


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    pid = handle.read().strip()
    return f"pid {pid}" if pid.isdigit() else "another process"


@contextlib.contextmanager
def _locked(path: Path, wait: bool, what: str) -> Iterator[None]:
    """An exclusive ``flock`` on the file ``path`` for the block; ``RunFolderBusy`` naming the holder when another
    process has it, unless ``wait``."""
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(handle)
            if not wait:
                raise RunFolderBusy(f"{what} is in use by {holder}: another run of this config is going on; let it "
                                    "finish, or pass --wait to start once it has") from None
            logger.warning("%s is in use by %s: waiting for it", what, holder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def choosing(output_dir: Path) -> Iterator[None]:
    """Runs choosing a run folder under ``output_dir`` take turns (a ``flock`` on the folder itself: nothing is
    written), so two identical runs started together meet at the same folder."""
    output_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(output_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block (main thread only), SIGTERM and SIGINT raise ``Interrupted``; handlers restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise Interrupted(signum)

    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def hold(folder: Path, wait: bool = False) -> Iterator[Path]:
    """Open the run folder ``folder`` (created if needed) for this process; see the module docstring."""
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / LOCK, wait, str(folder)):
        for stale in atomic.remove_stale_temps(folder):
            logger.info("removed a stale temp file: %s", stale)
        with signals_interrupt():
            yield folder


def write_summary(folder: Path, summary: dict[str, Any]) -> None:
    atomic.write_json(folder / SUMMARY, summary)


def record_end(folder: Path, summary: dict[str, Any], err: BaseException, **fields: Any) -> None:
    """Record how a run ended on ``err``: ``interrupted`` for a signal, else ``failed`` with the error.

    ``fields`` are added to the summary. A summary that cannot be written (a full disk) is a warning, not an error.
    """
    if isinstance(err, (Interrupted, KeyboardInterrupt)):
        if isinstance(err, Interrupted):
            err.folder = folder
        ended = {"status": "interrupted", "error": str(err) or "interrupted by SIGINT"}
    else:
        ended = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    try:
        write_summary(folder, {**summary, **ended, **fields})
    except OSError as write_err:
        logger.warning("could not record the run's end in %s: %s", folder / SUMMARY, write_err.strerror or write_err)
