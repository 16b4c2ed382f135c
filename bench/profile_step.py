"""Where the time of one BYOL training step goes, op by op (the project's step on random tensors, CPU).

    python bench/profile_step.py [--width 8] [--threads 1] [--steps 2] [--kernels auto] [--top 16]

Two views of the same steps (after one warm-up step):

* Paddle's profiler (``paddle.profiler``, CPU target): every dygraph op and backward node, per step:
  calls, total ms and µs per call. ``Global_GradNodePyLayer_*`` rows are the backward passes of
  ``byol_lib.fast``'s PyLayers, oneDNN work included; their forward passes are Python, outside any op.
* Timers around ``byol_lib.onednn``'s calls (convolution forward / backward data / backward weights with
  their weight reorders, BatchNorm forward / backward, the GEMMs; the no-grad target included), per step.

The line ``ops per step`` counts the dygraph op launches and backward nodes: with the median µs per call of
the cheap ones it bounds the per-op overhead. A benchmark, never a test; the profiler itself adds a few %.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from byol_lib import runtime  # noqa: E402

runtime.configure()

import paddle  # noqa: E402
import paddle.profiler as profiler  # noqa: E402

from bench.train_step import project_step  # noqa: E402
from byol_lib import fast, onednn  # noqa: E402

KERNELS = ((onednn.Convolution, "forward"), (onednn.Convolution, "backward_data"),
           (onednn.Convolution, "backward_weights"), (onednn.BatchNorm, "forward"), (onednn.BatchNorm, "backward"),
           (onednn, "sgemm"))  # the owner (class or module) and the function timed
_ROW = re.compile(r"^(\S.*?)\s{2,}(\d+)\s+([\d.]+) / ([\d.]+) / ")


def _time_onednn_calls() -> dict[str, list[float]]:
    """Wrap ``byol_lib.onednn``'s calls with timers; returns the per-call list of durations."""
    durations: dict[str, list[float]] = collections.defaultdict(list)

    def timed(name: str, kernel: Callable) -> Callable:
        def run(*args: object) -> object:
            start = time.perf_counter()
            result = kernel(*args)
            durations[name].append(time.perf_counter() - start)
            return result
        return run

    for owner, name in KERNELS:
        label = f"{owner.__name__.rsplit('.', 1)[-1]} {name}"
        setattr(owner, name, timed(label, getattr(owner, name)))
    return durations


def _operator_rows(summary: str) -> list[tuple[str, int, float]]:
    """Top-level rows (name, calls, total ms) of the profiler's operator summary."""
    rows, inside = [], False
    for line in summary.splitlines():
        if "Operator Summary" in line:
            inside = True
        elif inside and (match := _ROW.match(line)):
            rows.append((match.group(1).replace(" dygraph", ""), int(match.group(2)), float(match.group(3))))
        elif inside and line.startswith("---") and rows:
            break
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2, help="profiled steps (after 1 warm-up step)")
    parser.add_argument("--kernels", default="auto", choices=fast.KERNELS)
    parser.add_argument("--top", type=int, default=16, help="Paddle ops shown (by total time)")
    args = parser.parse_args()
    args.depth, args.stem = 18, "cifar"
    runtime.set_threads(args.threads)
    paddle.seed(0)
    views = [paddle.randn([args.batch, 3, args.size, args.size]) for _ in range(2)]
    labels = paddle.randint(0, 10, [args.batch])
    step = project_step(args, views, labels, args.kernels)
    step()
    durations = _time_onednn_calls()

    walls = []
    prof = profiler.Profiler(targets=[profiler.ProfilerTarget.CPU])
    prof.start()
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        walls.append(time.perf_counter() - start)
        prof.step()
    prof.stop()
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        prof.summary(op_detail=False, thread_sep=False, time_unit="ms", sorted_by=profiler.SortedKeys.CPUTotal)
    rows = _operator_rows(text.getvalue())

    n = args.steps
    wall_ms = statistics.median(walls) * 1000
    print(f"BYOL step, ResNet-18 width {args.width}, batch {args.batch}, {args.size} px, {args.threads} thread(s), "
          f"kernels {args.kernels}: {wall_ms:.0f} ms/step under the profiler ({args.batch / wall_ms * 1000:.1f} "
          "images/s)")
    print("\n| Paddle op / backward node | calls/step | ms/step | % of step | µs/call |\n|---|---|---|---|---|")
    for name, calls, total in rows[:args.top]:
        print(f"| {name} | {calls / n:.0f} | {total / n:.1f} | {100 * total / n / wall_ms:.0f} | "
              f"{1000 * total / calls:.0f} |")
    cheap = [1000 * total / calls for _, calls, total in rows if calls and 1000 * total / calls < 100]
    print(f"\nops per step: {sum(calls for _, calls, _ in rows) / n:.0f} (median of the cheap ones' µs/call: "
          f"{statistics.median(cheap) if cheap else float('nan'):.0f})")
    print("\n| oneDNN call (byol_lib.onednn) | calls/step | ms/step | % of step |\n|---|---|---|---|")
    for name, spent_each in durations.items():
        spent = sum(spent_each) * 1000 / n
        print(f"| {name} | {len(spent_each) / n:.0f} | {spent:.1f} | {100 * spent / wall_ms:.0f} |")


if __name__ == "__main__":
    main()
