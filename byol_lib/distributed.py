"""Devices, process groups and collectives: what one process of a (possibly launched) job needs.

One process per device. On GPUs the collective backend is NCCL and BatchNorm is synchronised; on
CPUs (``--nproc_per_node N``) it is gloo and BatchNorm statistics stay per process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import paddle
import paddle.distributed as dist


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
