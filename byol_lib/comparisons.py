"""The paired comparisons of a study: every variant against the baseline, seed by seed.

A study's runs are ``<study>-<variant>-pretrain-s<seed>`` and ``<study>-<variant>-linear-s<seed>``
(``byol_lib.ablation``), read with ``registry.load_runs``. A variant is compared with the baseline over the seeds
both have finished; a seed whose variant or baseline run failed is left out (``excluded_seeds``). For those seeds:
both top-1s (percent) and their differences (points), the paired t interval, a bootstrap interval (two-stage over
seeds and validation images from each linear run's ``predictions.npz`` when every run of the pairing has one with
the same labels, else over seeds alone), Welch's interval of the same runs taken as unpaired, the sd of the
differences, the minimum detectable effect at 80% power, the seeds needed for half-widths of 1, 2 and 5 points,
and a verdict: ``resolved`` when the paired 95% interval excludes 0.

``write_comparisons`` writes them to ``<results>/<study>/comparisons.json`` (a list of records, NaN as null) and
``comparisons.csv`` (their scalar fields). That folder holds no summary.json, so the registry never reads it as a run.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from byol_lib import registry, stats
from byol_lib.atomic import write_atomic, write_json
from byol_lib.linear import PREDICTIONS
from byol_lib.variants import BASELINE, load_grid

CONFIDENCE, POWER = 0.95, 0.8
HALFWIDTHS = (1, 2, 5)  # points: the power table's target half-widths
BOOTSTRAP_REPS = 2000
JSON_NAME, CSV_NAME, AGREEMENT_NAME = "comparisons.json", "comparisons.csv", "agreement.json"


@dataclass(frozen=True)
class Comparison:
    """A variant against the baseline over their paired seeds: ``top1[i]`` and ``baseline_top1[i]`` are seed
    ``seeds[i]``'s runs (percent). ``correct``: both arms' [seeds, images] linear-head correctness, when known."""

    variant: str
    seeds: tuple[int, ...]
    top1: tuple[float, ...]
    baseline_top1: tuple[float, ...]
    correct: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)
    excluded_seeds: tuple[int, ...] = ()  # a run of the variant or the baseline failed
    unpaired_seeds: tuple[int, ...] = ()  # the variant finished, the baseline has no run yet
    grid: str | None = None
    label: str | None = None
    paper_top1: float | None = None
    paper_baseline: float | None = None  # the paper's top-1 for the grid's baseline row

    @property
    def paper_delta(self) -> float | None:
        """The paper's change for this row (None without both numbers)."""
        if self.paper_top1 is None or self.paper_baseline is None:
            return None
        return self.paper_top1 - self.paper_baseline

    def __post_init__(self) -> None:
        if not len(self.seeds) == len(self.top1) == len(self.baseline_top1):
            raise ValueError(f"variant '{self.variant}': {len(self.seeds)} seeds, {len(self.top1)} top-1s and "
                             f"{len(self.baseline_top1)} baseline top-1s; they must pair up")

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def differences(self) -> tuple[float, ...]:
        return tuple(a - b for a, b in zip(self.top1, self.baseline_top1, strict=True))

    @property
    def attempted_seeds(self) -> tuple[int, ...]:
        """Every seed the variant has a finished or failed run for."""
        return tuple(sorted({*self.seeds, *self.excluded_seeds, *self.unpaired_seeds}))

    @cached_property
    def paired(self) -> stats.Difference:
        return stats.paired_interval(self.top1, self.baseline_top1, CONFIDENCE)

    @cached_property
    def welch(self) -> stats.Difference:
        return stats.welch_interval(self.top1, self.baseline_top1, CONFIDENCE)

    @property
    def sd(self) -> float:
        """The sample sd of the per-seed differences."""
        return stats.mean_std(self.differences)[1]

    @property
    def mde(self) -> float:
        return stats.min_detectable_effect(self.sd, self.n, CONFIDENCE, POWER)

    @property
    def bootstrap_over(self) -> str:
        return "seeds and images" if self.correct is not None else "seeds"

    @cached_property
    def bootstrap(self) -> tuple[float, float, float]:
        """(mean, low, high) in points; no interval below two seeds."""
        if self.n < 2:
            return self.paired.delta, math.nan, math.nan
        if self.correct is not None:
            return stats.paired_bootstrap(*self.correct, reps=BOOTSTRAP_REPS, confidence=CONFIDENCE)
        return stats.seed_bootstrap(self.top1, self.baseline_top1, reps=BOOTSTRAP_REPS, confidence=CONFIDENCE)

    @cached_property
    def seeds_for(self) -> dict[int, int | None]:
        """Seeds needed for each of ``HALFWIDTHS`` at the observed sd (None: unknown, or above 1000)."""
        return {h: None if math.isnan(self.sd) else stats.seeds_needed(self.sd, h, CONFIDENCE) for h in HALFWIDTHS}

    def within(self, target: float) -> bool:
        """Whether the paired interval's half-width is at most ``target`` points (False without an interval)."""
        return bool(self.paired.half <= target)

    @property
    def verdict(self) -> str:
        if self.n < 2:
            return f"not resolved: {self.n} paired seed(s); an interval needs 2"
        if self.paired.excludes_zero:
            return f"resolved: {self.paired.delta:+.1f} ± {self.paired.half:.1f} points"
        return f"not resolved: effects below {self.mde:.1f} points cannot be told from noise with {self.n} seeds"

    def record(self) -> dict[str, Any]:
        """The comparison as one JSON-safe mapping (NaN as None)."""
        paired, (_, boot_low, boot_high) = self.paired, self.bootstrap
        fields = {
            "variant": self.variant, "label": self.label or self.variant, "grid": self.grid,
            "paper_top1": self.paper_top1, "paper_delta": self.paper_delta,
            "confidence": CONFIDENCE, "n": self.n, "seeds": list(self.seeds),
            "excluded_seeds": list(self.excluded_seeds), "unpaired_seeds": list(self.unpaired_seeds),
            "top1": list(self.top1), "baseline_top1": list(self.baseline_top1), "differences": list(self.differences),
            "delta": paired.delta, "sd": self.sd, "se": paired.se, "df": paired.df, "ci_low": paired.low,
            "ci_high": paired.high, "halfwidth": paired.half, "bootstrap_over": self.bootstrap_over,
            "bootstrap_low": boot_low, "bootstrap_high": boot_high, "welch_low": self.welch.low,
            "welch_high": self.welch.high, "mde": self.mde, "resolved": paired.excludes_zero, "verdict": self.verdict,
            **{f"seeds_for_halfwidth_{h}": n for h, n in self.seeds_for.items()}}
        return {key: _json_safe(value) for key, value in fields.items()}


def _json_safe(value: Any) -> Any:
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def _study_runs(runs: pd.DataFrame, study: str) -> tuple[dict[str, dict[int, dict]], dict[str, set[int]]]:
    """The study's finished linear rows by variant and seed, and the seeds of each variant with a failed run."""
    finished: dict[str, dict[int, dict]] = {}
    failed: dict[str, set[int]] = {}
    for row in runs.to_dict("records"):
        if pd.isna(row["seed"]):
            continue
        variant, seed = row["variant"], int(row["seed"])
        stem = f"{study}-{variant}"
        if row["status"] == "failed" and row["run_id"] in (f"{stem}-pretrain-s{seed}", f"{stem}-linear-s{seed}"):
            failed.setdefault(variant, set()).add(seed)
        elif (row["status"] == "finished" and row["evaluation"] == registry.LINEAR
              and row["run_id"] == f"{stem}-linear-s{seed}" and row["pretrain_run"] == f"{stem}-pretrain-s{seed}"):
            finished.setdefault(variant, {})[seed] = row
    return finished, failed


def _predictions(folder: str) -> tuple[np.ndarray, np.ndarray] | None:
    """A linear run's validation labels and its head's top-1 classes, if it saved them."""
    path = Path(folder) / PREDICTIONS
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as saved:
        return saved["labels"], saved["linear"]


def _correctness(variant_runs: Sequence[str], baseline_runs: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Both arms' [seeds, images] correctness, when every run has predictions over the same labels; else None."""
    read = [_predictions(folder) for folder in (*variant_runs, *baseline_runs)]
    if not read or any(r is None or not np.array_equal(r[0], read[0][0]) for r in read):
        return None
    correct = np.stack([predicted == labels for labels, predicted in read])
    return correct[:len(variant_runs)], correct[len(variant_runs):]


def compare(results_dir: str | Path | None = None, study: str = "ablation",
            grid_files: Sequence[str | Path] | None = None) -> list[Comparison]:
    """Every variant of ``study`` under ``results_dir`` (but the baseline) against the baseline, by variant name;
    labels and paper top-1s come from ``grid_files`` when given."""
    finished, failed = _study_runs(registry.load_runs(results_dir), study)
    known = {v.name: v for path in grid_files or () for v in load_grid(path).variants}
    paper_baseline = _paper_baseline(grid_files)
    base, base_failed = finished.get(BASELINE, {}), failed.get(BASELINE, set())
    out = []
    for name in sorted((finished.keys() | failed.keys()) - {BASELINE}):
        own = finished.get(name, {})
        seeds = sorted(own.keys() & base.keys())
        grids = [row["grid"] for row in own.values() if isinstance(row["grid"], str)]
        variant = known.get(name)
        out.append(Comparison(
            variant=name, seeds=tuple(seeds), top1=tuple(float(own[s]["top1"]) for s in seeds),
            baseline_top1=tuple(float(base[s]["top1"]) for s in seeds),
            correct=_correctness([own[s]["path"] for s in seeds], [base[s]["path"] for s in seeds]),
            excluded_seeds=tuple(sorted(failed.get(name, set()) | (own.keys() & base_failed))),
            unpaired_seeds=tuple(sorted(own.keys() - base.keys() - base_failed)),
            grid=grids[0] if grids else None, label=variant.label if variant else name,
            paper_top1=variant.paper_top1 if variant else None, paper_baseline=paper_baseline))
    return out


def _paper_baseline(grid_files: Sequence[str | Path] | None) -> float | None:
    """The paper's top-1 for the baseline row of the grid files (the first that gives one)."""
    return next((v.paper_top1 for g in grid_files or () for v in load_grid(g).variants
                 if v.name == BASELINE and v.paper_top1 is not None), None)


def agreement(comparisons: Sequence[Comparison], paper_baseline: float, reps: int = BOOTSTRAP_REPS,
              seed: int = 0) -> list[dict[str, Any]]:
    """Per grid, how the measured changes agree with the paper's (``paper_top1 - paper_baseline``) over the rows
    that have a paper number and >= 2 paired seeds: Spearman's rank correlation with a bootstrap interval (each
    row's seeds resampled with replacement, the mean changes ranked again), Kendall's tau-b, and how many rows
    resolve a change of the paper's sign, resolve the opposite sign, or resolve none."""
    out = []
    for grid in sorted({c.grid for c in comparisons if c.grid}):
        rows = [c for c in comparisons if c.grid == grid and c.paper_top1 is not None and c.n >= 2]
        if len(rows) < 3:
            continue
        paper = np.array([c.paper_top1 - paper_baseline for c in rows])
        measured = np.array([c.paired.delta for c in rows])
        rng = np.random.default_rng(seed)
        draws = np.array([[float(np.mean(rng.choice(c.differences, c.n))) for c in rows] for _ in range(reps)])
        boot = [stats.spearman(d, paper) for d in draws]
        alpha = 100 * (1 - CONFIDENCE) / 2
        signs = [np.sign(c.paired.delta) if c.paired.excludes_zero else 0.0 for c in rows]
        out.append({"grid": grid, "rows": len(rows), "variants": [c.variant for c in rows],
                    "spearman": _json_safe(stats.spearman(measured, paper)),
                    "spearman_low": _json_safe(float(np.nanpercentile(boot, alpha))),
                    "spearman_high": _json_safe(float(np.nanpercentile(boot, 100 - alpha))),
                    "kendall_tau_b": _json_safe(stats.kendall_tau_b(measured, paper)),
                    "sign_agrees": int(sum(s != 0 and s == np.sign(p) for s, p in zip(signs, paper, strict=True))),
                    "sign_disagrees": int(sum(s != 0 and s != np.sign(p) for s, p in zip(signs, paper, strict=True))),
                    "unresolved": int(sum(s == 0 for s in signs))})
    return out


def comparisons_folder(results_dir: str | Path | None, study: str) -> Path:
    return registry.results_path(results_dir) / study


def save_comparisons(comparisons: Sequence[Comparison], folder: Path) -> Path:
    """Write ``comparisons.json`` and ``comparisons.csv`` into ``folder``, each atomically; return the JSON file."""
    folder.mkdir(parents=True, exist_ok=True)
    records = [c.record() for c in comparisons]
    write_json(folder / JSON_NAME, records)
    scalars = [{key: value for key, value in r.items() if not isinstance(value, list)} for r in records]
    table = io.StringIO(newline="")
    if scalars:
        writer = csv.DictWriter(table, fieldnames=list(scalars[0]))
        writer.writeheader()
        writer.writerows(scalars)
    write_atomic(folder / CSV_NAME, table.getvalue())
    return folder / JSON_NAME


def write_comparisons(results_dir: str | Path | None, study: str,
                      grid_files: Sequence[str | Path] | None = None) -> list[Comparison]:
    """``compare`` a study, save the result in ``<results_dir>/<study>/`` (with ``agreement.json`` when the grid
    files give the paper's baseline) and return it."""
    comparisons = compare(results_dir, study, grid_files)
    folder = comparisons_folder(results_dir, study)
    save_comparisons(comparisons, folder)
    paper_baseline = _paper_baseline(grid_files)
    if paper_baseline is not None:
        write_json(folder / AGREEMENT_NAME, agreement(comparisons, paper_baseline))
    return comparisons
