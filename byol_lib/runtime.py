"""Process set-up around ``import paddle``: quiet logs and a sane thread count.

On import Paddle prints glog lines and a ccache warning, sets the root logger to INFO, prints a
warning whenever ``OMP_NUM_THREADS`` > 1 and otherwise pins ``OMP_NUM_THREADS=1`` (a plain script
then runs on one core). ``configure()`` imports Paddle quietly and sets the intra-op thread count
through ``paddle.base.core.set_num_threads`` instead: every core by default, shared evenly between
the processes of a local multi-process launch. It never overrides a value the user set.
"""

from __future__ import annotations

import logging
import os
import warnings

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


def configure() -> int:
    """Silence Paddle's import-time noise, import it, set its thread count; return that count."""
    global _configured_threads
    if _configured_threads is not None:
        return _configured_threads
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for message in _NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # multi-node rendezvous requests
    threads = wanted_threads()
    user_omp = os.environ.pop("OMP_NUM_THREADS", None)  # avoids Paddle's import-time warning
    import paddle

    if user_omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)  # Paddle's "1", not the user's choice
    else:
        os.environ["OMP_NUM_THREADS"] = user_omp
    paddle.base.core.set_num_threads(threads)
    _configured_threads = threads
    return threads


def quiet_env() -> dict[str, str]:
    """The environment for a child process (launcher workers, notebook kernels)."""
    env = dict(os.environ)
    for key, value in QUIET_ENV.items():
        env.setdefault(key, value)
    return env
