"""Start-up time and loader-worker memory of the ImageNet-folder dataset at ImageNet scale.

    python bench/index.py [--classes 1000] [--per-class 1281] [--workers 4] [--header-sample 100000] [--keep DIR]

1. Generates ``classes x per_class`` empty ``.JPEG`` files (default 1,281,000, ImageNet's train split) in class
   folders under a fresh temporary folder (deleted at the end unless ``--keep``); indexing never opens them.
2. Times ``build_dataset`` in fresh processes, each the way a rank or the linear evaluation starts: "scan" with no
   cached index (the first process), then "cached" (every later one). For scale, the per-file header check the
   dataset used to do at construction (open + read 12 bytes per file) is timed on ``--header-sample`` files and
   extrapolated. The machine's dentry/inode cache is warm (the files were just created; dropping it needs root
   privileges this machine does not give): on a cold disk or a network file system the scan costs more and the
   cached index saves more.
3. Memory of forked loader workers over one epoch of lookups: each worker reads every path and label in a random
   order (what a sampler does); growth of its private memory (``Private_Dirty`` + ``Private_Clean`` of
   ``/proc/self/smaps_rollup``, i.e. pages it copied from the parent) is reported, once with the dataset's packed
   paths and once with the same paths as a Python list of full-path ``str`` (the old layout), in the same run.

Prints one table. A benchmark, never a test; the machine may be shared, so repeat before trusting small gaps.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from byol_lib.data.datasets import build_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def make_tree(root: Path, classes: int, per_class: int) -> float:
    """``root/train/n<class>/n<class>_<i>.JPEG`` empty files; seconds taken."""
    start = time.perf_counter()
    for c in range(classes):
        folder = root / "train" / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            os.close(os.open(folder / f"n{c:08d}_{i}.JPEG", os.O_CREAT | os.O_WRONLY, 0o644))
    return time.perf_counter() - start


def aged(root: Path) -> None:
    """Move every folder's time a minute back: a settled listing (the index caches only those)."""
    past = time.time() - 60
    for folder, _, _ in os.walk(root):
        os.utime(folder, (past, past))


_CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from byol_lib.data.datasets import build_dataset
start = time.perf_counter()
ds = build_dataset({{"name": "ImageNet", "dataroot": {data!r}}}, "train")
print(time.perf_counter() - start, len(ds))
"""


def build_in_fresh_process(data: Path, cache: Path) -> tuple[float, int]:
    """Seconds for ``build_dataset`` in a new Python process (after its imports), and the image count."""
    env = {**os.environ, "BYOL_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", _CHILD.format(root=str(ROOT), data=str(data))], env=env,
                         capture_output=True, text=True, check=True)
    seconds, count = out.stdout.split()
    return float(seconds), int(count)


def header_check_seconds(data: Path, sample: int) -> tuple[float, int]:
    """The old construction's per-file check (open, read 12 bytes) on the first ``sample`` files; seconds, files."""
    paths = []
    for folder in sorted((data / "train").iterdir()):
        paths += [str(p) for p in sorted(folder.iterdir())]
        if len(paths) >= sample:
            break
    paths = paths[:sample]
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb") as f:
            f.read(12)
    return time.perf_counter() - start, len(paths)


def private_kib() -> int:
    """This process's private (copied or own) resident memory, KiB."""
    with open("/proc/self/smaps_rollup") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return sum(int(fields[key].split()[0]) for key in ("Private_Clean", "Private_Dirty"))


_SHARED: dict[str, object] = {}  # set in the parent before forking: the workers inherit it


def _epoch_of_lookups(seed: int) -> int:
    """Read every path and label once in a random order; growth of private memory, KiB."""
    ds, layout = _SHARED["ds"], _SHARED["layout"]
    order = np.random.default_rng(seed).permutation(len(ds))
    before = private_kib()
    total = 0
    if layout == "packed":
        for i in order:
            total += len(ds.path(int(i))) + ds.label(int(i))
    else:
        paths = _SHARED["paths"]
        for i in order:
            total += len(paths[i]) + ds.label(int(i))
    assert total > 0
    return private_kib() - before


def worker_growth(ds: object, layout: str, workers: int) -> list[int]:
    """Private-memory growth (KiB) of each of ``workers`` forked workers over one epoch of lookups."""
    _SHARED.clear()
    _SHARED.update(ds=ds, layout=layout)
    if layout == "list":
        _SHARED["paths"] = [ds.path(i) for i in range(len(ds))]
    pool = multiprocessing.get_context("fork").Pool(workers)
    try:
        return pool.map(_epoch_of_lookups, range(workers), chunksize=1)
    finally:
        pool.close()
        pool.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=1281)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per timing")
    parser.add_argument("--header-sample", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, help="use (or create) this folder and keep it")
    args = parser.parse_args()

    base = args.keep or Path(tempfile.mkdtemp(prefix="byol-index-bench-"))
    data, cache = base / "imagenet", Path(tempfile.mkdtemp(prefix="byol-index-cache-"))
    try:
        if not (data / "train").is_dir():
            made = make_tree(data, args.classes, args.per_class)
            print(f"generated {args.classes * args.per_class:,} empty files in {made:.1f} s under {data}")
        aged(data)
        scans, cached = [], []
        for _ in range(args.repeats):  # interleaved: scan (no index cached), then a process that finds the index
            shutil.rmtree(cache / "index", ignore_errors=True)
            seconds, count = build_in_fresh_process(data, cache)
            scans.append(seconds)
            cached.append(build_in_fresh_process(data, cache)[0])
        header, checked = header_check_seconds(data, args.header_sample)
        os.environ["BYOL_CACHE_DIR"] = str(cache)
        ds = build_dataset({"name": "ImageNet", "dataroot": str(data)}, "train")
        packed_mib = (ds.relative_paths.blob.nbytes + ds.relative_paths.offsets.nbytes + ds.labels.nbytes) / 2**20
        growth = {layout: worker_growth(ds, layout, args.workers) for layout in ("packed", "list")}
        results = {
            "images": count, "cpu_cores": os.cpu_count(),
            "scan_seconds": scans, "cached_seconds": cached,
            "old_header_check_seconds_extrapolated": header * count / checked,
            "packed_index_mib": packed_mib,
            "worker_growth_mib": {k: [round(v / 1024, 1) for v in vals] for k, vals in growth.items()},
        }
        print(f"{count:,} images, {os.cpu_count()} cores (shared machine), medians of {args.repeats} fresh processes:")
        print(f"  build_dataset, no cached index (scan): {np.median(scans):6.2f} s  (all: "
              f"{', '.join(f'{s:.2f}' for s in scans)})")
        print(f"  build_dataset, cached index:           {np.median(cached):6.2f} s  (all: "
              f"{', '.join(f'{s:.2f}' for s in cached)})")
        print(f"  old per-file header check alone:       {header * count / checked:6.2f} s  (measured on {checked:,} "
              f"files: {header:.2f} s, warm dentry cache)")
        print(f"  packed paths + labels: {packed_mib:.1f} MiB in the parent")
        for layout, label in (("packed", "packed numpy paths (now)"), ("list", "Python list of str (before)")):
            mib = ", ".join(f"{v / 1024:.1f}" for v in growth[layout])
            print(f"  worker private-memory growth over one epoch of lookups, {label}: {mib} MiB per worker")
        print(json.dumps(results))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
