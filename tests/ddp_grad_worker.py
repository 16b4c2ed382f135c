"""Worker for tests/test_distributed.py: DataParallel gradients must be the mean of the ranks' own gradients.

Each rank computes its local gradient on its own batch with a plain model, gathers everyone's, and
compares their mean with what a DataParallel copy of the same model produces on the same batch.
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
from byol_lib.model import BYOL  # noqa: E402
from byol_lib.plan import resolve  # noqa: E402


def main(out_dir: Path) -> None:
    dist.init_parallel_env()
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = resolve(load_config(Path(__file__).parent.parent / "configs" / "byol" / "tiny_cpu.yaml"), world, 128, 10)
    paddle.seed(100 + rank)
    views = [paddle.randn([8, 3, 16, 16]) for _ in range(2)]
    labels = paddle.randint(0, 10, [8])

    def fresh_model() -> BYOL:
        paddle.seed(0)
        return BYOL(cfg["model"], 10)

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
        {"world": world, "max_error": max(errors), "local_differs_from_mean": differs}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
