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


TINY_GRID = """grid: tiny
reference_group: augmentation
base: configs/byol/tiny_cpu.yaml
linear: configs/byol/tiny_linear.yaml
variants:
  - {name: baseline, label: baseline}
  - {name: no_blur, label: remove blur, overrides: {augmentation.view1.blur: 0.0, augmentation.view2.blur: 0.0}}
"""  # an ablation grid of seconds-long runs
