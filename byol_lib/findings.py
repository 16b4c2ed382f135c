"""The report's findings: sentences computed from a results folder, the most important first.

Each finding is one bullet of the report's first screen: whether BYOL beats a random-init encoder here (offline
linear, then kNN, each with a 95% interval), which augmentations matter and whether that agrees with the paper's
Table 17, what PASSL's deviations cost, how much the study resolves, and what the evaluation itself warns about
(a held-out learning rate at the edge of its grid, runs that did not finish). Only comparable numbers are set
against each other: a pretrained run and the random-init encoder evaluated in the same linear run, a variant and
the baseline of the same seed in one study (``byol_lib.comparisons``).

The interval of "BYOL vs random init" is a paired t interval over seeds when there are two or more, else a
bootstrap over the validation images of the one run (both encoders are evaluated on the same images): it then
holds evaluation noise only, and the finding says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from byol_lib import registry, stats
from byol_lib.comparisons import AGREEMENT_NAME, JSON_NAME
from byol_lib.linear import PREDICTIONS, RANDOM_INIT_PREFIX

CONFIDENCE = 0.95
AUGMENTATIONS, DEVIATIONS = "augmentations", "passl_deviations"
PASSL_RECIPE = "passl_head_with_ema"  # PASSL's recipe with its EMA hook: where the published 71.62 comes from
PAPER_GAP = (71.62, 72.5)  # PASSL's published top-1 and the paper's (ImageNet, ResNet-50, 300 epochs)
GAIN_TOPIC = "BYOL vs random init"


@dataclass(frozen=True)
class Finding:
    """One statement of the report: its topic and its markdown text; ``warning`` ones come first."""

    topic: str
    text: str
    warning: bool = False


@dataclass(frozen=True)
class Gain:
    """What pretraining bought in one evaluation: BYOL's and the random-init encoder's top-1 (percent, mean over
    seeds) and the difference with its 95% interval, ``over`` saying what the interval resamples."""

    evaluation: str
    byol: float
    random_init: float
    delta: float
    low: float
    high: float
    seeds: int
    over: str

    @property
    def resolved(self) -> bool:
        return bool(self.low > 0 or self.high < 0)


def signed(value: float, digits: int = 1) -> str:
    """``+1.2`` / ``-3.4`` with a real minus sign; a dash for NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.{digits}f}".replace("-", "−")


def interval(low: float, high: float) -> str:
    """``[−1.2, +3.4]``; "no interval" when either end is missing."""
    if any(v is None or math.isnan(v) for v in (low, high)):
        return "no interval"
    return f"[{signed(low)}, {signed(high)}]"


# ---------------------------------------------------------------------------------------------
# BYOL against the random-init encoder


def main_linear_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows of finished linear runs outside any ablation study that evaluated a random-init encoder beside
    the pretrained one (one run gives both, on the same images)."""
    rows = runs[(runs["kind"].isin(("linear", "knn"))) & (runs["status"] == "finished") & runs["top1"].notna()
                & (runs["grid"].fillna("") == "")]
    with_random = set(rows.loc[rows["variant"] == registry.RANDOM_INIT, "run_id"])
    return rows[rows["run_id"].isin(with_random)]


def with_budget(rows: pd.DataFrame) -> pd.DataFrame:
    """The pretrained rows' budget (dataset, backbone, epochs, protocol) attached to every row of their run."""
    pretrained = rows[rows["variant"] == registry.BASELINE].drop_duplicates("run_id").set_index("run_id")
    keys = ["dataset", "backbone", "epochs", "protocol"]
    return rows.drop(columns=keys).join(pretrained[keys], on="run_id")


def _image_correctness(folder: str, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(pretrained, random-init) per-image correctness of one evaluation in a linear run's predictions file."""
    path = Path(folder) / PREDICTIONS
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as saved:
        if key not in saved or RANDOM_INIT_PREFIX + key not in saved:
            return None
        labels = saved["labels"]
        return saved[key] == labels, saved[RANDOM_INIT_PREFIX + key] == labels


def gains(runs: pd.DataFrame) -> dict[tuple[Any, ...], list[Gain]]:
    """Per budget (dataset, backbone, epochs, protocol): BYOL vs random init for the offline linear head, then
    each kNN k; see the module docstring for the interval."""
    rows = with_budget(main_linear_runs(runs))
    out: dict[tuple[Any, ...], list[Gain]] = {}
    for setup, group in rows.groupby(["dataset", "backbone", "epochs", "protocol"], dropna=False, sort=True):
        found = []
        for (evaluation, k), same in group.groupby(["evaluation", "knn_k"], dropna=False, sort=False):
            pivot = same.pivot_table(index="run_id", columns="variant", values="top1", aggfunc="first").dropna()
            if pivot.empty or registry.BASELINE not in pivot or registry.RANDOM_INIT not in pivot:
                continue
            byol, random = pivot[registry.BASELINE].tolist(), pivot[registry.RANDOM_INIT].tolist()
            name = evaluation if pd.isna(k) else f"kNN k={int(k)}"
            if len(byol) >= 2:
                diff = stats.paired_interval(byol, random, CONFIDENCE)
                low, high, over = diff.low, diff.high, f"{len(byol)} seeds (paired t)"
            else:
                key = "linear" if pd.isna(k) else f"knn_k{int(k)}"
                correct = _image_correctness(same["path"].iloc[0], key)
                low = high = math.nan
                over = "no interval (predictions not saved)"
                if correct is not None:
                    _, low, high = stats.paired_bootstrap(correct[0][None], correct[1][None], confidence=CONFIDENCE)
                    over = f"{correct[0].size} validation images, one seed"
            found.append(Gain(name, float(np.mean(byol)), float(np.mean(random)),
                              float(np.mean(byol) - np.mean(random)), low, high, len(byol), over))
        found.sort(key=lambda g: (g.evaluation != registry.LINEAR, len(g.evaluation), g.evaluation))
        if found:
            out[setup] = found
    return out


def gain_table(runs: pd.DataFrame) -> pd.DataFrame:
    """``gains`` as a table, one row per budget and evaluation (offline linear first)."""
    columns = ["dataset", "backbone", "epochs", "protocol", "evaluation", "BYOL %", "random init %", "change",
               "95% interval", "seeds", "interval over"]
    rows = [{**dict(zip(columns[:4], setup, strict=True)), "evaluation": g.evaluation, "BYOL %": g.byol,
             "random init %": g.random_init, "change": g.delta, "95% interval": interval(g.low, g.high),
             "seeds": g.seeds, "interval over": g.over} for setup, found in gains(runs).items() for g in found]
    return pd.DataFrame(rows, columns=columns)


def _budget(setup: Sequence[Any]) -> str:
    dataset, backbone, epochs, _ = setup
    return f"{dataset}, {backbone}, {epochs} epochs"


def _gain_findings(runs: pd.DataFrame, training_sd: float | None) -> list[Finding]:
    out = []
    for setup, found in gains(runs).items():
        linear = next((g for g in found if g.evaluation == registry.LINEAR), None)
        knn = "; ".join(f"{g.evaluation.removeprefix('kNN ')} {g.byol:.1f}% vs {g.random_init:.1f}% "
                        f"({signed(g.delta)}, {interval(g.low, g.high)})" for g in found if g is not linear)
        if linear is None:
            continue
        one_seed = linear.seeds == 1
        noise = (f"; one seed: the interval holds the validation images' noise only, and one run against another "
                 f"seed varies by about {training_sd:.0f} points at this preset (noise budget)"
                 if one_seed and training_sd else "; one seed: seed-to-seed training noise is not in it"
                 if one_seed else "")
        spread = (f"95% interval {interval(linear.low, linear.high)} over {linear.over}"
                  if not math.isnan(linear.low) else linear.over)
        numbers = f"{linear.byol:.1f}% vs {linear.random_init:.1f}%, {signed(linear.delta)} points, {spread}{noise}"
        tail = f". kNN: {knn}." if knn else "."
        if linear.delta <= 0 or linear.high <= 0:
            out.append(Finding(GAIN_TOPIC, f"**BYOL does not beat a random-init encoder here** "
                               f"({_budget(setup)}; offline linear, the paper's measure): {numbers}{tail} "
                               "Pretraining bought nothing measurable on this setting.", warning=True))
        elif linear.resolved:
            out.append(Finding(GAIN_TOPIC, f"**BYOL beats a random-init encoder** ({_budget(setup)}; "
                               f"offline linear, the paper's measure): {numbers}{tail}"))
        elif math.isnan(linear.low):
            out.append(Finding(GAIN_TOPIC, f"**BYOL scores above a random-init encoder, without an "
                               f"interval** ({_budget(setup)}; offline linear): {numbers}{tail}", warning=True))
        else:
            out.append(Finding(GAIN_TOPIC, f"**BYOL is not distinguishable from a random-init encoder** "
                               f"({_budget(setup)}; offline linear): {numbers}{tail}", warning=True))
    return out


# ---------------------------------------------------------------------------------------------
# The paired study: augmentations, PASSL deviations, resolution


def study_records(results_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Each study's comparison records (``<results>/<study>/comparisons.json``), by study name."""
    return {path.parent.name: json.loads(path.read_text())
            for path in sorted(Path(results_dir).glob(f"*/{JSON_NAME}"))}


def study_agreement(results_dir: str | Path, study: str) -> list[dict[str, Any]]:
    path = Path(results_dir) / study / AGREEMENT_NAME
    return json.loads(path.read_text()) if path.is_file() else []


def _change(record: Mapping[str, Any]) -> str:
    half = record.get("halfwidth")
    spread = "" if half is None else f" ± {half:.1f}"
    return f"{record['label']} {signed(record['delta'])}{spread}"


def _augmentation_finding(study: str, records: Sequence[Mapping[str, Any]],
                          agreement: Sequence[Mapping[str, Any]]) -> Finding | None:
    rows = [r for r in records if r.get("grid") == AUGMENTATIONS and r.get("delta") is not None]
    if not rows:
        return None
    resolved = sorted((r for r in rows if r["resolved"]), key=lambda r: r["delta"])
    unresolved = [r for r in rows if not r["resolved"]]
    parts = []
    if resolved:
        parts.append("resolved changes (points, paired 95% interval): "
                     + "; ".join(f"{_change(r)} (paper {signed(r['paper_delta'])})" if r.get("paper_delta")
                                 is not None else _change(r) for r in resolved))
    else:
        parts.append("no augmentation change is resolved")
    if unresolved:
        mdes = [r["mde"] for r in unresolved if r.get("mde") is not None]
        below = f": effects below {min(mdes):.0f}–{max(mdes):.0f} points cannot be told from noise" if mdes else ""
        parts.append(f"{len(unresolved)} not resolved ({', '.join(r['label'] for r in unresolved)}){below}")
    grid = next((a for a in agreement if a.get("grid") == AUGMENTATIONS), None)
    if grid is not None:
        parts.append(f"agreement with the paper's Table 17 over {grid['rows']} rows: {grid['sign_agrees']} resolved "
                     f"signs agree, {grid['sign_disagrees']} disagree; Spearman {signed(grid['spearman'], 2)} (95% "
                     f"bootstrap {signed(grid['spearman_low'], 2)} … {signed(grid['spearman_high'], 2)}), Kendall "
                     f"{signed(grid['kendall_tau_b'], 2)}")
    seeds = max(r["n"] for r in rows)
    return Finding("Augmentations", f"**Which augmentations matter** (study `{study}`, {seeds} seeds): "
                   + "; ".join(parts) + ".")


def _deviation_finding(study: str, records: Sequence[Mapping[str, Any]]) -> Finding | None:
    rows = {r["variant"]: r for r in records if r.get("grid") == DEVIATIONS and r.get("delta") is not None}
    if not rows:
        return None
    passl, paper = PAPER_GAP
    parts = []
    recipe = rows.pop(PASSL_RECIPE, None)
    if recipe is not None:
        verdict = ("resolved" if recipe["resolved"] else
                   f"not resolved: effects below {recipe['mde']:.0f} points cannot be told from noise with "
                   f"{recipe['n']} seeds" if recipe.get("mde") is not None else "not resolved")
        parts.append(f"PASSL's recipe with its EMA hook against the faithful baseline, this benchmark's analogue of "
                     f"{passl} vs {paper}: {signed(recipe['delta'])} points, paired 95% interval "
                     f"{interval(recipe['ci_low'], recipe['ci_high'])} ({verdict}); the published gap is "
                     f"{signed(passl - paper, 2)} points")
    if rows:
        parts.append("each deviation alone: " + "; ".join(
            f"{_change(r)}{'' if r['resolved'] else ' (not resolved)'}"
            for r in sorted(rows.values(), key=lambda r: r["delta"])))
    return Finding("PASSL deviations", f"**What PASSL's deviations cost** (study `{study}`): " + "; ".join(parts)
                   + ".")


def _resolution_finding(study: str, records: Sequence[Mapping[str, Any]]) -> Finding | None:
    rows = [r for r in records if r.get("halfwidth") is not None]
    if not rows:
        return None
    resolved = sum(bool(r["resolved"]) for r in rows)
    halves = [r["halfwidth"] for r in rows]
    need = [r["seeds_for_halfwidth_2"] for r in rows]
    known = [n for n in need if n is not None]
    seeds = max(r["n"] for r in rows)
    cost = (f"; ±2 points for every change would need up to {max(known)} seeds per variant" if known
            and len(known) == len(need) else "; ±2 points for some changes would need more than 1,000 seeds")
    text = (f"**Resolution** (study `{study}`): {resolved} of {len(rows)} changes resolved with {seeds} seeds; "
            f"paired 95% half-widths {min(halves):.1f} … {max(halves):.1f} points{cost}. A 0.9-point effect (PASSL "
            "vs the paper) is resolved only where a half-width is below 0.9.")
    return Finding("Resolution", text, warning=max(halves) > 2.0)


# ---------------------------------------------------------------------------------------------
# Warnings about the evaluation and the runs


def grid_edges(runs: pd.DataFrame) -> list[tuple[str, float, float, float]]:
    """Finished linear runs whose held-out learning rate is the smallest or largest tried:
    (run id, chosen lr, smallest, largest)."""
    out = []
    rows = runs[(runs["kind"].isin(("linear", "ablation"))) & (runs["evaluation"] == registry.LINEAR)
                & (runs["status"] == "finished")].drop_duplicates("run_id")
    for row in rows.itertuples():
        try:
            summary = json.loads((Path(row.path) / "summary.json").read_text())
        except (OSError, ValueError):
            continue
        tried = [float(lr) for lr in summary.get("holdout_top1") or {}]
        chosen = summary.get("chosen_lr")
        if len(tried) >= 2 and chosen is not None and float(chosen) in (min(tried), max(tried)):
            out.append((row.run_id, float(chosen), min(tried), max(tried)))
    return out


def _edge_finding(runs: pd.DataFrame) -> Finding | None:
    edges = grid_edges(runs)
    if not edges:
        return None
    shown = ", ".join(f"`{run}` (lr {lr:g} of {low:g} … {high:g})" for run, lr, low, high in edges[:3])
    more = f" and {len(edges) - 3} more" if len(edges) > 3 else ""
    return Finding("Evaluation", f"**The held-out learning rate is at the edge of its grid** in {len(edges)} linear "
                   f"run(s): {shown}{more}. Their top-1 may be understated: extend the grid (`linear_eval.lr_grid`, "
                   "or more steps with `linear_eval.extend_grid`).", warning=True)


def _failure_finding(runs: pd.DataFrame) -> Finding | None:
    failed = runs[runs["status"] != "finished"].drop_duplicates("run_id")
    if failed.empty:
        return None
    statuses = ", ".join(f"{n} {status}" for status, n in failed["status"].value_counts().items())
    return Finding("Runs", f"**{len(failed)} run(s) did not finish** ({statuses}); their numbers are left out. "
                   "See \"Runs that did not finish\".", warning=True)


def training_sd(results_dir: str | Path) -> float | None:
    """The noise budget's single-run sd at its smallest budget, if ``byol noise-budget`` has run."""
    path = Path(results_dir) / "noise-budget" / "noise_budget.json"
    if not path.is_file():
        return None
    budgets = json.loads(path.read_text()).get("budgets") or []
    values = [b.get("single_run_sd") for b in sorted(budgets, key=lambda b: b.get("epochs", 0))]
    return next((float(v) for v in values if v is not None), None)


def collect(runs: pd.DataFrame, results_dir: str | Path) -> list[Finding]:
    """Every finding for a results folder: BYOL vs random init first, then warnings, then the rest (a run set
    without a study or a main run gives fewer)."""
    found: list[Finding | None] = [*_gain_findings(runs, training_sd(results_dir))]
    for study, records in study_records(results_dir).items():
        found += [_augmentation_finding(study, records, study_agreement(results_dir, study)),
                  _deviation_finding(study, records), _resolution_finding(study, records)]
    found += [_edge_finding(runs), _failure_finding(runs)]
    kept = [f for f in found if f is not None]
    return sorted(kept, key=lambda f: (f.topic != GAIN_TOPIC, not f.warning))


def markdown(findings: Sequence[Finding]) -> str:
    """The findings as a markdown list (a sentence saying so when there are none)."""
    if not findings:
        return ("No finding yet: the results folder holds no finished linear evaluation with a random-init baseline "
                "and no paired study. Run `./run_all.sh` (or `byol reproduce`).")
    return "\n".join(f"- {'⚠ ' if f.warning else ''}{f.text}" for f in findings)


def caveat(runs: pd.DataFrame) -> str | None:
    """What the numbers are measured on, when it is not ImageNet: sizes do not transfer, signs and orderings might."""
    pretraining = runs[(runs["kind"] == "pretrain") & (runs["status"] == "finished")].drop_duplicates("run_id")
    if pretraining.empty or (pretraining["dataset"] == "ImageNet").all():
        return None
    described = set()
    for path in pretraining["path"]:
        try:
            _, cfg = registry.read_run(Path(path))
        except (OSError, ValueError):
            continue
        data, model = cfg.get("dataloader", {}).get("train", {}).get("dataset", {}), cfg.get("model", {})
        backbone = model.get("backbone", {})
        size = (cfg.get("augmentation") or {}).get("image_size")
        images = (cfg.get("derived") or {}).get("num_images") or data.get("num_images") or None
        described.add(f"{'' if images is None else f'{images:,}-image, '}{'' if size is None else f'{size}-pixel '}"
                      f"{data.get('name', '?')} data with a width-{backbone.get('width', '?')} "
                      f"ResNet-{backbone.get('depth', '?')}")
    what = "; ".join(sorted(described)) or "a small setting"
    return (f"These runs are on {what}, not ImageNet with a ResNet-50: sizes of effects do not transfer to "
            "ImageNet; signs and orderings might. Compare them with the paper's, not the numbers.")
