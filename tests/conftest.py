"""Shared fixtures: a tiny config that trains in seconds on a 2-core CPU."""

from __future__ import annotations

import sys
from pathlib import Path

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
