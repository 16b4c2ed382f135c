"""The full reproduction (run_all.sh's job) on a tiny setting, and its skip/resume behaviour and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from byol_lib.config import ConfigError, load_config
from byol_lib.pipeline import PROFILES, data_overrides, reproduce

from .conftest import ROOT

TINY = ["epochs=1", "dataloader.train.dataset.num_images=256", "dataloader.train.num_workers=0",
        "model.neck.hid_channels=64", "model.predictor.hid_channels=64"]
TINY_LINEAR = ["epochs=2", "dataloader.train.dataset.num_images=300", "dataloader.val.dataset.num_images=100",
               "linear_eval.random_init_baseline=False"]


@pytest.mark.slow
def test_default_profile_runs_end_to_end_and_skips_finished_steps(tmp_path: Path, capsys) -> None:
    (linear,) = reproduce("default", output_dir=tmp_path, pretrain_overrides=TINY, linear_overrides=TINY_LINEAR,
                          report=tmp_path / "report.html")
    assert "Reproduction gap" in (tmp_path / "report.html").read_text()
    summary = json.loads((linear / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["pretrained"].endswith("default-pretrain-s0/backbone.pdparams")
    assert (tmp_path / "default-pretrain-s0" / "backbone.pdparams").is_file()
    capsys.readouterr()
    reproduce("default", output_dir=tmp_path, pretrain_overrides=TINY, linear_overrides=TINY_LINEAR)
    assert capsys.readouterr().out.count("already finished") == 2


def test_profiles_need_their_data_and_devices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs --data"):
        data_overrides(PROFILES["cifar10"], None)
    with pytest.raises(ConfigError, match="no such file"):
        data_overrides(PROFILES["cifar10"], str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="needs GPUs"):
        reproduce("imagenet", data=str(tmp_path), output_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown profile"):
        reproduce("mnist", output_dir=tmp_path)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_profile_configs_load(profile: str, tmp_path: Path) -> None:
    p = PROFILES[profile]
    synth = ["dataloader.train.dataset.name=Synthetic"]
    load_config(ROOT / p.pretrain_config, synth)
    load_config(ROOT / p.linear_config, [*synth, "dataloader.val.dataset.name=Synthetic"])
