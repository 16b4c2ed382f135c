"""Worker for tests/test_distributed.py: DataParallel gradients must be the mean of the ranks' own gradients.

Each rank computes its local gradient on its own batch with a plain model, gathers everyone's, and
compares their mean with what a DataParallel copy of the same model produces on the same batch. Then gradient
accumulation as the training loop does it (each chunk's loss / chunks back-propagated through the DataParallel
model) against numpy's gradient of the whole global batch's mean loss, without accumulation.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddle.distributed as dist  # noqa: E402

import byol_lib  # noqa: E402, F401
from byol_lib.config import load_config
from byol_lib.model import BYOL, byol_from_config  # noqa: E402
from byol_lib.plan import resolve  # noqa: E402


def accumulation_error(rank: int, world: int, chunks: int = 2) -> float:
    """Largest difference between the accumulated DataParallel gradient of a linear layer's mean squared error and
    numpy's gradient of the mean over every rank's samples (the same global batch, one backward)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((world, 8, 5)).astype("float32")
    y = rng.standard_normal((world, 8, 3)).astype("float32")
    paddle.seed(1)
    layer = paddle.nn.Linear(5, 3)
    wrapped = paddle.DataParallel(layer)
    for x_chunk, y_chunk in zip(np.split(x[rank], chunks), np.split(y[rank], chunks), strict=True):
        loss = ((wrapped(paddle.to_tensor(x_chunk)) - paddle.to_tensor(y_chunk)) ** 2).mean()
        (loss / chunks).backward()
    inputs, targets = x.reshape(-1, 5).astype("float64"), y.reshape(-1, 3).astype("float64")
    residual = inputs @ layer.weight.numpy().astype("float64") + layer.bias.numpy() - targets
    expected_weight = 2 * inputs.T @ residual / residual.size
    expected_bias = 2 * residual.sum(axis=0) / residual.size
    return max(float(np.abs(layer.weight.grad.numpy() - expected_weight).max()),
               float(np.abs(layer.bias.grad.numpy() - expected_bias).max()))


def main(out_dir: Path) -> None:
    dist.init_parallel_env()
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = resolve(load_config(Path(__file__).parent.parent / "configs" / "byol" / "tiny_cpu.yaml"), world, 128, 10)
    paddle.seed(100 + rank)
    views = [paddle.randn([8, 3, 16, 16]) for _ in range(2)]
    labels = paddle.randint(0, 10, [8])

    def fresh_model() -> BYOL:
        paddle.seed(0)
        return byol_from_config(cfg["model"], 10)

    plain = fresh_model()
    plain(*views, labels)["loss"].backward()
    local = [p.grad.numpy() for p in plain.online_parameters()]
    mean = []
    for g in local:
        gathered: list[paddle.Tensor] = []
        dist.all_gather(gathered, paddle.to_tensor(g))
        mean.append(np.mean([t.numpy() for t in gathered], axis=0))

    model = fresh_model()
    wrapped = paddle.DataParallel(model)  # keep a reference: the reducer lives as long as the wrapper
    wrapped(*views, labels)["loss"].backward()
    errors = [float(np.abs(p.grad.numpy() - m).max()) for p, m in zip(model.online_parameters(), mean, strict=True)]
    differs = any(not np.allclose(a, b) for a, b in zip(local, mean, strict=True))
    (out_dir / f"rank{rank}.json").write_text(json.dumps(
        {"world": world, "max_error": max(errors), "local_differs_from_mean": differs,
         "accumulation_error": accumulation_error(rank, world)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
