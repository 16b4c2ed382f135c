"""Config hashes without locations: a results folder copied or moved elsewhere keeps its runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from byol_lib.config import ConfigError, load_config
from byol_lib.linear import run_linear_eval
from byol_lib.results import config_hash, portable, repo_root, same_config
from byol_lib.train import pretrain

from .conftest import ROOT, TINY_CONFIG

TINY_LINEAR = ROOT / "configs" / "byol" / "tiny_linear.yaml"


def test_portable_paths() -> None:
    places = {"<repo>": Path("/home/me/byol"), "<output>": Path("/home/me/byol/results")}
    value = {"a": "/home/me/byol/results/run-s0/backbone.pdparams", "b": ["/home/me/byol/data/cifar", "/data/x"],
             "c": "relative/path", "d": 3, "e": "/home/me/byol-other/x", "f": "/home/me/byol/results/../data/y"}
    assert portable(value, places) == {"a": "<output>/run-s0/backbone.pdparams", "b": ["<repo>/data/cifar", "/data/x"],
                                       "c": "relative/path", "d": 3, "e": "/home/me/byol-other/x",
                                       "f": "<repo>/data/y"}


def linear_cfg(output: Path, pretrained: str, dataroot: str = "") -> dict:
    return {"output_dir": str(output), "run_id": "lin", "seed": 0,
            "dataloader": {"train": {"num_workers": 2, "dataset": {"name": "CIFAR10", "dataroot": dataroot}}},
            "derived": {"pretrained": pretrained}}


def test_config_hash_ignores_where_results_live_but_not_which_data_or_weights(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "elsewhere" / "b"
    here = config_hash(linear_cfg(a, str(a / "pre-s0" / "backbone.pdparams")))
    assert config_hash(linear_cfg(b, str(b / "pre-s0" / "backbone.pdparams"))) == here  # the folder moved
    assert config_hash(linear_cfg(a, str(a / "pre-s1" / "backbone.pdparams"))) != here  # other weights
    assert config_hash(linear_cfg(b, str(a / "pre-s0" / "backbone.pdparams"))) != here  # weights outside the output
    data = repo_root() / "data"
    on_a, on_b = (config_hash(linear_cfg(a, "random", str(data / name))) for name in ("cifar_a", "cifar_b"))
    assert on_a != on_b and config_hash(linear_cfg(b, "random", str(data / "cifar_a"))) == on_a
    assert config_hash(linear_cfg(a, "random", "/data/x")) != config_hash(linear_cfg(a, "random", "/data/y"))


@pytest.mark.slow
def test_a_copied_results_folder_keeps_its_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A finished tiny pretraining and its linear evaluation (named runs, as run_all and the ablation runner make
    them), copied elsewhere and re-run there: both are recognised and skipped, their records untouched; a run whose
    summary holds a hash of the earlier, path-dependent kind is recognised by its config.yaml."""
    first, copy = tmp_path / "results", tmp_path / "moved" / "results"

    def run_both(output: Path) -> None:
        pretrain(load_config(TINY_CONFIG, [f"output_dir={output}", "run_id=pre"]))
        run_linear_eval(load_config(TINY_LINEAR, [f"output_dir={output}", "run_id=lin", "epochs=1",
                                                  "linear_eval.random_init_baseline=False"]),
                        pretrained=str(output / "pre"))

    run_both(first)
    shutil.copytree(first, copy)
    linear_summary = copy / "lin" / "summary.json"
    before = {path: path.read_text() for path in (copy / "pre" / "summary.json", linear_summary)}
    capsys.readouterr()
    run_both(copy)
    assert capsys.readouterr().out.count("already finished") == 2
    assert {path: path.read_text() for path in before} == before
    record = json.loads(linear_summary.read_text())
    linear_summary.write_text(json.dumps({**record, "config_hash": "0ld0ld00"}))  # hashed before this change
    run_both(copy)
    assert capsys.readouterr().out.count("already finished") == 2
    cfg = load_config(TINY_CONFIG, [f"output_dir={copy}", "run_id=pre", "epochs=3"])
    assert not same_config(copy / "pre", cfg)
    with pytest.raises(ConfigError, match="holds a run of a different config"):
        pretrain(cfg)
