"""PASSL switches D1 (target never updated), D6 (PASSL initialisation), D10 (loop/schedule length mismatch) and
gradient accumulation, each against an independent computation: bit-identical weights, empirical distributions
against their closed forms, and PASSL's lr / tau formulas evaluated with numpy."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import paddle
import pytest

from byol_lib.checkpoint import list_checkpoints
from byol_lib.config import ConfigError, load_config
from byol_lib.data.augment import device_augment
from byol_lib.data.datasets import build_dataset
from byol_lib.data.loader import pretrain_loader
from byol_lib.model import build_model
from byol_lib.passl_init import passl_initialize
from byol_lib.plan import lr_at, resolve, tau_at
from byol_lib.results import read_metrics
from byol_lib.train import pretrain

from .conftest import TINY_CONFIG

TINY_IMAGES, TINY_CLASSES = 128, 10
BN_STATISTICS = ("_mean", "_variance")


def final_state(run: Path) -> dict[str, np.ndarray]:
    _, path = list_checkpoints(run / "checkpoints")[-1]
    return {k: np.asarray(v) for k, v in paddle.load(str(path))["model"].items()}


def weights_of(state: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k: v for k, v in state.items() if k.startswith(prefix) and not k.endswith(BN_STATISTICS)}


def initial_state(overrides: list[str]) -> dict[str, np.ndarray]:
    """The weights a run of the tiny config starts from, built here the way the run is seeded."""
    cfg = resolve(load_config(TINY_CONFIG, overrides), 1, TINY_IMAGES, TINY_CLASSES)
    paddle.seed(cfg["seed"])
    model = build_model(cfg)
    if cfg["model"]["init"] == "passl":
        passl_initialize(model, align_target=cfg["model"]["align_init_network"])
    return {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("update", [False, True])
@pytest.mark.slow
def test_d1_target_stays_bit_identical_to_its_initialisation(update: bool, tmp_path: Path) -> None:
    overrides = ["epochs=1", "model.init=passl", f"model.update_target={update}"]  # D6 wiring checked alongside
    run = pretrain(load_config(TINY_CONFIG, [*overrides, f"output_dir={tmp_path}"]), verbose=False)
    start, end = initial_state(overrides), final_state(run)
    target = weights_of(end, "target.")
    assert target and all(np.array_equal(start[k], v) for k, v in target.items()) is not update
    online = weights_of(end, "online.")
    assert not all(np.array_equal(start[k], v) for k, v in online.items())  # training did happen


def test_d6_convolutions_are_untruncated_normal_and_linears_keep_paddle_defaults() -> None:
    cfg = resolve(load_config(TINY_CONFIG, ["model.backbone.width=16"]), 1, TINY_IMAGES, TINY_CLASSES)
    paddle.seed(3)
    model = build_model(cfg)
    ours = {k: v.numpy() for k, v in model.state_dict().items()}
    passl_initialize(model, align_target=True)
    convs = [(n, layer) for n, layer in model.named_sublayers() if isinstance(layer, paddle.nn.Conv2D)]
    big = [(n, layer) for n, layer in convs if layer.weight.size >= 20000]
    assert len(convs) >= 20 and len(big) >= 4
    for name, layer in big:
        w = layer.weight.numpy().ravel()
        out, cin, kh, kw = layer.weight.shape
        std = 1 / math.sqrt(cin * kh * kw)
        assert w.std() == pytest.approx(std, rel=0.03), name
        assert abs(w.mean()) < 4 * std / math.sqrt(w.size), name
        # untruncated: P(|z| > 2) = 4.55% (our default truncates at 2 std, so none there)
        assert np.mean(np.abs(w) > 2 * std) == pytest.approx(0.0455, abs=0.006), name
        assert np.mean(np.abs(ours[f"{name}.weight"]) > 2 * std) == 0.0, name  # Haiku: stddev 1/sqrt(fan_in)
    linears = [(n, layer) for n, layer in model.named_sublayers() if isinstance(layer, paddle.nn.Linear)]
    assert {n.split(".")[0] for n, _ in linears} == {"online", "target", "predictor", "classifier"}
    for name, layer in linears:  # Paddle's default: Xavier-uniform weights, zero biases
        fan_in, fan_out = layer.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        w = layer.weight.numpy()
        assert np.abs(w).max() <= bound and w.std() == pytest.approx(bound / math.sqrt(3), rel=0.1), name
        if layer.bias is not None:
            assert not layer.bias.numpy().any(), name
    for (name, layer), (_, twin) in zip(model.online.named_sublayers(), model.target.named_sublayers(), strict=True):
        if isinstance(layer, paddle.nn.Conv2D | paddle.nn.Linear):
            np.testing.assert_array_equal(layer.weight.numpy(), twin.weight.numpy(), err_msg=name)


def passl_lr(t: np.ndarray, peak: float, start: float, warmup: int, t_max: int) -> np.ndarray:
    """PASSL's CosineWarmup: Paddle LinearWarmup over an inner, periodic Cosine counted from the warm-up's end."""
    cosine = peak * 0.5 * (1 + np.cos(np.pi * (t - warmup) / (t_max - warmup)))
    return np.where(t < warmup, start + (peak - start) * t / warmup, cosine)


@pytest.mark.slow
def test_d10_loop_runs_passl_epochs_while_the_schedules_follow_t_max(tmp_path: Path) -> None:
    images, batch, epochs, t_max, warmup, start = 120, 32, 2, 4, 1, 1e-4
    overrides = [f"dataloader.train.dataset.num_images={images}", f"lr_scheduler.T_max={t_max}",
                 f"lr_scheduler.warmup_steps={warmup}", f"lr_scheduler.start_lr={start}", f"epochs={epochs}"]
    with pytest.raises(ConfigError, match="D10"):
        resolve(load_config(TINY_CONFIG, overrides), 1, images, TINY_CLASSES)
    cfg = load_config(TINY_CONFIG, [*overrides, "loop_length=passl_epochs", f"output_dir={tmp_path}"])
    rows = read_metrics(pretrain(cfg, verbose=False))
    loop = epochs * (images // batch)  # PASSL: epochs x len(loader), drop_last; the formula gives 7 steps
    assert loop == 6 and [r["step"] for r in rows] == list(range(1, loop + 1))
    t = np.arange(loop)
    peak = 0.3 * batch / 256
    np.testing.assert_allclose([r["lr"] for r in rows], passl_lr(t, peak, start, warmup, t_max), rtol=1e-12)
    assert abs(rows[t_max]["lr"]) < 1e-15 and rows[-1]["lr"] > 0.2 * peak  # the periodic cosine turned back
    tau = 1 - (1 - 0.99) * (np.cos(np.pi * t / (epochs * images // batch)) + 1) / 2
    np.testing.assert_allclose([r["tau"] for r in rows], tau, rtol=1e-12)


PASSL_IMAGENET = ["dataloader.train.dataset.name=Synthetic", "total_images=1281167", "global_batch_size=4096",
                  "lr_scheduler.learning_rate=4.8", "lr_scheduler.T_max=93835", "lr_scheduler.warmup_steps=3127",
                  "lr_scheduler.start_lr=0.0001"]


@pytest.mark.parametrize(("world", "per_rank", "loop"), [(32, 40037, 93600), (8, 160146, 375300)])
def test_d10_steps_of_passl_imagenet_recipe_at_any_world_size(world: int, per_rank: int, loop: int) -> None:
    """PASSL's yaml (128 per GPU, global_batch_size 4096, T_max 93,835) on ``world`` processes: each takes
    sampler.batch_size = 128 images, the loop runs 300 x len(loader), lr and tau keep the 4,096-batch horizon."""
    cfg = load_config(None, [*PASSL_IMAGENET, "loop_length=passl_epochs"])
    derived = resolve(cfg, world, 1281167, 1000)["derived"]
    assert per_rank == math.ceil(1281167 / world) and loop == 300 * (per_rank // 128)  # PASSL's padded shards
    assert (derived["per_device_batch"], derived["global_batch"]) == (128, 128 * world)
    assert (derived["total_steps"], derived["lr_steps"], derived["tau_steps"]) == (loop, 93835, 93835)
    assert derived["steps_per_epoch"] == per_rank // 128 and derived["peak_lr"] == 4.8
    t = np.array([0, 3127, 93834, 93835, loop - 1])
    lr = [lr_at(int(k), peak_lr=4.8, warmup_steps=3127, total_steps=93835, start_lr=1e-4, periodic=True) for k in t]
    np.testing.assert_allclose(lr, passl_lr(t, 4.8, 1e-4, 3127, 93835), rtol=1e-9, atol=1e-12)
    tau = [tau_at(int(k), base_tau=0.99, total_steps=93835, periodic=True) for k in t]
    np.testing.assert_allclose(tau, 1 - 0.01 * (np.cos(np.pi * t / 93835) + 1) / 2, rtol=1e-12)
    if world == 8:  # 375,300 steps: four cosine half-periods, so lr and tau wrap around (lr back near its peak)
        assert lr[-1] > 0.9 * 4.8 and tau[-1] < 0.991
    default = resolve(load_config(None, PASSL_IMAGENET), 32, 1281167, 1000)["derived"]
    assert default["total_steps"] == default["lr_steps"] == default["tau_steps"] == 93835


@pytest.mark.slow
def test_gradient_accumulation_splits_the_batch_and_keeps_the_steps(tmp_path: Path) -> None:
    cfg = load_config(TINY_CONFIG, ["epochs=1", "accum_steps=2", f"output_dir={tmp_path}"])
    run = pretrain(copy.deepcopy(cfg), verbose=False)
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4]
    first = read_metrics(run)[0]
    # the logged step-1 loss is the mean over the two half batches, computed here with the untrained model
    resolved = resolve(cfg, 1, TINY_IMAGES, TINY_CLASSES)
    images = build_dataset(resolved["dataloader"]["train"]["dataset"], "train")
    view1, params1, view2, params2, labels = next(iter(pretrain_loader(images, resolved, 0, 1, 0)))
    paddle.seed(resolved["seed"])
    model = build_model(resolved)
    model.train()
    aug = resolved["augmentation"]
    a1, a2 = device_augment(view1, params1, aug), device_augment(view2, params2, aug)
    halves = [float(model(a1[i:i + 16], a2[i:i + 16], labels[i:i + 16])["byol_loss"]) for i in (0, 16)]
    assert first["byol_loss"] == pytest.approx(np.mean(halves), rel=1e-6)
    assert float(model(a1, a2, labels)["byol_loss"]) != pytest.approx(first["byol_loss"], rel=1e-3)  # BN sees 32
    with pytest.raises(ConfigError, match="accum_steps"):
        resolve(load_config(TINY_CONFIG, ["accum_steps=3"]), 1, TINY_IMAGES, TINY_CLASSES)
