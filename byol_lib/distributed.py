"""Devices, process groups and ``paddle.distributed.launch``: start-up, collectives and the launcher.

One process per device. On GPUs the collective backend is NCCL and BatchNorm is synchronised; on
CPUs (``--nproc_per_node N``) it is gloo and BatchNorm statistics stay per process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paddle
import paddle.distributed as dist

from byol_lib import runtime

_LAUNCH_NOISE = ("LAUNCH INFO", "Modified FLAGS detected", "FLAGS(name=", "=======================")
_LAUNCH_NOISE_ANYWHERE = ("HTTP Request:",)


class DeviceError(RuntimeError):
    """The requested device cannot be used with this Paddle build or machine."""


@dataclass(frozen=True)
class Context:
    """Where this process runs and who its peers are."""

    rank: int
    world_size: int
    device: str  # "cpu" or "gpu:<id>"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("gpu")


def select_device(requested: str) -> str:
    """``auto`` -> gpu when this Paddle build and machine have one, else cpu; ``gpu`` fails clearly if not."""
    has_gpu = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if requested == "gpu" and not has_gpu:
        reason = ("this PaddlePaddle build has no CUDA support (install paddlepaddle-gpu, see requirements-gpu.txt)"
                  if not paddle.is_compiled_with_cuda() else "no CUDA device is visible")
        raise DeviceError(f"device 'gpu' was requested but {reason}; use --device cpu")
    if requested == "cpu" or not has_gpu:
        return "cpu"
    return f"gpu:{int(os.environ.get('FLAGS_selected_gpus', '0').split(',')[0])}"  # noqa: SIM112 (Paddle's name)


def launched_world_size() -> int:
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def init(requested_device: str) -> Context:
    """Select the device and, under ``paddle.distributed.launch``, join the process group."""
    device = select_device(requested_device)
    paddle.set_device(device)
    world_size = launched_world_size()
    if world_size > 1:
        dist.init_parallel_env()
        return Context(dist.get_rank(), dist.get_world_size(), device)
    return Context(0, 1, device)


def broadcast_object(value: Any, ctx: Context) -> Any:
    """Rank 0's ``value`` on every rank."""
    if ctx.world_size == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def mean_over_ranks(values: dict[str, float], ctx: Context) -> dict[str, float]:
    """Average a few scalars over all ranks (one collective)."""
    if ctx.world_size == 1:
        return values
    keys = sorted(values)
    tensor = paddle.to_tensor([values[k] for k in keys], dtype="float64")
    dist.all_reduce(tensor)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, tensor.numpy(), strict=True)}


def replicas_identical(tensors: list[paddle.Tensor], ctx: Context) -> bool:
    """True when every rank holds bit-identical ``tensors`` (compares a float64 fingerprint per rank)."""
    if ctx.world_size == 1:
        return True
    with paddle.no_grad():
        parts = [t.astype("float64").flatten() for t in tensors]
        flat = paddle.concat(parts)
        position = paddle.arange(flat.shape[0], dtype="float64") % 9973 + 1
        fingerprint = paddle.stack([flat.sum(), (flat * position).sum(), (flat * flat).sum()])
        gathered: list[paddle.Tensor] = []
        dist.all_gather(gathered, fingerprint)
    reference = gathered[0].numpy()
    return all((g.numpy() == reference).all() for g in gathered[1:])


def barrier(ctx: Context) -> None:
    if ctx.world_size > 1:
        dist.barrier()


# ---------------------------------------------------------------------------------------------
# The launcher


def launch_command(script: str | Path, script_args: Sequence[str], *, nproc_per_node: int | None = None,
                   devices: str | None = None, nnodes: int = 1, master: str | None = None,
                   node_rank: int | None = None, log_dir: str | Path = "log") -> list[str]:
    """The ``python -m paddle.distributed.launch`` command line for a job."""
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--log_dir", str(log_dir), "--max_restart", "0"]
    if devices:
        cmd += ["--devices", devices]
    if nproc_per_node:
        cmd += ["--nproc_per_node", str(nproc_per_node)]
    if nnodes > 1:
        cmd += ["--nnodes", str(nnodes)]
    if master:
        cmd += ["--master", master]
    if node_rank is not None:
        cmd += ["--rank", str(node_rank)]
    return [*cmd, str(script), *script_args]


@dataclass
class LaunchResult:
    returncode: int
    log_dir: Path
    failure_tail: str = ""


def worker_logs(log_dir: Path) -> list[Path]:
    return sorted(log_dir.glob("workerlog.*"), key=lambda p: int(p.suffix[1:]) if p.suffix[1:].isdigit() else -1)


def _tail(path: Path, lines: int) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_launch(cmd: Sequence[str], log_dir: str | Path, *, stream: bool = True, tail_lines: int = 40,
               cwd: str | Path | None = None) -> LaunchResult:
    """Run a launch command, echo rank 0's output without launcher noise, and report a failed worker's log."""
    log_dir = Path(log_dir)
    env = runtime.quiet_env()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=cwd)
    assert proc.stdout is not None
    for line in proc.stdout:
        noise = line.startswith(_LAUNCH_NOISE) or any(n in line for n in _LAUNCH_NOISE_ANYWHERE)
        if stream and not noise:
            print(line, end="", flush=True)
    returncode = proc.wait()
    result = LaunchResult(returncode, log_dir)
    if returncode != 0:
        for log in worker_logs(log_dir):
            text = log.read_text(errors="replace")
            if "Traceback" in text or "Error" in text:
                result.failure_tail = f"--- {log} ---\n{_tail(log, tail_lines)}"
                break
        else:
            logs = worker_logs(log_dir)
            if logs:
                result.failure_tail = f"--- {logs[-1]} ---\n{_tail(logs[-1], tail_lines)}"
    return result


def launch_cli(cli_args: Sequence[str], *, nproc_per_node: int | None = None, devices: str | None = None,
               nnodes: int = 1, master: str | None = None, log_dir: str | Path = "log",
               stream: bool = True) -> LaunchResult:
    """Run ``byol <cli_args>`` in every worker of a ``paddle.distributed.launch`` job."""
    script = Path(__file__).resolve().parent / "cli.py"
    cmd = launch_command(script, list(cli_args), nproc_per_node=nproc_per_node, devices=devices, nnodes=nnodes,
                         master=master, log_dir=log_dir)
    return run_launch(cmd, log_dir, stream=stream)


def launch_pretrain(config: str | Path, overrides: Sequence[str] = (), **launch: Any) -> LaunchResult:
    """Pretrain ``config`` under ``paddle.distributed.launch`` (the notebooks' path); ``launch`` as in launch_cli."""
    return launch_cli(["pretrain", "-c", str(config), *[a for o in overrides for a in ("-o", o)]], **launch)


def run_pretraining(config: str | Path, overrides: Sequence[str], nproc_per_node: int | None, devices: str | None,
                    log_dir: Path) -> dict[str, Any]:
    """Pretrain in this process, or under ``paddle.distributed.launch`` when processes or devices are given;
    return the (validated) config. A failed launch raises with its failing worker's log tail."""
    from byol_lib.config import load_config
    from byol_lib.train import pretrain

    cfg = load_config(config, list(overrides))
    if not (nproc_per_node or devices):
        pretrain(cfg)
        return cfg
    result = launch_pretrain(config, overrides, nproc_per_node=nproc_per_node, devices=devices, log_dir=log_dir)
    if result.returncode != 0:
        raise RuntimeError(f"pretraining failed (exit code {result.returncode})\n{result.failure_tail}")
    return cfg
