"""The one atomic file writer: a reader sees the old file or the new one, never half of one, even after a crash.

``write_atomic(path, data)`` writes into a temp file in ``path``'s folder (a name unique to this process and call,
``.<name>.tmp-<pid>-<random>``), fsyncs it, renames it over ``path``, then fsyncs the folder so the rename itself
survives a power cut. A failed write removes its temp file and raises ``OSError`` (``errno.ENOSPC`` on a full disk);
``path`` is left as it was. A temp file whose writer died (SIGKILL) is removed by ``remove_stale_temps`` when the
run folder is next opened (``byol_lib.run_folder``); names written by earlier versions (``.<name>.tmp``,
``.<name>.tmp-<pid>``) count as temp files too.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TEMP_NAME = re.compile(r"^\..+\.tmp(-[0-9a-f-]+)?$")


def temp_path(path: Path) -> Path:
    """A fresh temp-file name beside ``path``."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def fsync_folder(folder: Path) -> None:
    """Make a rename (or removal) in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], data: bytes | str | Callable[[IO[bytes]], None]) -> Path:
    """Replace ``path`` with ``data`` (bytes, text as UTF-8, or a function that writes to a binary handle)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_folder(path.parent)
    return path


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """``data`` as indented JSON (values JSON cannot hold written as strings), atomically."""
    return write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove every temp file under ``folder`` (call only while no writer can be running there); return them."""
    stale = [p for p in folder.rglob(".*.tmp*") if p.is_file() and TEMP_NAME.match(p.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
