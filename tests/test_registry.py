"""The results registry: one typed row per (run, evaluation) from summary.json + config.yaml, failures kept.

Run folders are written here by hand in the formats train.py and linear.py write; expected values are computed
from those inputs (fractions x 100), not by the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from byol_lib import registry
from byol_lib.config import load_config
from byol_lib.results import config_hash

from .conftest import TINY_CONFIG

PRETRAIN_ID = "20260101-000000-pretrain-aaaa0000"
LINEAR_ID = "20260101-010000-linear-bbbb0000"


def write_run(results: Path, run_id: str, summary: dict[str, Any], cfg: dict[str, Any] | None = None) -> Path:
    folder = results / run_id
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"run_id": run_id, **summary}))
    if cfg is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    return folder


def pretrain_summary(**extra: Any) -> dict[str, Any]:
    return {"kind": "pretrain", "status": "finished", "world_size": 2, "device": "cpu", "paddle_version": "3.3.1",
            "git_commit": "abc1234", "epochs": 20, "global_batch": 256, "seed": 3, "dataset": "Synthetic",
            "backbone": "resnet18", "wall_time_s": 900.0, "images_per_s": 111.5,
            "final": {"online_accuracy": 0.4375, "z_std": 0.05}, **extra}


def linear_summary(pretrained: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "linear", "status": "finished", "world_size": 1, "device": "cpu", "pretrained": pretrained,
            "dataset": "Synthetic", "backbone": "resnet18", "seed": 7, "paddle_version": "3.3.1",
            "git_commit": "abc1234", "evaluation": "offline linear", "protocol": "paper", "top1": 0.5, "top5": 0.875,
            "knn_top1_k200": 0.25, "knn_top1_k20": 0.375, "wall_time_s": 60.0,
            "random_init": {"top1": 0.125, "top5": 0.5, "knn_top1_k20": 0.0625, "knn_top1_k200": 0.1}, **extra}


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    folder = tmp_path / "results"
    pretrain = write_run(folder, PRETRAIN_ID, pretrain_summary())
    write_run(folder, LINEAR_ID, linear_summary(str(pretrain / "checkpoints" / "step_00000100.pdckpt")))
    return folder


def test_schema_is_fixed_with_and_without_runs(results: Path, tmp_path: Path) -> None:
    for frame in (registry.load_runs(results), registry.load_runs(tmp_path / "nothing-here")):
        assert list(frame.columns) == list(registry.COLUMNS)
        assert {name: str(dtype) for name, dtype in frame.dtypes.items()} == registry.COLUMNS


def test_pretraining_run_gives_an_online_probe_row(results: Path) -> None:
    runs = registry.load_runs(results)
    (row,) = runs[runs["run_id"] == PRETRAIN_ID].to_dict("records")
    assert row["kind"] == "pretrain" and row["evaluation"] == "online probe" and row["variant"] == "baseline"
    assert row["top1"] == pytest.approx(43.75) and pd.isna(row["top5"])
    assert (row["epochs"], row["global_batch"], row["seed"], row["world_size"]) == (20, 256, 3, 2)
    assert (row["images_per_s"], row["wall_time_s"], row["device"]) == (111.5, 900.0, "cpu")
    assert (row["paddle_version"], row["git_commit"], row["status"]) == ("3.3.1", "abc1234", "finished")


def test_linear_run_gives_linear_knn_and_random_init_rows_linked_to_its_pretraining(results: Path) -> None:
    runs = registry.load_runs(results)
    rows = runs[runs["run_id"] == LINEAR_ID]
    got = [(r["kind"], r["evaluation"], r["variant"], None if pd.isna(r["knn_k"]) else int(r["knn_k"]), r["top1"],
            None if pd.isna(r["top5"]) else r["top5"]) for r in rows.to_dict("records")]
    assert got == [("linear", "offline linear", "baseline", None, 50.0, 87.5),
                   ("knn", "kNN", "baseline", 20, 37.5, None), ("knn", "kNN", "baseline", 200, 25.0, None),
                   ("linear", "offline linear", "random init", None, 12.5, 50.0),
                   ("knn", "kNN", "random init", 20, 6.25, None), ("knn", "kNN", "random init", 200, 10.0, None)]
    trained = rows[rows["variant"] == "baseline"]
    assert set(trained["pretrain_run"]) == {PRETRAIN_ID} and set(trained["protocol"]) == {"paper"}
    assert set(trained["epochs"]) == {20} and set(trained["global_batch"]) == {256} and set(trained["seed"]) == {3}
    untrained = rows[rows["variant"] == "random init"]
    assert set(untrained["epochs"]) == {0} and untrained["global_batch"].isna().all()
    assert untrained["pretrain_run"].isna().all() and set(untrained["seed"]) == {7}


def test_variant_marks_ablation_rows_and_is_inherited_by_linear_runs(tmp_path: Path) -> None:
    pretrain = write_run(tmp_path, PRETRAIN_ID, pretrain_summary(variant="no_blur"))
    write_run(tmp_path, LINEAR_ID, linear_summary(str(pretrain / "export" / "backbone.pdparams")))
    runs = registry.load_runs(tmp_path)
    trained = runs[runs["variant"] == "no_blur"]
    assert len(trained) == 4 and set(trained["kind"]) == {"ablation"}
    assert set(runs[runs["variant"] == "random init"]["kind"]) == {"linear", "knn"}


def test_failed_run_keeps_its_row_with_figures_from_the_config(tmp_path: Path) -> None:
    cfg = {"epochs": 300, "seed": 1, "model": {"backbone": {"depth": 50}}, "derived": {"global_batch": 4096},
           "dataloader": {"train": {"dataset": {"name": "ImageNet"}}}}
    write_run(tmp_path, PRETRAIN_ID, {"kind": "pretrain", "status": "failed", "error": "NonFiniteLossError: nan",
                                      "world_size": 8, "device": "gpu:0"}, cfg)
    (row,) = registry.load_runs(tmp_path).to_dict("records")
    assert (row["status"], row["error"]) == ("failed", "NonFiniteLossError: nan")
    assert (row["epochs"], row["global_batch"], row["seed"], row["dataset"], row["backbone"]) == (
        300, 4096, 1, "ImageNet", "resnet50")
    assert pd.isna(row["top1"])


def test_random_pretrained_linear_run_and_evaluate_only_run(tmp_path: Path) -> None:
    summary = linear_summary("random")
    del summary["random_init"]
    write_run(tmp_path, LINEAR_ID, summary)
    write_run(tmp_path, "20260101-020000-evaluate-cccc0000",
              {"kind": "evaluate", "status": "finished", "pretrained": "x/classifier.pdparams", "top1": 0.5,
               "top5": 0.75})
    runs = registry.load_runs(tmp_path)
    assert set(runs[runs["run_id"] == LINEAR_ID]["variant"]) == {"random init"}
    (evaluated,) = runs[runs["kind"] == "evaluate"].to_dict("records")
    assert (evaluated["evaluation"], evaluated["top1"], evaluated["top5"]) == ("offline linear", 50.0, 75.0)


def test_notebook_and_unreadable_runs_are_not_dropped(tmp_path: Path) -> None:
    write_run(tmp_path, "20260101-000000-notebook-dddd0000",
              {"kind": "notebook", "status": "failed", "error": "ValueError: boom (cell 3)"})
    broken = tmp_path / "20260101-000001-pretrain-eeee0000"
    broken.mkdir()
    (broken / "summary.json").write_text("{not json")
    runs = registry.load_runs(tmp_path).set_index("run_id")
    assert runs.loc["20260101-000000-notebook-dddd0000", "status"] == "failed"
    assert runs.loc["20260101-000000-notebook-dddd0000", "error"] == "ValueError: boom (cell 3)"
    assert runs.loc["20260101-000001-pretrain-eeee0000", "status"] == "unreadable"
    assert "JSONDecodeError" in runs.loc["20260101-000001-pretrain-eeee0000", "error"]


def test_find_run_and_resolve_weights(tmp_path: Path) -> None:
    cfg = {"model": {"backbone": {"depth": 18, "stem": "cifar", "width": 8}}}
    old = write_run(tmp_path, "20260101-000000-pretrain-aaaa0000", pretrain_summary(), cfg)
    new = write_run(tmp_path, "20260102-000000-pretrain-aaaa0000", pretrain_summary(), cfg)
    write_run(tmp_path, "20260103-000000-pretrain-aaaa0000", pretrain_summary(status="failed"), cfg)
    for folder in (old, new):
        (folder / "checkpoints").mkdir()
        for step in (50, 100):
            (folder / "checkpoints" / f"step_{step:08d}.pdckpt").write_bytes(b"")
    assert registry.find_run("", tmp_path) == new  # the newest *finished* run
    assert registry.find_run(old.name, tmp_path) == old and registry.find_run(str(old), tmp_path) == old
    with pytest.raises(FileNotFoundError, match="no finished linear run"):
        registry.find_run("", tmp_path, kind="linear")
    with pytest.raises(FileNotFoundError, match="nope"):
        registry.find_run("nope", tmp_path)

    # a run recorded before model.backbone.padding existed was padded symmetrically
    backbone = ["model.backbone.depth=18", "model.backbone.stem=cifar", "model.backbone.width=8",
                "model.backbone.padding=symmetric"]
    assert registry.resolve_weights("random", tmp_path) == ("random", [])
    assert registry.resolve_weights("", tmp_path) == (str(new / "checkpoints" / "step_00000100.pdckpt"), backbone)
    assert registry.resolve_weights(old.name, tmp_path)[0] == str(old / "checkpoints" / "step_00000100.pdckpt")
    inside = old / "checkpoints" / "step_00000050.pdckpt"
    assert registry.resolve_weights(str(inside), tmp_path) == (str(inside), backbone)
    elsewhere = tmp_path / "weights.pdparams"
    elsewhere.write_bytes(b"")
    assert registry.resolve_weights(str(elsewhere), tmp_path) == (str(elsewhere), [])


def test_config_hash_ignores_loader_processes_but_not_the_recipe() -> None:
    """Loader workers change the speed, not the batches (per-sample seeding), so a run may resume with another
    count; a recipe change is a different run."""
    base = config_hash(load_config(TINY_CONFIG))
    assert config_hash(load_config(TINY_CONFIG, ["dataloader.train.num_workers=3"])) == base
    assert config_hash(load_config(TINY_CONFIG, ["dataloader.train.sampler.batch_size=8"])) != base
