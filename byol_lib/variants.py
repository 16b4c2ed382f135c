"""Ablation grids: named variants of a base pretraining config, read from ``configs/ablations/*.yaml``.

A grid file::

    grid: augmentations                            # the grid's name (run labels, report groups)
    reference_group: augmentation                  # its rows in configs/references.yaml
    base: configs/byol/byol_r18_synthetic.yaml     # default pretraining config (relative to the repo root)
    linear: configs/byol/linear_synthetic.yaml     # default linear-evaluation config
    variants:
      - name: no_flip                              # unique; also its id in configs/references.yaml
        label: remove flip                         # what the report shows
        paper_top1: 71.9                           # the published top-1 for this row (omit: none)
        overrides: {augmentation.view1.flip: 0.0, augmentation.view2.flip: 0.0}   # dotted keys of the base
        combine: [other, variants]                 # their overrides too (they must not disagree)
        note: free text

A variant is its overrides (its own plus those it combines) applied to the base config with ``-o``. Keys must
be keys of the pretraining schema; the runner's own keys (seed, run id, output folder, labels) are refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byol_lib.config import PRETRAIN, Config, ConfigError, closest_key, flatten, load_config, yaml_load
from byol_lib.results import repo_root

BASELINE = "baseline"
RUNNER_KEYS = ("seed", "run_id", "output_dir", "variant", "grid", "device")
_GRID_FIELDS = {"grid", "reference_group", "base", "linear", "variants"}
_VARIANT_FIELDS = {"name", "label", "paper_top1", "overrides", "combine", "note"}


@dataclass(frozen=True)
class Variant:
    """One row of a grid: a name, what it changes, and the published number for it."""

    name: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    paper_top1: float | None = None
    note: str = ""

    def override_args(self) -> list[str]:
        """``key=value`` strings for ``load_config`` / ``-o`` (values as JSON, which YAML reads back unchanged)."""
        return [f"{key}={json.dumps(value)}" for key, value in self.overrides.items()]


@dataclass(frozen=True)
class Grid:
    """A variant file: its name, reference group, default configs and variants in file order."""

    name: str
    reference_group: str
    base: Path
    linear: Path
    variants: tuple[Variant, ...]
    source: Path


def _fail(source: Path, where: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {where}: {message}")


def _check_keys(source: Path, name: str, overrides: Mapping[str, Any]) -> None:
    valid = flatten(PRETRAIN.defaults)
    for key in overrides:
        if key in RUNNER_KEYS:
            raise _fail(source, f"variant '{name}'", f"key '{key}' is set by the ablation runner, not by a variant")
        if key not in valid:
            raise _fail(source, f"variant '{name}'",
                        f"unknown key '{key}'; did you mean '{closest_key(key, valid)}'?")


def _variant(source: Path, raw: Any, earlier: Mapping[str, Variant]) -> Variant:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise _fail(source, "variants", f"each variant needs a mapping with a 'name', got {raw!r}")
    name = raw["name"]
    if name in earlier:
        raise _fail(source, f"variant '{name}'", "defined twice")
    extra = set(raw) - _VARIANT_FIELDS
    if extra:
        raise _fail(source, f"variant '{name}'",
                    f"unknown field(s) {sorted(extra)}; allowed: {sorted(_VARIANT_FIELDS)}")
    own = raw.get("overrides") or {}
    combine = raw.get("combine") or []
    if not isinstance(own, Mapping) or not isinstance(combine, list):
        raise _fail(source, f"variant '{name}'", "'overrides' must be a mapping of dotted keys, 'combine' a list")
    _check_keys(source, name, own)
    merged: dict[str, Any] = {}
    for part, overrides in [*((c, _combined(source, name, c, earlier)) for c in combine), (name, own)]:
        for key, value in overrides.items():
            if key in merged and merged[key] != value:
                raise _fail(source, f"variant '{name}'", f"'{part}' sets {key}={value!r}, another part {merged[key]!r}")
            merged[key] = value
    if not merged and name != BASELINE:
        raise _fail(source, f"variant '{name}'", "changes nothing (no overrides, nothing combined)")
    top1 = raw.get("paper_top1")
    if top1 is not None and not isinstance(top1, (int, float)):
        raise _fail(source, f"variant '{name}'", f"paper_top1 must be a number, got {top1!r}")
    return Variant(name=name, label=str(raw.get("label") or name), overrides=merged,
                   paper_top1=None if top1 is None else float(top1), note=str(raw.get("note") or ""))


def _combined(source: Path, name: str, part: str, earlier: Mapping[str, Variant]) -> dict[str, Any]:
    if part not in earlier:
        raise _fail(source, f"variant '{name}'", f"combines '{part}', which is not defined above it")
    return earlier[part].overrides


def load_grid(path: str | Path) -> Grid:
    """Read and check a variant file (relative paths resolve against the repo root)."""
    source = Path(path)
    if not source.is_file() and not source.is_absolute():
        source = repo_root() / source
    if not source.is_file():
        raise ConfigError(f"variant file not found: {path}")
    source = source.resolve()
    data = yaml_load(source.read_text())
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping with 'grid' and 'variants'")
    extra = set(data) - _GRID_FIELDS
    missing = _GRID_FIELDS - set(data)
    if extra or missing:
        raise ConfigError(f"{source}: unknown field(s) {sorted(extra)}, missing {sorted(missing)}")
    if not isinstance(data["variants"], list) or not data["variants"]:
        raise _fail(source, "variants", "must be a non-empty list")
    variants: dict[str, Variant] = {}
    for raw in data["variants"]:
        variant = _variant(source, raw, variants)
        variants[variant.name] = variant
    if BASELINE not in variants or variants[BASELINE].overrides:
        raise _fail(source, "variants", f"needs a '{BASELINE}' variant without overrides")
    return Grid(name=str(data["grid"]), reference_group=str(data["reference_group"]),
                base=repo_root() / data["base"], linear=repo_root() / data["linear"],
                variants=tuple(variants.values()), source=source)


@dataclass(frozen=True)
class Study:
    """A study file: which grids and variants run, with which budget and seeds, and how far seeds are added."""

    grids: tuple[Path, ...]
    variants: tuple[str, ...] | None  # None: every variant of the grids
    pretrain_overrides: tuple[str, ...]
    linear_overrides: tuple[str, ...]
    seeds: tuple[int, ...]
    target_halfwidth: float | None  # points; None: the seeds as given
    max_seeds: int
    source: Path


_STUDY_FIELDS = {"grids", "variants", "pretrain_overrides", "linear_overrides", "seeds", "target_halfwidth",
                 "max_seeds"}


def load_study(path: str | Path) -> Study:
    """Read and check a study file (see ``configs/studies/default.yaml``); grids and variants must exist."""
    source = Path(path) if Path(path).is_absolute() else repo_root() / path
    if not source.is_file():
        raise ConfigError(f"study file not found: {path}")
    data = yaml_load(source.read_text())
    if not isinstance(data, Mapping) or set(data) - _STUDY_FIELDS or not {"grids", "seeds"} <= set(data):
        raise ConfigError(f"{source}: a mapping with 'grids' and 'seeds' and only {sorted(_STUDY_FIELDS)}")
    grids = tuple(load_grid(g).source for g in data["grids"])
    known = {v.name for g in grids for v in load_grid(g).variants}
    variants = data.get("variants")
    if variants is not None and (not isinstance(variants, list) or set(variants) - known):
        raise _fail(source, "variants", f"unknown {sorted(set(variants or []) - known) or variants!r}")
    seeds = data["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) and x >= 0 for x in seeds):
        raise _fail(source, "seeds", f"must be a non-empty list of seeds >= 0, got {seeds!r}")
    target, max_seeds = data.get("target_halfwidth"), data.get("max_seeds", len(seeds))
    if target is not None and not (isinstance(target, (int, float)) and target > 0):
        raise _fail(source, "target_halfwidth", f"must be > 0 points, got {target!r}")
    if not isinstance(max_seeds, int) or max_seeds < len(seeds):
        raise _fail(source, "max_seeds", f"must be an integer >= the {len(seeds)} seeds, got {max_seeds!r}")
    return Study(grids=grids, variants=None if variants is None else tuple(variants),
                 pretrain_overrides=tuple(map(str, data.get("pretrain_overrides") or ())),
                 linear_overrides=tuple(map(str, data.get("linear_overrides") or ())), seeds=tuple(seeds),
                 target_halfwidth=None if target is None else float(target), max_seeds=max_seeds, source=source)


def grid_labels(folder: str | Path | None = None) -> dict[str, str]:
    """Every variant's label in the grid files of ``folder`` (default: ``configs/ablations``), by name."""
    paths = sorted(Path(folder or repo_root() / "configs" / "ablations").glob("*.yaml"))
    return {v.name: v.label for path in paths for v in load_grid(path).variants}


def variant_overrides(variant: Variant, extra: Sequence[str] = (), grid: str = "") -> list[str]:
    """The ``-o`` overrides of a variant run: its own, then ``extra``, then its labels (name and grid)."""
    return [*variant.override_args(), *extra, f"variant={json.dumps(variant.name)}", f"grid={json.dumps(grid)}"]


def variant_config(base: str | Path, variant: Variant, extra: Sequence[str] = (), grid: str = "") -> Config:
    """The base pretraining config with ``variant_overrides`` applied."""
    try:
        return load_config(base, variant_overrides(variant, extra, grid))
    except ConfigError as err:
        raise ConfigError(f"variant '{variant.name}' on {base}: {err}") from err
