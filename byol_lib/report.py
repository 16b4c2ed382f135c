"""Tables and figures for the notebooks and the report, computed from the registry (``byol_lib.registry``).

Tables are pandas frames; figures are ``matplotlib.figure.Figure`` objects built without pyplot, so nothing here
chooses a backend: a notebook's inline backend embeds them, a script can ``savefig`` them. Accuracies are
percentages, as in the registry and in ``configs/references.yaml``. Seed statistics use the sample standard
deviation (ddof 1; undefined for one seed).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure
from pandas.io.formats.style import Styler

from byol_lib import findings, registry, stats
from byol_lib.export import backbone_layout
from byol_lib.results import git_commit, read_metrics, repo_root
from byol_lib.variants import grid_labels

REFERENCES = repo_root() / "configs" / "references.yaml"
REFERENCE_COLUMNS: dict[str, str] = {
    "group": "str", "variant": "str", "label": "str", "source": "str", "dataset": "str", "backbone": "str",
    "evaluation": "str", "epochs": "Int64", "global_batch": "Int64", "seeds": "Int64", "top1": "float64",
    "top1_std": "float64", "top5": "float64",
}
SETUP = ["evaluation", "knn_k", "variant", "dataset", "backbone", "epochs", "global_batch", "protocol"]
MEASURED = ("pretrain", "linear", "knn", "ablation")  # kinds whose rows are results of this project
NOT_ABLATIONS = (registry.BASELINE, registry.RANDOM_INIT)
PAPER_SOURCE = "Grill"
CURVE_PANELS = (("loss", ("loss", "byol_loss", "classifier_loss")), ("learning rate", ("lr",)), ("tau", ("tau",)),
                ("online-probe top-1 (%)", ("online_accuracy",)), ("collapse monitor: z std", ("z_std",)),
                ("images / s", ("images_per_s",)))
FRACTIONS = ("online_accuracy",)  # logged as fractions, plotted in percent
AUGMENT_ROWS = (("flip", "flip (probability)"), ("color_jitter", "colour jitter (probability)"),
                ("brightness", "  brightness (strength)"), ("contrast", "  contrast (strength)"),
                ("saturation", "  saturation (strength)"), ("hue", "  hue (strength)"),
                ("grayscale", "grayscale (probability)"), ("blur", "Gaussian blur (probability)"),
                ("solarize", "solarise (probability)"))


def show(frame: pd.DataFrame, precision: int = 2) -> Styler:
    """A frame for display: fixed decimals, a dash for missing values, no index."""
    return frame.style.format(precision=precision, na_rep="—").hide(axis="index")


# ---------------------------------------------------------------------------------------------
# Tables


def load_references(path: str | Path | None = None) -> pd.DataFrame:
    """``configs/references.yaml`` as a frame with ``REFERENCE_COLUMNS`` (row defaults and group sources applied)."""
    data = yaml.safe_load(Path(path or REFERENCES).read_text())
    defaults, sources = data.get("defaults", {}), data.get("sources", {})
    rows = [{**defaults, "source": sources.get(row.get("group")), **row} for row in data["references"]]
    return pd.DataFrame([{k: row.get(k) for k in REFERENCE_COLUMNS} for row in rows]).astype(REFERENCE_COLUMNS)


def measured(runs: pd.DataFrame) -> pd.DataFrame:
    """The finished result rows of this project (no notebook or evaluate-only rows, no missing top-1)."""
    keep = runs["kind"].isin(MEASURED) & (runs["status"] == "finished") & runs["top1"].notna()
    return runs[keep]


def seed_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds of every measured setup (``SETUP`` columns), with the number of runs and the seeds."""
    rows = measured(runs)
    columns = [*SETUP, "runs", "seeds", "top1", "top1_std", "top5", "top5_std"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    table = rows.groupby(SETUP, dropna=False, sort=True).agg(
        runs=("run_id", "size"), seeds=("seed", lambda s: ", ".join(str(v) for v in sorted(s.dropna().unique()))),
        top1=("top1", "mean"), top1_std=("top1", "std"), top5=("top5", "mean"), top5_std=("top5", "std"))
    return table.reset_index()[columns]


def _paper_reference(refs: pd.DataFrame, variant: str, epochs: Any) -> pd.Series | None:
    """The paper's headline row for ``variant`` closest in epochs."""
    candidates = refs[(refs["group"] == "headline") & (refs["variant"] == variant)
                      & refs["source"].str.startswith(PAPER_SOURCE)]
    if candidates.empty:
        return None
    target = 0 if pd.isna(epochs) else int(epochs)
    return candidates.loc[(candidates["epochs"].astype(float) - target).abs().idxmin()]


def comparability(row: Mapping[str, Any], ref: Mapping[str, Any]) -> list[str]:
    """Why a measured row is not comparable in absolute terms with a reference row (empty: comparable)."""
    reasons = []
    for key, unit in (("dataset", ""), ("backbone", ""), ("evaluation", ""), ("epochs", " epochs"),
                      ("global_batch", " batch")):
        mine, theirs = row.get(key), ref.get(key)
        if pd.isna(mine) and pd.isna(theirs):
            continue
        if pd.isna(mine) or pd.isna(theirs) or mine != theirs:
            reasons.append(f"{'—' if pd.isna(mine) else mine} vs {'—' if pd.isna(theirs) else theirs}{unit}")
    return reasons


def gap_table(runs: pd.DataFrame, refs: pd.DataFrame) -> pd.DataFrame:
    """The reproduction gap: this project's baseline and random-init setups (mean over seeds), then the headline
    references. A measured row gets a top-1 gap to the paper's number for the same variant and the closest budget
    only when the two are comparable (same dataset, backbone, evaluation, epochs and batch); otherwise they are set
    side by side and the note says why no gap is computed."""
    order = {registry.LINEAR: 0, registry.KNN: 1, registry.ONLINE: 2}
    own = seed_table(runs)
    own = own[own["variant"].isin(NOT_ABLATIONS)]
    own = own.assign(_order=own["evaluation"].map(order)).sort_values(["_order", "knn_k", "variant", "epochs"])
    rows = []
    for _, row in own.iterrows():
        ref = _paper_reference(refs, row["variant"], row["epochs"])
        reasons = comparability(row, ref) if ref is not None else ["no published number for this setup"]
        evaluation = row["evaluation"] + ("" if pd.isna(row["knn_k"]) else f" k={row['knn_k']}")
        rows.append({"result": f"this project ({row['variant']})", "evaluation": evaluation,
                     "dataset": row["dataset"], "backbone": row["backbone"], "epochs": row["epochs"],
                     "global_batch": row["global_batch"], "seeds": row["runs"], "top1": row["top1"],
                     "top1_std": row["top1_std"], "top5": row["top5"],
                     "reference": None if ref is None else ref["label"],
                     "gap_top1": None if ref is None or reasons else row["top1"] - ref["top1"],
                     "note": "comparable" if not reasons else "side by side, not subtracted: " + "; ".join(reasons)})
    for _, ref in refs[refs["group"] == "headline"].iterrows():
        rows.append({"result": ref["label"], "evaluation": ref["evaluation"], "dataset": ref["dataset"],
                     "backbone": ref["backbone"], "epochs": ref["epochs"], "global_batch": ref["global_batch"],
                     "seeds": ref["seeds"], "top1": ref["top1"], "top1_std": ref["top1_std"], "top5": ref["top5"],
                     "reference": None, "gap_top1": None, "note": ref["source"]})
    table = pd.DataFrame(rows).astype({"epochs": "Int64", "global_batch": "Int64", "seeds": "Int64",
                                       "top1": "float64", "top1_std": "float64", "top5": "float64",
                                       "gap_top1": "float64"})
    return top5_where_meaningful(table)


def top5_where_meaningful(frame: pd.DataFrame) -> pd.DataFrame:
    """Top-5 kept only on ImageNet rows (on 10-class data it says little); top-5 columns left empty are dropped."""
    top5 = [c for c in frame.columns if c.startswith("top5")]
    if "dataset" not in frame or not top5:
        return frame
    frame = frame.copy()
    frame.loc[frame["dataset"] != "ImageNet", top5] = np.nan
    return frame.drop(columns=[c for c in top5 if frame[c].isna().all()])


def _sign_agrees(measured: float, paper: float, low: float, high: float) -> Any:
    """Whether a measured delta has the paper's sign (a zero paper delta: whether the interval holds 0)."""
    if pd.isna(measured) or pd.isna(paper):
        return pd.NA
    if paper == 0:
        return pd.NA if pd.isna(low) else bool(low <= 0 <= high)
    return bool(np.sign(measured) == np.sign(paper))


def ablation_table(runs: pd.DataFrame, refs: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Each measured variant against the baseline of the same setup, beside the paper's numbers.

    Per variant: mean ± std of top-1 over its runs (seeds), the delta to the mean of every baseline run of the same
    setup (evaluation, k, dataset, backbone, epochs, protocol; seeds and grids pooled) with a Welch ``confidence``
    interval (``byol_lib.stats``; NaN with fewer than two runs on either side), the paper's top-1 and delta (the
    variant's reference row minus its group's baseline row) and whether the signs agree (for a zero paper delta:
    whether the interval holds 0). ``group`` is the grid that ran the variant, else its reference group; ``label``
    the variant's label in ``configs/ablations``, else its reference row's.
    """
    columns = ["group", "variant", "label", "evaluation", "knn_k", "dataset", "backbone", "epochs", "runs", "seeds",
               "top1", "top1_std", "baseline_top1", "baseline_runs", "measured_delta", "ci_low", "ci_high",
               "paper_top1", "paper_delta", "sign_agrees"]
    rows = measured(runs)
    context = [c for c in SETUP if c not in ("variant", "global_batch")]
    paper = refs[refs["group"] != "headline"]
    paper_baseline = paper[paper["variant"] == registry.BASELINE].set_index("group")["top1"]
    paper = paper[paper["variant"] != registry.BASELINE].drop_duplicates("variant").set_index("variant")
    labels = grid_labels()
    out = []
    for key, group in rows.groupby(context, dropna=False, sort=True):
        setup = dict(zip(context, key, strict=True))
        baseline = group[group["variant"] == registry.BASELINE]["top1"].tolist()
        for variant, own in group[~group["variant"].isin(NOT_ABLATIONS)].groupby("variant", sort=True):
            values = own["top1"].tolist()
            mean, std = stats.mean_std(values)
            diff = stats.welch_interval(values, baseline, confidence) if baseline else None
            ref = paper.loc[variant] if variant in paper.index else None
            grids = own["grid"].dropna().unique()
            paper_delta = math.nan if ref is None else ref["top1"] - paper_baseline.get(ref["group"], math.nan)
            measured_delta = math.nan if diff is None else diff.delta
            low, high = (math.nan, math.nan) if diff is None else (diff.low, diff.high)
            out.append({**setup, "group": grids[0] if len(grids) else (None if ref is None else ref["group"]),
                        "variant": variant, "runs": len(values),
                        "label": labels.get(variant) or (variant if ref is None else ref["label"]),
                        "seeds": ", ".join(str(v) for v in sorted(own["seed"].dropna().unique())), "top1": mean,
                        "top1_std": std, "baseline_top1": stats.mean_std(baseline)[0], "baseline_runs": len(baseline),
                        "measured_delta": measured_delta, "ci_low": low, "ci_high": high,
                        "paper_top1": math.nan if ref is None else ref["top1"], "paper_delta": paper_delta,
                        "sign_agrees": _sign_agrees(measured_delta, paper_delta, low, high)})
    return pd.DataFrame(out, columns=columns).astype(
        {"runs": "Int64", "baseline_runs": "Int64", "epochs": "Int64", "knn_k": "Int64", "sign_agrees": "boolean",
         **{c: "float64" for c in ("top1", "top1_std", "baseline_top1", "measured_delta", "ci_low", "ci_high",
                                    "paper_top1", "paper_delta")}})


def ablation_agreement(table: pd.DataFrame) -> pd.DataFrame:
    """Per grid and setup: how many variants have the paper's sign, and the rank agreement of measured and paper
    deltas over the variants that have both (Spearman's rho, Kendall's tau-b; NaN below two variants)."""
    columns = ["group", "evaluation", "knn_k", "dataset", "backbone", "epochs", "variants", "sign_agrees",
               "spearman", "kendall_tau_b"]
    both = table[table["measured_delta"].notna() & table["paper_delta"].notna()]
    out = []
    keys = columns[:6]
    for key, group in both.groupby(keys, dropna=False, sort=True):
        measured_delta, paper_delta = group["measured_delta"].tolist(), group["paper_delta"].tolist()
        signs = group["sign_agrees"].dropna()
        out.append({**dict(zip(keys, key, strict=True)), "variants": len(group),
                    "sign_agrees": f"{int(signs.sum())} of {len(signs)}",
                    "spearman": stats.spearman(measured_delta, paper_delta),
                    "kendall_tau_b": stats.kendall_tau_b(measured_delta, paper_delta)})
    return pd.DataFrame(out, columns=columns)


def evaluation_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Offline linear and kNN results of every linear run, the random-init baseline beside each."""
    rows = runs[runs["evaluation"].isin((registry.LINEAR, registry.KNN)) & (runs["kind"] != "evaluate")]
    columns = ["run_id", "pretrain_run", "status", "protocol", "evaluation", "knn_k", "variant", "top1", "top5"]
    return rows[columns].sort_values(["run_id", "evaluation", "knn_k", "variant"], ascending=[True, False, True, True])


def environment_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: where and how fast it ran."""
    columns = ["run_id", "kind", "status", "dataset", "backbone", "device", "world_size", "global_batch",
               "images_per_s", "wall_time_s", "paddle_version", "git_commit"]
    return runs[runs["kind"] != registry.NOTEBOOK_KIND].drop_duplicates("run_id")[columns]


def problem_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Every run that did not finish (notebook runs included), with its error."""
    return runs[runs["status"] != "finished"].drop_duplicates("run_id")[["run_id", "kind", "status", "error",
                                                                         "path"]]


def overview(runs: pd.DataFrame) -> str:
    """A markdown paragraph: how many runs of each kind and status, which Paddle versions and commits."""
    if runs.empty:
        return "No runs in the results folder yet: run `notebooks/10_pretrain.ipynb` (or `./run_all.sh`) first."
    per_run = runs.drop_duplicates("run_id")
    counts = per_run.groupby(["kind", "status"], dropna=False).size()
    parts = [f"{n} {kind} ({status})" for (kind, status), n in counts.items()]
    versions = ", ".join(sorted(per_run["paddle_version"].dropna().unique())) or "unknown"
    commits = ", ".join(sorted(per_run["git_commit"].dropna().unique())) or "unknown"
    return (f"**{len(per_run)} runs**: {', '.join(parts)}. Paddle {versions}; git commits {commits}. "
            "Accuracies are top-1/top-5 in percent.")


def curve_runs(runs: pd.DataFrame, limit: int) -> list[str]:
    """Folders of up to ``limit`` finished pretraining runs to plot: main runs (not from an ablation grid), newest
    first, then ablation runs in run-id order (a grid's baseline before its variants' names)."""
    pretraining = runs[(runs["evaluation"] == registry.ONLINE) & (runs["status"] == "finished")]
    in_grid = pretraining["grid"].fillna("") != ""
    main = pretraining[~in_grid].sort_values("run_id", ascending=False)["path"].tolist()
    ablation = pretraining[in_grid]
    ablation = ablation.assign(not_baseline=ablation["variant"] != registry.BASELINE)  # an empty frame stays empty
    ablation_paths = ablation.sort_values(["not_baseline", "run_id"])["path"].tolist()
    return list(dict.fromkeys(main + ablation_paths))[:limit]


def run_overview(folder: str | Path) -> pd.DataFrame:
    """A pretraining run at a glance: status, processes, derived schedule, speed and the last logged figures."""
    summary, cfg = registry.read_run(Path(folder))
    derived = cfg.get("derived", {})
    items = {"status": summary.get("status"), "error": summary.get("error"),
             "processes": f"{summary.get('world_size')} x {summary.get('device')}",
             "global batch": derived.get("global_batch"), "peak lr": derived.get("peak_lr"),
             "steps": derived.get("total_steps"), "warm-up steps": derived.get("warmup_steps"),
             "wall time (s)": summary.get("wall_time_s"), "images / s": summary.get("images_per_s"),
             **{f"last {key}": value for key, value in (summary.get("final") or {}).items()}}
    return pd.DataFrame({"": list(items), "value": list(items.values())})


def augmentation_table(aug: Mapping[str, Any]) -> pd.DataFrame:
    """The augmentation settings in force, per view: probabilities, strengths, crop and blur ranges."""
    shared = [("image size", aug["image_size"]),
              ("random resized crop: area", aug["crop"]["area"]), ("random resized crop: aspect ratio",
                                                                   [round(r, 3) for r in aug["crop"]["ratio"]]),
              ("blur sigma range", aug["blur"]["sigma"])]
    rows = [{"setting": name, "view 1": str(value), "view 2": str(value)} for name, value in shared]
    rows += [{"setting": label, "view 1": aug["view1"][key], "view 2": aug["view2"][key]}
             for key, label in AUGMENT_ROWS]
    return pd.DataFrame(rows)


def conversion_table(extracted: Mapping[str, np.ndarray], converted: Mapping[str, np.ndarray], arch: str,
                     width: int = 64) -> pd.DataFrame:
    """Each backbone tensor's ``paddle.vision`` and PaddleClas names, shape, and whether the values are identical."""
    return pd.DataFrame([{"paddle.vision": source, "PaddleClas": target, "shape": list(shape),
                          "identical": bool(np.array_equal(extracted[source], converted[target]))}
                         for source, target, shape in backbone_layout(arch, width)])


# ---------------------------------------------------------------------------------------------
# Figures


def plot_pretrain_curves(metrics: Sequence[Mapping[str, Any]], out_dim: int | None = None, title: str = "") -> Figure:
    """Loss, lr, tau, online-probe accuracy, the collapse monitor and throughput against the step.

    The z-std panel marks 1/sqrt(out_dim), its value for projections spread evenly over the sphere; 0 is collapse.
    """
    if not metrics:
        raise ValueError("no metrics to plot (metrics.jsonl is empty)")
    frame = pd.DataFrame(list(metrics))
    fig = Figure(figsize=(12, 6.5), layout="constrained")
    for ax, (name, keys) in zip(fig.subplots(2, 3).ravel(), CURVE_PANELS, strict=True):
        for key in keys:
            if key in frame:
                ax.plot(frame["step"], frame[key] * (100.0 if key in FRACTIONS else 1.0), label=key, lw=1.2)
        if name.startswith("collapse") and out_dim:
            ax.axhline(1 / math.sqrt(out_dim), ls="--", color="gray", lw=1, label="1/sqrt(dim): spread")
            ax.axhline(0.0, ls=":", color="red", lw=1, label="0: collapsed")
        if len(ax.get_lines()) > 1:
            ax.legend(fontsize=7)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def plot_run_curves(folder: str | Path) -> Figure | None:
    """``plot_pretrain_curves`` of a pretraining run folder, titled with its run id and figures (None: no metrics)."""
    folder = Path(folder)
    metrics = read_metrics(folder)
    if not metrics:
        return None
    summary, cfg = registry.read_run(folder)
    out_dim = (cfg.get("model", {}).get("neck") or {}).get("out_channels")
    title = (f"{folder.name}: {summary.get('dataset', '?')}, {summary.get('backbone', '?')}, "
             f"{summary.get('epochs', '?')} epochs, global batch {summary.get('global_batch', '?')}, "
             f"{summary.get('world_size', '?')} x {summary.get('device', '?')} ({summary.get('status', '?')})")
    return plot_pretrain_curves(metrics, out_dim, title)


def plot_linear_curves(metrics: Sequence[Mapping[str, Any]], title: str = "") -> Figure:
    """Per-epoch curves of a linear evaluation: one line per learning rate for per-lr figures (the grid's heads and
    any head added beyond its edge, whose epochs are logged after the grid's)."""
    keys = list(dict.fromkeys(k for row in metrics for k in row if k not in ("epoch", "lr", "seconds")))
    if not keys:
        raise ValueError("no per-epoch figures to plot (metrics.jsonl is empty)")
    fig = Figure(figsize=(5 * len(keys), 3.6), layout="constrained")
    for ax, key in zip(np.atleast_1d(fig.subplots(1, len(keys))), keys, strict=True):
        rows = [row for row in metrics if key in row]
        if isinstance(rows[0][key], Mapping):
            for lr in dict.fromkeys(lr for row in rows for lr in row[key]):
                mine = [row for row in rows if lr in row[key]]
                ax.plot([row["epoch"] for row in mine], [row[key][lr] for row in mine], label=f"lr {float(lr):g}",
                        lw=1.2)
            ax.legend(fontsize=7)
        else:
            ax.plot([row["epoch"] for row in rows], [row[key] for row in rows], lw=1.2)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _grouped_bars(ax: Any, categories: Sequence[str], series: Mapping[str, Sequence[float]],
                  errors: Mapping[str, Sequence[float]] | None = None, horizontal: bool = False) -> None:
    width = 0.8 / max(len(series), 1)
    positions = np.arange(len(categories))
    for i, (name, values) in enumerate(series.items()):
        offset = positions + (i - (len(series) - 1) / 2) * width
        err = None if errors is None else np.asarray(errors[name], dtype=float)
        err = None if err is None or np.isnan(err).all() else np.nan_to_num(err)
        if horizontal:
            ax.barh(offset, values, height=width, xerr=err, label=name, capsize=3)
        else:
            ax.bar(offset, values, width=width, yerr=err, label=name, capsize=3)
    if horizontal:
        ax.set_yticks(positions, categories, fontsize=8)
        ax.invert_yaxis()
    else:
        ax.set_xticks(positions, categories, fontsize=8)
    ax.legend(fontsize=8)


def plot_eval_results(runs: pd.DataFrame, max_setups: int = 4) -> Figure | None:
    """Offline linear and kNN top-1 (mean ± std over seeds), pretrained beside the random-init encoder evaluated in
    the same runs, one panel per budget (dataset, backbone, protocol, pretraining epochs); ablation runs left out."""
    table = seed_table(findings.with_budget(findings.main_linear_runs(runs)))
    table = table[table["evaluation"].isin((registry.LINEAR, registry.KNN))]
    if table.empty:
        return None
    setup_keys = ["dataset", "backbone", "protocol", "epochs"]
    setups = list(table.groupby(setup_keys, dropna=False, sort=True))[:max_setups]
    fig = Figure(figsize=(6 * len(setups), 3.8), layout="constrained")
    for ax, (key, group) in zip(np.atleast_1d(fig.subplots(1, len(setups))), setups, strict=True):
        group = group.assign(what=[e if pd.isna(k) else f"{e} k={k}" for e, k in zip(group["evaluation"],
                                                                                      group["knn_k"], strict=True)])
        categories = sorted(group["what"].unique(), key=lambda w: (w.startswith("kNN"), len(w), w))
        series, errors = {}, {}
        for variant, rows in group.groupby("variant", sort=True):
            label = "pretrained (BYOL)" if variant == registry.BASELINE else variant
            by_what = rows.groupby("what")
            series[label] = [by_what["top1"].mean().get(c, np.nan) for c in categories]
            errors[label] = [by_what["top1_std"].mean().get(c, np.nan) for c in categories]
        _grouped_bars(ax, categories, series, errors)
        ax.set_ylabel("top-1 (%)")
        ax.set_title(" / ".join(str(k) for k in key), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    return fig


def plot_throughput(runs: pd.DataFrame) -> Figure | None:
    """Pretraining images/s per run, labelled with its processes and device."""
    rows = runs[(runs["evaluation"] == registry.ONLINE) & runs["images_per_s"].notna()].drop_duplicates("run_id")
    if rows.empty:
        return None
    labels = [f"{r.run_id}\n{r.world_size} x {r.device}, batch {r.global_batch}" for r in rows.itertuples()]
    fig = Figure(figsize=(9, 1.2 + 0.5 * len(labels)), layout="constrained")
    ax = fig.subplots()
    ax.barh(np.arange(len(labels)), rows["images_per_s"], color="tab:green")
    ax.set_yticks(np.arange(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("pretraining images / s (whole run)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_image(image: np.ndarray, title: str = "") -> Figure:
    """One image, no axes."""
    fig = Figure(figsize=(4, 4 * image.shape[0] / image.shape[1]), layout="constrained")
    ax = fig.subplots()
    ax.imshow(image)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return fig


# ---------------------------------------------------------------------------------------------
# Paired comparisons and the noise budget (files written by byol_lib.comparisons and byol_lib.noise)

POWER_COLUMNS = ["label", "n", "sd", "halfwidth", "mde", "verdict", "seeds_for_halfwidth_1", "seeds_for_halfwidth_2",
                 "seeds_for_halfwidth_5"]
PAIRED_COLUMNS = ["variant", "label", "grid", "n", "delta", "ci_low", "ci_high", "bootstrap_low", "bootstrap_high",
                  "sd", "mde", "paper_delta", "verdict", "seeds_for_halfwidth_1", "seeds_for_halfwidth_2",
                  "seeds_for_halfwidth_5"]


def paired_table(records: Sequence[Mapping[str, Any]], columns: Sequence[str] = PAIRED_COLUMNS) -> pd.DataFrame:
    """A study's comparisons (``comparisons.json`` records, ``findings.study_records``) as a table of ``columns``,
    one row per variant: ``POWER_COLUMNS`` gives its resolution (sd, half-width, minimum detectable effect, seeds
    that half-widths of 1, 2 and 5 points would need)."""
    table = pd.DataFrame(list(records), columns=list(columns))
    return table.astype({c: "Int64" for c in columns if c == "n" or c.startswith("seeds_for")})


def agreement_table(results_dir: str | Path, study: str) -> pd.DataFrame:
    """A study's rank and sign agreement with the paper per grid (``<results>/<study>/agreement.json``)."""
    return pd.DataFrame(findings.study_agreement(results_dir, study))


def noise_budget_tables(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``noise_budget.json`` as (one row per pretraining budget, the image noise per budget and validation size)."""
    data = json.loads(Path(path).read_text())
    budgets = pd.DataFrame([{k: v for k, v in b.items() if k not in ("image_noise", "top1_by_seed")}
                            for b in data["budgets"]])
    images = pd.DataFrame([{"epochs": b["epochs"], **row} for b in data["budgets"] for row in b["image_noise"]])
    return budgets, images


def plot_noise_budget(path: str | Path) -> Figure:
    """Left: sd of top-1 by source against the pretraining budget; right: image noise against validation size."""
    budgets, images = noise_budget_tables(path)
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    for column, label in (("single_run_sd", "one run vs another seed"), ("training_sd", "training (seed to seed)"),
                          ("head_sd", "linear head (seed, backbone fixed)"), ("image_sd", "validation images")):
        left.plot(budgets["epochs"], budgets[column], marker="o", label=label)
    left.set_xlabel("pretraining epochs")
    left.set_ylabel("sd of top-1 (points)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    for epochs, rows in images.groupby("epochs"):
        right.plot(rows["images"], rows["binomial_sd"], marker="o", label=f"{epochs} epochs: binomial")
        right.plot(rows["images"], rows["measured_sd"], marker="x", ls="--", label=f"{epochs} epochs: measured")
    right.set_xscale("log")
    right.set_xlabel("validation images")
    right.set_ylabel("image noise of top-1 (points)")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    return fig


# ---------------------------------------------------------------------------------------------
# The report's first screen and its side-by-side study tables (byol_lib.findings computes the numbers)

STUDY_COLUMNS = ["variant", "paper top-1 %", "paper change", "our change", "paired 95% interval", "per-seed changes",
                 "verdict", "same sign as the paper"]


def _same_sign(record: Mapping[str, Any]) -> str:
    paper = record.get("paper_delta")
    if paper is None:
        return "—"
    if not record.get("resolved"):
        return "unresolved"
    return "yes" if np.sign(record["delta"]) == np.sign(paper) else "no"


def study_table(records: Sequence[Mapping[str, Any]], grid: str | None = None) -> pd.DataFrame:
    """One study's comparisons (``comparisons.json`` records) of ``grid`` (all when None) beside the paper's:
    the paper's top-1 and change, ours with its paired interval and each seed's change, the verdict and whether a
    resolved change has the paper's sign. Sorted by our change."""
    rows = [r for r in records if grid is None or r.get("grid") == grid]
    out = [{"variant": r["label"], "paper top-1 %": r.get("paper_top1"), "paper change": r.get("paper_delta"),
            "our change": r.get("delta"),
            "paired 95% interval": findings.interval(*(math.nan if r.get(k) is None else r[k]
                                                       for k in ("ci_low", "ci_high"))),
            "per-seed changes": ", ".join(findings.signed(d) for d in r.get("differences") or []),
            "verdict": "resolved" if r.get("resolved") else "not resolved", "same sign as the paper": _same_sign(r),
            "_resolved": bool(r.get("resolved"))} for r in rows]
    frame = pd.DataFrame(out, columns=[*STUDY_COLUMNS, "_resolved"]).astype(
        {"paper top-1 %": "float64", "paper change": "float64", "our change": "float64"})
    return frame.sort_values("our change", na_position="last").reset_index(drop=True)


def style_study(table: pd.DataFrame) -> Styler:
    """``study_table`` for display: one decimal (two for the paper's), resolved changes in bold, no index."""
    resolved = table["_resolved"].tolist()
    visible = table.drop(columns="_resolved")

    def bold(column: pd.Series) -> list[str]:
        return ["font-weight: bold" if r else "color: #666" for r in resolved]

    return (visible.style.format({"paper top-1 %": "{:.2f}", "paper change": "{:+.2f}", "our change": "{:+.1f}"},
                                 na_rep="—")
            .apply(bold, subset=["our change", "paired 95% interval", "verdict"])
            .set_properties(subset=["variant"], **{"text-align": "left"}).hide(axis="index"))


def plot_study(records: Sequence[Mapping[str, Any]], grid: str | None = None, title: str = "") -> Figure | None:
    """Our change for each variant (dots: one per seed; bar: the mean with its paired 95% interval) beside the
    paper's change (a cross), offline linear top-1 in points, one row per variant."""
    import seaborn as sns

    table = study_table(records, grid)
    rows = [r for r in records if grid is None or r.get("grid") == grid]
    if not rows:
        return None
    order = table["variant"].tolist()
    by_label = {r["label"]: r for r in rows}
    seeds = pd.DataFrame([{"variant": r["label"], "change": d} for r in rows for d in r.get("differences") or []])
    fig = Figure(figsize=(9, 1.0 + 0.42 * len(order)), layout="constrained")
    ax = fig.subplots()
    if not seeds.empty:
        sns.stripplot(data=seeds, x="change", y="variant", order=order, ax=ax, color="tab:blue", alpha=0.45, size=5,
                      jitter=0.12, label="one seed")
    for y, label in enumerate(order):
        r = by_label[label]
        low, high = r.get("ci_low"), r.get("ci_high")
        if low is not None and high is not None:
            ax.plot([low, high], [y, y], color="tab:blue", lw=2.2, label="paired 95% interval" if y == 0 else None)
        ax.plot([r["delta"]], [y], "o", color="tab:blue", ms=8, mec="black",
                label="our change (mean over seeds)" if y == 0 else None)
        if r.get("paper_delta") is not None:
            ax.plot([r["paper_delta"]], [y], "X", color="tab:red", ms=9, label="the paper's change" if y == 0 else None)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_xlabel("offline linear top-1 change vs the baseline of the same seed (points)")
    ax.set_ylabel("")
    ax.grid(axis="x", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="best")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_gains(runs: pd.DataFrame) -> Figure | None:
    """What pretraining bought: BYOL minus the random-init encoder with its 95% interval, per evaluation (offline
    linear first), one panel per budget (``findings.gains``)."""
    found = findings.gains(runs)
    if not found:
        return None
    fig = Figure(figsize=(6 * min(len(found), 2), 0.9 + 0.45 * max(len(g) for g in found.values())),
                 layout="constrained")
    for ax, (setup, gains) in zip(np.atleast_1d(fig.subplots(1, min(len(found), 2))), found.items(), strict=False):
        ys = np.arange(len(gains))
        deltas = np.array([g.delta for g in gains])
        lows = np.array([g.low for g in gains])
        highs = np.array([g.high for g in gains])
        err = np.clip(np.nan_to_num(np.vstack([deltas - lows, highs - deltas])), 0.0, None)
        ax.errorbar(deltas, ys, xerr=err, fmt="o", color="tab:green", capsize=4)
        ax.set_yticks(ys, [f"{g.evaluation}\n{g.byol:.1f}% vs {g.random_init:.1f}%" for g in gains], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_xlabel("BYOL minus random init, top-1 (points)")
        ax.set_title(f"{setup[0]}, {setup[1]}, {setup[2]} epochs", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    return fig


def folded(summary: str, frame: pd.DataFrame | Styler, precision: int = 2) -> str:
    """A table inside a closed ``<details>`` element: raw tables the reader opens when needed."""
    styler = frame if isinstance(frame, Styler) else show(frame, precision)
    return f"<details><summary>{summary}</summary>{styler.to_html()}</details>"


def caveat_box(text: str) -> str:
    """One highlighted box (the report's only caveat)."""
    return f'<div class="byol-caveat"><b>Caveat.</b> {text}</div>'


def header(runs: pd.DataFrame, results_dir: str | Path) -> str:
    """The report's first line: when and from which commit it was generated, over which folder and runs."""
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    per_run = runs.drop_duplicates("run_id")
    finished = int((per_run["status"] == "finished").sum())
    return (f"Generated {now} from git commit `{git_commit()}` over `{results_dir}`: {len(per_run)} runs, "
            f"{finished} finished. Accuracies are top-1 in percent; changes in percentage points.")



def other_evaluations(ablations: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """``ablation_table``'s kNN and online-probe rows, one (title, table) per evaluation and budget."""
    other = ablations[ablations["evaluation"] != registry.LINEAR]
    out = []
    for (evaluation, k, epochs), table in other.groupby(["evaluation", "knn_k", "epochs"], dropna=False, sort=True):
        name = evaluation if pd.isna(k) else f"{evaluation} k={k}"
        budget = "" if pd.isna(epochs) else f", {epochs} epochs"
        out.append((f"{name}{budget}", table[["label", "runs", "top1", "top1_std", "baseline_top1", "measured_delta",
                                              "ci_low", "ci_high"]]))
    return out
