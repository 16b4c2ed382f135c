"""The full reproduction (run_all.sh's job) on a tiny setting, and its skip/resume behaviour and errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from byol_lib.choices import DEFAULT_STUDY, PROFILES
from byol_lib.config import ConfigError, load_config
from byol_lib.pipeline import data_overrides, reproduce
from byol_lib.variants import load_grid, load_study

from .conftest import ROOT

TINY = ["epochs=1", "dataloader.train.dataset.num_images=256", "dataloader.train.num_workers=0",
        "model.neck.hid_channels=64", "model.predictor.hid_channels=64"]
TINY_LINEAR = ["epochs=2", "dataloader.train.dataset.num_images=300", "dataloader.val.dataset.num_images=100",
               "linear_eval.random_init_baseline=False"]


def _run_all(tmp_path: Path) -> str:
    """``./run_all.sh`` on a tiny setting: the reduced ablation set with one seed, report into ``tmp_path``."""
    cmd = [str(ROOT / "run_all.sh"), "--output-dir", str(tmp_path), "--report", str(tmp_path / "report.html"),
           "-o", *TINY, "--linear-override", *TINY_LINEAR, "--ablation-seeds", "0", "--max-seeds", "1"]
    env = {**os.environ, "BYOL_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_run_all_runs_the_default_profile_end_to_end_and_skips_finished_steps(tmp_path: Path) -> None:
    out = _run_all(tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert ">Findings<" in html and "Table 17 side by side" in html and "BYOL against a random-init encoder" in html
    summary = json.loads((tmp_path / "default-linear-s0" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["pretrained"].endswith("default-pretrain-s0/backbone.pdparams")
    assert (tmp_path / "default-pretrain-s0" / "backbone.pdparams").is_file()
    variants = load_study(ROOT / DEFAULT_STUDY).variants
    assert variants is not None and {"passl_head_with_ema", "baseline"} <= set(variants)
    assert len(set(variants) & {v.name for v in load_grid(ROOT / "configs/ablations/augmentations.yaml").variants
                                if v.paper_top1 is not None and v.name != "baseline"}) >= 6  # Table 17 rows
    summaries = {}
    for variant in variants:
        for kind in ("pretrain", "linear"):
            summaries[variant, kind] = (tmp_path / f"default-ablation-{variant}-{kind}-s0" / "summary.json").read_text()
            assert json.loads(summaries[variant, kind])["status"] == "finished", (variant, kind)
    lines = out.splitlines()
    table = lines[lines.index("== summary") + 1:]  # the console ends with the summary table and the report's path
    assert table[-1] == f"report: {tmp_path / 'report.html'}" and len(table) <= 20
    assert table[1].startswith("default-linear-s0 (BYOL, 1 epoch) ")
    assert {line.split()[0] for line in table[4:-1]} == set(variants) - {"baseline"}
    again = _run_all(tmp_path)
    assert again.count("already finished") == 2  # the main pretraining and linear runs
    for (variant, kind), text in summaries.items():  # the ablation runs were skipped, not redone
        assert (tmp_path / f"default-ablation-{variant}-{kind}-s0" / "summary.json").read_text() == text


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
