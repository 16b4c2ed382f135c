"""Report tables and figures: references against the reference sheet, seed statistics, gaps, ablation deltas.

Expected numbers are computed here with numpy / plain arithmetic from the inputs, or read from
``shared/byol_reference.md`` (§7) where that sheet sits beside the checkout.
"""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pandas as pd
import pytest

from byol_lib import registry, report, stats
from byol_lib.data.augment import AUGMENT_DEFAULTS
from byol_lib.export import backbone_layout, to_paddleclas

from .conftest import ROOT

REFERENCE_SHEET = ROOT.parent / "shared" / "byol_reference.md"
NUMBER = r"(\d+(?:\.\d+)?)\s*(?:±\s*(\d+(?:\.\d+)?))?"


@pytest.fixture(scope="module")
def refs() -> pd.DataFrame:
    return report.load_references()


def sheet_rows(heading: str) -> list[list[str]]:
    """The cells of the first markdown table after ``heading`` in the reference sheet."""
    if not REFERENCE_SHEET.is_file():
        pytest.skip(f"{REFERENCE_SHEET} is not beside this checkout")
    text = REFERENCE_SHEET.read_text()
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def number(cell: str) -> tuple[float, float | None]:
    match = re.match(NUMBER, cell.replace("**", ""))
    assert match, cell
    return float(match.group(1)), None if match.group(2) is None else float(match.group(2))


def ref_row(refs: pd.DataFrame, group: str, variant: str) -> dict:
    (row,) = refs[(refs["group"] == group) & (refs["variant"] == variant)].to_dict("records")
    return row


def test_references_have_a_source_and_an_evaluation_type(refs: pd.DataFrame) -> None:
    assert list(refs.columns) == list(report.REFERENCE_COLUMNS)
    assert refs["source"].notna().all() and set(refs["evaluation"]) == {"offline linear"}
    assert set(refs["group"]) == {"headline", "augmentation", "tau", "batch", "passl"}
    assert not refs.duplicated(["group", "label"]).any()
    headline = refs[refs["group"] == "headline"].set_index("label")
    assert headline.loc["paper, 300 epochs", ["top1", "top5", "epochs", "seeds"]].tolist() == [72.5, 90.8, 300, 3]
    assert headline.loc["paper, 1000 epochs", ["top1", "top5", "epochs"]].tolist() == [74.3, 91.6, 1000]
    assert headline.loc["PASSL, 300 epochs", "top1"] == 71.62 and pd.isna(headline.loc["PASSL, 300 epochs", "top5"])


def test_augmentation_rows_match_table_17_of_the_reference_sheet(refs: pd.DataFrame) -> None:
    rows = sheet_rows("### 7.3 Augmentation ablation")
    augmentation = refs[refs["group"] == "augmentation"]
    assert len(rows) == len(augmentation)
    for name, byol, _ in rows:
        (mine,) = augmentation[augmentation["label"].str.lower() == name.lower()].to_dict("records")
        top1, std = number(byol)
        top5, _ = number(byol[byol.index("(") + 1:])
        assert (mine["top1"], mine["top5"]) == (top1, top5)
        assert (std is None and pd.isna(mine["top1_std"])) or mine["top1_std"] == std


def test_tau_rows_match_table_5a_and_batch_rows_match_table_16(refs: pd.DataFrame) -> None:
    tau_variant = {"1": "tau_1", "0.999": "tau_0.999", "0.99": "baseline", "0.9": "tau_0.9", "0": "tau_0"}
    tau_rows = sheet_rows("* Tau ablation (300 ep)")
    assert len(tau_rows) == len(refs[refs["group"] == "tau"]) == 5
    for _, tau, top1 in tau_rows:
        mine = ref_row(refs, "tau", tau_variant[tau])
        value, std = number(top1)
        assert mine["top1"] == value and (std is None or mine["top1_std"] == std)
    batch_rows = sheet_rows("### 7.4 Batch-size ablation")
    assert len(batch_rows) == len(refs[refs["group"] == "batch"]) == 7
    for batch, byol1, _, byol5, _ in batch_rows:
        mine = ref_row(refs, "batch", "baseline" if batch == "4096" else f"batch_{batch}")
        assert (mine["global_batch"], mine["top1"], mine["top5"]) == (int(batch), number(byol1)[0], number(byol5)[0])


def runs_table(rows: list[dict]) -> pd.DataFrame:
    base = {"kind": "linear", "status": "finished", "evaluation": "offline linear", "variant": "baseline",
            "dataset": "ImageNet", "backbone": "resnet50", "epochs": 300, "global_batch": 4096, "protocol": "paper"}
    return registry.table([{**base, **row} for row in rows])


def test_seed_table_is_mean_and_sample_std_over_seeds() -> None:
    top1 = [71.0, 72.5, 73.25]
    runs = runs_table([{"run_id": f"r{s}", "seed": s, "top1": t, "top5": 90.0 + s} for s, t in enumerate(top1)]
                      + [{"run_id": "x", "seed": 0, "top1": 50.0, "epochs": 100},
                         {"run_id": "f", "seed": 5, "top1": 1.0, "status": "failed"}])
    table = report.seed_table(runs)
    (row,) = table[table["epochs"] == 300].to_dict("records")
    assert row["runs"] == 3 and row["seeds"] == "0, 1, 2"
    assert row["top1"] == pytest.approx(np.mean(top1)) and row["top1_std"] == pytest.approx(np.std(top1, ddof=1))
    assert row["top5"] == pytest.approx(91.0) and row["top5_std"] == pytest.approx(1.0)
    (single,) = table[table["epochs"] == 100].to_dict("records")
    assert single["runs"] == 1 and math.isnan(single["top1_std"])


def test_gap_table_compares_with_the_paper_and_flags_what_is_not_comparable(refs: pd.DataFrame) -> None:
    runs = runs_table([
        {"run_id": "a", "seed": 0, "top1": 72.0}, {"run_id": "b", "seed": 1, "top1": 71.0},
        {"run_id": "c", "seed": 0, "top1": 74.0, "epochs": 1000},
        {"run_id": "d", "seed": 0, "top1": 30.0, "dataset": "Synthetic", "backbone": "resnet18", "epochs": 20,
         "global_batch": 256},
        {"run_id": "e", "seed": 0, "top1": 20.0, "kind": "pretrain", "evaluation": "online probe",
         "protocol": None},
        {"run_id": "f", "seed": 0, "top1": 2.0, "variant": "random init", "epochs": 0, "global_batch": None},
    ])
    gap = report.gap_table(runs, refs)
    own = gap[gap["result"].str.startswith("this project")].set_index(["evaluation", "epochs", "dataset"])
    at300 = own.loc[("offline linear", 300, "ImageNet")]
    assert at300["seeds"] == 2 and at300["top1"] == pytest.approx(71.5)
    assert at300["gap_top1"] == pytest.approx(71.5 - 72.5) and at300["note"] == "comparable"
    at1000 = own.loc[("offline linear", 1000, "ImageNet")]
    assert at1000["reference"] == "paper, 1000 epochs" and at1000["gap_top1"] == pytest.approx(74.0 - 74.3)
    small = own.loc[("offline linear", 20, "Synthetic")]
    assert pd.isna(small["gap_top1"]) and pd.isna(small["top5"])  # not comparable: no subtraction, no top-5
    assert small["note"] == ("side by side, not subtracted: Synthetic vs ImageNet; resnet18 vs resnet50; "
                             "20 vs 300 epochs; 256 vs 4096 batch")
    online = own.loc[("online probe", 300, "ImageNet")]
    assert online["note"] == "side by side, not subtracted: online probe vs offline linear"
    assert pd.isna(online["gap_top1"])
    random_init = own.loc[("offline linear", 0, "ImageNet")]
    assert random_init["reference"] == "paper, random-init encoder" and random_init["gap_top1"] == pytest.approx(0.6)
    assert random_init["note"] == "comparable"
    published = gap[~gap["result"].str.startswith("this project")]
    assert published["result"].tolist() == refs[refs["group"] == "headline"]["label"].tolist()


def test_ablation_table_puts_measured_beside_paper_deltas(refs: pd.DataFrame) -> None:
    runs = runs_table([
        {"run_id": "b0", "seed": 0, "top1": 60.0}, {"run_id": "b1", "seed": 1, "top1": 62.0},
        {"run_id": "b2", "seed": 2, "top1": 61.5},
        {"run_id": "n0", "seed": 0, "top1": 58.0, "variant": "no_blur", "kind": "ablation", "grid": "augmentations"},
        {"run_id": "n1", "seed": 1, "top1": 57.0, "variant": "no_blur", "kind": "ablation", "grid": "augmentations"},
        {"run_id": "f0", "seed": 0, "top1": 50.0, "variant": "no_flip", "kind": "ablation", "grid": "augmentations"},
        {"run_id": "f1", "seed": 1, "top1": 52.5, "variant": "no_flip", "kind": "ablation", "grid": "augmentations"},
        {"run_id": "c0", "seed": 0, "top1": 45.0, "variant": "crop_only", "kind": "ablation", "grid": "augmentations"},
        {"run_id": "t0", "seed": 0, "top1": 55.0, "variant": "tau_0.9", "kind": "ablation"},
        {"run_id": "z0", "seed": 0, "top1": 40.0, "variant": "my_idea", "kind": "ablation"},
        {"run_id": "d0", "seed": 0, "top1": 30.0, "variant": "d1_frozen_target", "kind": "ablation"},
        {"run_id": "d1", "seed": 0, "top1": 61.0, "variant": "d2_per_tap_blur", "kind": "ablation"},
        {"run_id": "o0", "seed": 0, "top1": 10.0, "variant": "no_blur", "kind": "ablation", "dataset": "Other"},
    ])
    table = report.ablation_table(runs, refs).set_index(["variant", "dataset"])
    no_blur = table.loc[("no_blur", "ImageNet")]
    baseline = [60.0, 62.0, 61.5]
    assert no_blur["runs"] == 2 and no_blur["baseline_runs"] == 3 and no_blur["seeds"] == "0, 1"
    assert no_blur["baseline_top1"] == pytest.approx(np.mean(baseline))
    assert (no_blur["top1"], no_blur["top1_std"]) == pytest.approx((57.5, np.std([58.0, 57.0], ddof=1)))
    assert no_blur["measured_delta"] == pytest.approx(57.5 - np.mean(baseline))
    va, vb = np.var([58.0, 57.0], ddof=1) / 2, np.var(baseline, ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 + vb**2 / 2)
    half = stats.t_quantile(0.975, df) * np.sqrt(va + vb)
    assert (no_blur["ci_low"], no_blur["ci_high"]) == pytest.approx((no_blur["measured_delta"] - half,
                                                                      no_blur["measured_delta"] + half))
    assert no_blur["paper_delta"] == pytest.approx(71.2 - 72.5) and no_blur["label"] == "remove blur"
    assert no_blur["paper_top1"] == 71.2 and no_blur["sign_agrees"] and no_blur["group"] == "augmentations"
    tau = table.loc[("tau_0.9", "ImageNet")]
    assert tau["paper_delta"] == pytest.approx(68.4 - 72.5) and tau["group"] == "tau"
    assert math.isnan(tau["ci_low"]) and tau["measured_delta"] == pytest.approx(55.0 - np.mean(baseline))
    assert table.loc[("my_idea", "ImageNet"), "label"] == "my_idea"
    assert math.isnan(table.loc[("my_idea", "ImageNet"), "paper_delta"])
    assert pd.isna(table.loc[("my_idea", "ImageNet"), "sign_agrees"])
    assert math.isnan(table.loc[("no_blur", "Other"), "measured_delta"])  # no baseline in that setup
    assert table.loc[("d1_frozen_target", "ImageNet"), "paper_delta"] == pytest.approx(18.8 - 72.5)

    agreement = report.ablation_agreement(table.reset_index()).set_index("group")
    assert sorted(agreement.index) == ["augmentations", "passl", "tau"]
    augmentations = agreement.loc["augmentations"]
    # measured: no_blur -3.67, no_flip -10.08, crop_only -16.17; paper: -1.3, -0.6, -13.1 (no_blur, no_flip swap)
    assert augmentations["variants"] == 3 and augmentations["sign_agrees"] == "3 of 3"
    assert augmentations["spearman"] == pytest.approx(1 - 6 * (0 + 1 + 1) / (3 * 8))
    assert augmentations["kendall_tau_b"] == pytest.approx((2 - 1) / 3)
    assert math.isnan(agreement.loc["tau", "spearman"])  # one variant: no ordering
    assert table.loc[("d2_per_tap_blur", "ImageNet"), "label"] == "D2: one blur sigma per tap"  # the grid's label


def test_conversion_table_checks_every_tensor() -> None:
    rng = np.random.default_rng(0)
    state = {source: rng.standard_normal(shape).astype(np.float32) for source, _, shape in backbone_layout("res18", 8)}
    converted = to_paddleclas(state, "res18", 8)
    table = report.conversion_table(state, converted, "res18", 8)
    assert len(table) == len(state) and table["identical"].all()
    assert table.iloc[0].tolist() == ["conv1.weight", "stem.0.conv.weight", [8, 3, 7, 7], True]
    converted["blocks.0.conv0.conv.weight"] = converted["blocks.0.conv0.conv.weight"] + 1
    assert report.conversion_table(state, converted, "res18", 8)["identical"].sum() == len(state) - 1


def test_augmentation_table_lists_the_settings_in_force() -> None:
    aug = copy.deepcopy(AUGMENT_DEFAULTS)
    aug["view2"]["solarize"] = 0.5
    table = report.augmentation_table(aug).set_index("setting")
    for key, label in report.AUGMENT_ROWS:
        assert table.loc[label].tolist() == [aug["view1"][key], aug["view2"][key]]
    assert table.loc["solarise (probability)"].tolist() == [0.0, 0.5]
    assert table.loc["random resized crop: area", "view 1"] == "[0.08, 1.0]"


def test_curve_figures() -> None:
    rows = [{"step": s, "epoch": s / 4, "loss": 4.0 - s / 10, "byol_loss": 3.0, "classifier_loss": 1.0, "lr": 0.1,
             "tau": 0.99, "online_accuracy": 0.1, "z_std": 0.05, "images_per_s": 100.0} for s in range(1, 6)]
    fig = report.plot_pretrain_curves(rows, out_dim=256, title="t")
    axes = fig.get_axes()
    assert len(axes) == 6 and [len(ax.get_lines()) for ax in axes] == [3, 1, 1, 1, 3, 1]
    spread = axes[4].get_lines()[1]
    assert spread.get_ydata()[0] == pytest.approx(1 / 16)
    with pytest.raises(ValueError, match="no metrics"):
        report.plot_pretrain_curves([])
    linear = [{"epoch": e, "lr": {"0.1": 0.1}, "train_loss": {"0.1": 2.0, "0.2": 1.9}, "test_top1": 0.3,
               "seconds": 0.1} for e in (1, 2)]
    fig = report.plot_linear_curves(linear)
    assert [len(ax.get_lines()) for ax in fig.get_axes()] == [2, 1]


def test_curve_runs_put_main_runs_first_then_ablation_baselines() -> None:
    base = {"kind": "pretrain", "evaluation": registry.ONLINE, "dataset": "Synthetic"}
    rows = [
        {"run_id": "default-ablation-crop_only-pretrain-s0", "variant": "crop_only", "grid": "augmentations"},
        {"run_id": "default-ablation-baseline-pretrain-s1", "variant": "baseline", "grid": "augmentations"},
        {"run_id": "default-ablation-baseline-pretrain-s0", "variant": "baseline", "grid": "augmentations"},
        {"run_id": "default-pretrain-s0", "variant": "baseline", "grid": None},
        {"run_id": "default-pretrain-s1", "variant": "baseline", "grid": None},
        {"run_id": "default-pretrain-s2", "variant": "baseline", "grid": None, "status": "failed"},
    ]
    runs = runs_table([{**base, **row, "path": row["run_id"]} for row in rows])
    assert report.curve_runs(runs, 4) == ["default-pretrain-s1", "default-pretrain-s0",
                                          "default-ablation-baseline-pretrain-s0",
                                          "default-ablation-baseline-pretrain-s1"]
    assert report.curve_runs(runs, 1) == ["default-pretrain-s1"]
    assert report.curve_runs(runs[runs["status"] == "failed"], 3) == []
