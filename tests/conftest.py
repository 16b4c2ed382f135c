"""Shared fixtures: a tiny config that trains in seconds on a 2-core CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

import byol_lib  # noqa: F401  (quiet Paddle before anything imports it)

ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = ROOT / "configs" / "byol" / "tiny_cpu.yaml"

sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated datasets go to one per-session cache folder, never the user's."""
    monkeypatch.setenv("BYOL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


# t_{0.975, df} for df = 1..30 as printed in tables (for hand-checked intervals, independent of byol_lib.stats)
T975 = dict(enumerate((12.7062047, 4.30265273, 3.18244631, 2.77644511, 2.57058184, 2.44691185, 2.36462425,
                       2.30600414, 2.26215716, 2.22813885, 2.20098516, 2.17881283, 2.16036866, 2.14478669,
                       2.13144955, 2.11990530, 2.10981558, 2.10092204, 2.09302405, 2.08596345, 2.07961384,
                       2.07387307, 2.06865761, 2.06389856, 2.05953855, 2.05552944, 2.05183052, 2.04840714,
                       2.04522964, 2.04227246), start=1))

TINY_GRID = """grid: tiny
reference_group: augmentation
base: configs/byol/tiny_cpu.yaml
linear: configs/byol/tiny_linear.yaml
variants:
  - {name: baseline, label: baseline}
  - {name: no_blur, label: remove blur, overrides: {augmentation.view1.blur: 0.0, augmentation.view2.blur: 0.0}}
"""  # an ablation grid of seconds-long runs


def write_run(results: Path, run_id: str, summary: dict[str, Any]) -> Path:
    """A run folder with only its summary.json (the registry needs no more)."""
    folder = results / run_id
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"run_id": run_id, **summary}))
    return folder


def write_ablation_runs(results: Path, study: str, variant: str, seed: int, top1: float,
                        linear_status: str = "finished") -> Path:
    """An ablation job's finished pretraining run and its linear run (``top1`` a fraction), as the runner names
    them; returns the linear run's folder."""
    pretrain = write_run(results, f"{study}-{variant}-pretrain-s{seed}",
                         {"kind": "pretrain", "status": "finished", "variant": variant, "grid": "tiny", "seed": seed,
                          "final": {"online_accuracy": 0.3}})
    return write_run(results, f"{study}-{variant}-linear-s{seed}",
                     {"kind": "linear", "status": linear_status, "seed": 0, "top1": top1, "knn_top1_k20": 0.5,
                      "pretrained": str(pretrain / "checkpoints" / "step_00000010.pdckpt"),
                      "random_init": {"top1": 0.1}})
