"""Process set-up around ``import paddle``: quiet logs and a sane thread count.

On import Paddle prints glog lines and a ccache warning, sets the root logger to INFO, prints a
warning whenever ``OMP_NUM_THREADS`` > 1 and otherwise pins ``OMP_NUM_THREADS=1`` (a plain script
then runs on one core). ``configure()`` imports Paddle quietly and sets the intra-op thread count
through ``paddle.base.core.set_num_threads`` instead: every core by default, shared evenly between
the processes of a local multi-process launch. It never overrides a value the user set.
``import byol_lib`` runs ``configure_on_paddle_import()``: the quiet environment at once, the rest at the first
``import paddle`` of the process (a one-shot import hook), so commands that never need Paddle (``byol --help``)
never load it.

numpy's OpenBLAS (the linear-evaluation heads of ``byol_lib.evaluate``) gets the same count in this process
through its ``*_set_num_threads`` entry point, and one thread in forked children (DataLoader workers), as
``OPENBLAS_NUM_THREADS=1`` gives spawned ones, unless the user set ``OPENBLAS_NUM_THREADS``; oneDNN's OpenMP
threads follow ``threads()`` at each call (``byol_lib.onednn``).

glibc serves every block above 32 MB with a fresh ``mmap`` and unmaps it on free, so each training step
re-faults its large activations page by page (gigabytes per step at batch 128; on a 2-core VM that costs
about a fifth of a width-64 step). ``keep_freed_memory()`` makes glibc keep freed memory for reuse
(``mallopt``: no mmap, no trimming; the same as ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge>``): RSS
then stays at its peak instead of shrinking between steps. ``train.train_step`` calls it after the first
step, not at start: that step creates oneDNN's primitives, long-lived small allocations which, made while
activations come from the heap, sit between them and fragment it (width-64 step: 3.27 GB peak RSS when
set at start, 2.29 GB when set after the first step, 2.07 GB and 25% slower steps never set).
``BYOL_MALLOC_TUNING=0``, or any ``MALLOC_*``/``GLIBC_TUNABLES`` setting of the user's, leaves glibc alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.abc
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from importlib.machinery import ModuleSpec
from types import ModuleType

QUIET_ENV = {
    "GLOG_minloglevel": "2",
    "OPENBLAS_NUM_THREADS": "1",  # numpy in loader workers: one thread each, no fight over the cores
    "FLAGS_call_stack_level": "1",
    "PYTHONWARNINGS": "ignore:No ccache found:UserWarning",
}

_NOISY_WARNINGS = (
    "No ccache found",
    "When training, we now always track global mean and variance",
)
_configured_threads: int | None = None
_user_blas = False  # the user set OPENBLAS_NUM_THREADS before quiet()
_quieted = False
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)
_kept_freed_memory: bool | None = None  # decided at the first call
_OPENBLAS_SUFFIXES = ("64_", "_64_", "")  # scipy-openblas (numpy wheels) ILP64 names, then plain OpenBLAS


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def local_processes() -> int:
    """Processes sharing this machine in a ``paddle.distributed.launch`` job (1 when not launched)."""
    for key in ("PADDLE_LOCAL_SIZE", "PADDLE_TRAINERS_NUM"):
        value = os.environ.get(key, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def wanted_threads() -> int:
    """``BYOL_NUM_THREADS``, else the user's ``OMP_NUM_THREADS``, else cores / local processes."""
    for key in ("BYOL_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(key, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return max(1, available_cores() // local_processes())


def _openblas() -> tuple[ctypes.CDLL, str] | None:
    """The OpenBLAS loaded in this process (numpy's) and its symbol prefix/suffix, or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.rsplit("/", 1)[-1].lower()}
    except OSError:  # pragma: no cover - non-Linux
        return None
    for path in sorted(paths):
        lib = ctypes.CDLL(path)
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in _OPENBLAS_SUFFIXES:
                name = f"{prefix}_%s_num_threads{suffix}"
                if hasattr(lib, name % "set") and hasattr(lib, name % "get"):
                    return lib, name
    return None


def set_blas_threads(threads: int) -> None:
    """Threads of numpy's OpenBLAS in this process (no-op when numpy uses another BLAS)."""
    found = _openblas()
    if found is not None:
        lib, name = found
        getattr(lib, name % "set")(ctypes.c_int(threads))


def blas_threads() -> int | None:
    """Threads of numpy's OpenBLAS in this process, None when numpy uses another BLAS."""
    found = _openblas()
    if found is None:
        return None
    lib, name = found
    return int(getattr(lib, name % "get")())


def keep_freed_memory() -> bool:
    """Ask glibc to reuse freed memory instead of unmapping/trimming it; False when not done (see module doc).
    Decided once per process: later calls (one per training step) only return the decision."""
    global _kept_freed_memory
    if _kept_freed_memory is None:
        _kept_freed_memory = _tune_malloc()
    return _kept_freed_memory


def _tune_malloc() -> bool:
    if os.environ.get("BYOL_MALLOC_TUNING", "1") == "0" or "GLIBC_TUNABLES" in os.environ or any(
            key.startswith("MALLOC_") for key in os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # pragma: no cover - not glibc
        return False
    if not hasattr(libc, "mallopt"):  # pragma: no cover
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1)))


def quiet() -> None:
    """The cheap part, done on ``import byol_lib``: quiet environment, warning filters, logging."""
    global _user_blas, _quieted
    if _quieted:
        return
    _user_blas, _quieted = "OPENBLAS_NUM_THREADS" in os.environ, True  # before QUIET_ENV sets it for children
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for message in _NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # multi-node rendezvous requests


def _import_and_set_threads(load: Callable[[], object]) -> int:
    """Run ``load`` (the import of Paddle) without the user's ``OMP_NUM_THREADS``, then set the thread counts."""
    global _configured_threads
    threads = wanted_threads()
    user_omp = os.environ.pop("OMP_NUM_THREADS", None)  # avoids Paddle's import-time warning
    load()
    if user_omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)  # Paddle's "1", not the user's choice
    else:
        os.environ["OMP_NUM_THREADS"] = user_omp
    import paddle

    paddle.base.core.set_num_threads(threads)
    if not _user_blas:
        set_blas_threads(threads)
        os.register_at_fork(after_in_child=lambda: set_blas_threads(1))
    _configured_threads = threads
    return threads


def configure() -> int:
    """Silence Paddle's import-time noise, import it, set its thread count; return that count."""
    if _configured_threads is not None:
        return _configured_threads
    quiet()
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)
    return _import_and_set_threads(lambda: importlib.import_module("paddle"))


class _ConfiguringLoader(importlib.abc.Loader):
    """Paddle's own loader, with ``configure()``'s thread set-up around the execution of ``paddle/__init__``."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        _import_and_set_threads(lambda: self.loader.exec_module(module))

    def __getattr__(self, name: str) -> object:  # get_source, get_resource_reader, ...: Paddle's loader answers
        return getattr(self.loader, name)


class _ConfigureOnPaddleImport(importlib.abc.MetaPathFinder):
    """Finds ``paddle`` once, as the other finders do, and hands it ``_ConfiguringLoader``; then steps aside."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if name != "paddle":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _ConfiguringLoader(spec.loader)
        return spec


_HOOK = _ConfigureOnPaddleImport()


def configure_on_paddle_import() -> None:
    """``quiet()`` now and ``configure()`` at the first ``import paddle`` of the process, wherever it happens (at
    once when Paddle is already imported): commands that never need Paddle (``byol --help``) never load it."""
    quiet()
    if "paddle" in sys.modules:
        configure()
    elif _configured_threads is None and _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


def threads() -> int:
    """Paddle's intra-op thread count in force (configuring the process first if needed)."""
    return _configured_threads if _configured_threads is not None else configure()


def user_chose_threads() -> bool:
    """True when ``BYOL_NUM_THREADS`` or ``OMP_NUM_THREADS`` sets the thread count."""
    return any(os.environ.get(key, "").isdigit() for key in ("BYOL_NUM_THREADS", "OMP_NUM_THREADS"))


def set_threads(threads: int) -> None:
    """Intra-op threads of Paddle and (unless the user set ``OPENBLAS_NUM_THREADS``) numpy's OpenBLAS."""
    global _configured_threads
    configure()
    if threads != _configured_threads:
        import paddle

        paddle.base.core.set_num_threads(threads)
        if not _user_blas:
            set_blas_threads(threads)
        _configured_threads = threads


@contextlib.contextmanager
def cores_left_for_workers(workers: int) -> Iterator[int]:
    """Within the block, intra-op threads = the default count minus ``workers`` data-loader processes (at
    least 1), unless the user chose the count; yields the count in force and restores the previous one.

    Measured on 2 cores, default preset: 2 threads + 1 loader worker run at ~55 img/s (the threads spin while
    the worker holds a core), 1 thread + 1 worker at ~100 img/s.
    """
    previous = configure()
    threads = previous if user_chose_threads() or workers <= 0 else max(1, wanted_threads() - workers)
    set_threads(threads)
    try:
        yield threads
    finally:
        set_threads(previous)


def quiet_env() -> dict[str, str]:
    """The environment for a child process (launcher workers, notebook kernels)."""
    env = dict(os.environ)
    for key, value in QUIET_ENV.items():
        env.setdefault(key, value)
    return env
