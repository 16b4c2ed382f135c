"""The linear-evaluation run end to end: tools/train.py on a classification config, as PASSL's README drives it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle.vision.transforms.functional as vision
import pytest
from PIL import Image

from byol_lib.checkpoint import list_checkpoints
from byol_lib.config import ConfigError, load_config
from byol_lib.data.augment import linear_train_transform, sample_crop
from byol_lib.data.datasets import build_dataset
from byol_lib.linear import holdout_size, settings_from
from byol_lib.train import pretrain

from .conftest import ROOT, TINY_CONFIG

TINY_LINEAR = ROOT / "configs" / "byol" / "tiny_linear.yaml"
TRAIN = [sys.executable, str(ROOT / "tools" / "train.py")]
ENV = {**os.environ, "BYOL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def pretrained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pretrain")
    run = pretrain(load_config(TINY_CONFIG, [f"output_dir={out}"]), verbose=False)
    return list_checkpoints(run / "checkpoints")[-1][1]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([*TRAIN, *args], env=ENV, capture_output=True, text=True)


def _summary(folder: Path) -> dict:
    (run,) = [p for p in folder.iterdir() if p.is_dir()]
    return json.loads((run / "summary.json").read_text()) | {"_dir": str(run)}


@pytest.mark.slow
def test_train_then_evaluate_only_reproduces_the_reported_accuracy(pretrained_checkpoint: Path,
                                                                   tmp_path: Path) -> None:
    out = _run(["-c", str(TINY_LINEAR), "--pretrained", str(pretrained_checkpoint),
                "-o", f"output_dir={tmp_path / 'a'}"])
    assert out.returncode == 0, out.stderr
    summary = _summary(tmp_path / "a")
    assert summary["status"] == "finished" and summary["kind"] == "linear" and summary["protocol"] == "paper"
    assert summary["chosen_lr"] in [lr * 64 / 256 for lr in (0.4, 0.3, 0.2, 0.1, 0.05)]  # grid x batch/256
    assert 0.0 <= summary["top1"] <= summary["top5"] <= 1.0
    assert {"knn_top1_k5", "knn_top1_k20"} <= set(summary) and "top1" in summary["random_init"]
    classifier = Path(summary["_dir"]) / "classifier.pdparams"
    with np.load(Path(summary["_dir"]) / "predictions.npz") as saved:  # per val image, for paired bootstraps
        cfg = load_config(TINY_LINEAR)
        val = build_dataset(cfg["dataloader"]["val"]["dataset"], "val")
        labels = np.array([val.label(i) for i in range(len(val))])
        assert np.array_equal(saved["labels"], labels)
        assert (saved["linear"] == labels).mean() == pytest.approx(summary["top1"])
        for k in (5, 20):
            assert (saved[f"knn_k{k}"] == labels).mean() == pytest.approx(summary[f"knn_top1_k{k}"])
            untrained = saved[f"random_init_knn_k{k}"] == labels  # the random-init baseline, on the same images
            assert untrained.mean() == pytest.approx(summary["random_init"][f"knn_top1_k{k}"])
        assert (saved["random_init_linear"] == labels).mean() == pytest.approx(summary["random_init"]["top1"])

    again = _run(["-c", str(TINY_LINEAR), "--load", str(classifier), "--evaluate-only",
                  "-o", f"output_dir={tmp_path / 'b'}"])
    assert again.returncode == 0, again.stderr
    evaluated = _summary(tmp_path / "b")
    assert evaluated["kind"] == "evaluate"
    assert (evaluated["top1"], evaluated["top5"]) == (summary["top1"], summary["top5"])


@pytest.mark.parametrize(("extra", "message"), [
    ([], "no backbone weights: pass --pretrained"),
    (["--evaluate-only"], "--evaluate-only needs --load"),
    (["--pretrained", "{ckpt}", "-o", "model.backbone.depth=34"], "does not fit the backbone in the config"),
    (["--load", "{ckpt}"], "no linear head"),
])
@pytest.mark.slow
def test_bad_weights_fail_clearly_and_write_nothing(pretrained_checkpoint: Path, tmp_path: Path,
                                                    extra: list[str], message: str) -> None:
    extra = [a.replace("{ckpt}", str(pretrained_checkpoint)) for a in extra]
    out = _run(["-c", str(TINY_LINEAR), "-o", f"output_dir={tmp_path / 'runs'}", *extra])
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_pretraining_flags_on_a_pretraining_config_are_rejected(tmp_path: Path) -> None:
    out = _run(["-c", str(TINY_CONFIG), "--evaluate-only", "-o", f"output_dir={tmp_path}"])
    assert out.returncode == 2 and "is a pretraining config" in out.stderr


PASSL_CLAS = ROOT / "tests" / "fixtures" / "passl" / "byol_clas_r50.yaml"
SYNTH = ["dataloader.train.dataset.name=Synthetic", "dataloader.val.dataset.name=Synthetic"]


def test_passl_classification_config_loads_with_its_single_lr() -> None:
    cfg = load_config(PASSL_CLAS, SYNTH)
    settings = settings_from(cfg, 8, 1281167, 1000)  # PASSL's 8 GPUs x 128
    assert settings.lr_grid == (1.6,) and not settings.scale_lr_by_batch and settings.epochs == 100
    assert settings.batch_size == 1024 and settings.nesterov and settings.weight_decay == 0.0
    with pytest.raises(ConfigError, match="total_batch"):
        settings_from(cfg, 1, 1281167, 1000)  # one process: batch 128 disagrees with PASSL's total_batch 1024


def test_paper_config_defaults() -> None:
    cfg = load_config(ROOT / "configs" / "byol" / "byol_clas_r50.yaml", SYNTH)
    settings = settings_from(cfg, 8, 1281167, 1000)
    assert settings.epochs == 80 and settings.batch_size == 1024 and settings.holdout == 10009
    assert settings.lr_grid == (0.4, 0.3, 0.2, 0.1, 0.05) and settings.scale_lr_by_batch


@pytest.mark.parametrize(("protocol", "epochs", "head_init", "resize"), [("paper", 80, "jax", "jax"),
                                                                       ("passl", 100, "passl", "passl")])
def test_the_protocol_key_switches_epochs_head_init_and_val_resize(protocol: str, epochs: int, head_init: str,
                                                                   resize: str) -> None:
    cfg = load_config(ROOT / "configs" / "byol" / "byol_clas_r50.yaml", [*SYNTH, f"linear_eval.protocol={protocol}"])
    settings = settings_from(cfg, 8, 1281167, 1000)
    assert (settings.protocol, settings.epochs, settings.head_init) == (protocol, epochs, head_init)
    assert cfg["augmentation"]["eval_resize"] == resize
    assert settings.peak_lrs() == ((1.6,) if protocol == "passl" else (1.6, 1.2, 0.8, 0.4, 0.2))
    assert settings.holdout == (0 if protocol == "passl" else 10009)
    explicit = load_config(ROOT / "configs" / "byol" / "byol_clas_r50.yaml",
                           [*SYNTH, f"linear_eval.protocol={protocol}", "epochs=7", "linear_eval.head_init=jax"])
    assert (explicit["epochs"], explicit["linear_eval"]["head_init"]) == (7, "jax")  # a key set in the config wins


@pytest.mark.parametrize(("images", "classes", "expected"), [
    (1281167, 1000, 10009), (5000, 10, 200), (300, 10, 60), (100000, 100, 2000)])
def test_holdout_scales_with_the_train_set(images: int, classes: int, expected: int) -> None:
    cfg = load_config(ROOT / "configs" / "byol" / "byol_clas_r50.yaml", SYNTH)
    assert holdout_size(cfg, images, classes) == expected


def test_passl_protocol_trains_on_passls_crop_flip_and_pillow_bicubic() -> None:
    """PASSL's linear-eval train transform (ByolRandomCrop, RandomHorizontalFlip, Resize((S, S), bicubic), /255),
    computed with paddle.vision's own PIL functions on the crop drawn from the same generator."""
    image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    config = ROOT / "configs" / "byol" / "byol_clas_r50.yaml"
    passl = load_config(config, [*SYNTH, "linear_eval.protocol=passl", "augmentation.image_size=24"])["augmentation"]
    paper = load_config(config, [*SYNTH, "augmentation.image_size=24"])["augmentation"]
    flips, gaps = [], []
    for seed in range(24):
        got = linear_train_transform(image, passl, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        top, left, h, w = sample_crop(60, 90, passl["crop"], rng)  # PASSL's ByolRandomCrop is the JAX draw
        crop = Image.fromarray(image).crop((left, top, left + w, top + h))
        flips.append(rng.random() < 0.5)  # paddle.vision's RandomHorizontalFlip: random() < prob
        view = vision.resize(vision.hflip(crop) if flips[-1] else crop, (24, 24), "bicubic")
        want = np.asarray(view, dtype=np.float32).transpose(2, 0, 1) / 255
        assert got.shape == (3, 24, 24) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"seed {seed}")
        gaps.append(np.abs(linear_train_transform(image, paper, np.random.default_rng(seed)) - got).max())
    assert 6 <= sum(flips) <= 18
    assert min(gaps) > 0.05  # the paper's protocol (TF bicubic, no antialias) gives other pixels on every crop
