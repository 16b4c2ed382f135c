"""Mixed precision (byol_lib/amp.py) as far as Paddle's CPU build can show it.

The CPU build has no float16/bfloat16 convolution or matmul kernels and its ``auto_cast`` is a no-op, so what is
tested here is the arithmetic around the low-precision forward pass: the loss scaler's schedule (a closed form and
Paddle's own ``update_loss_scaling`` kernel), unscaling (Paddle's ``check_finite_and_unscale`` kernel), the real
step with a float16 loss scaler (equal to the float32 step, or skipped on overflow), float32 master weights, the
config's errors and the CPU refusal. What only a GPU shows is listed in README.md (GPU section).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import paddle
import pytest
from paddle import _C_ops

from byol_lib import amp, cli
from byol_lib.config import ConfigError, load_config
from byol_lib.data.augment import device_params_length
from byol_lib.distributed import Context, DeviceError
from byol_lib.ema import weights
from byol_lib.model import byol_from_config
from byol_lib.plan import plan_for
from byol_lib.results import config_hash
from byol_lib.train import Learner, build_optimizer, train_step

from .conftest import TINY_CONFIG


def test_loss_scale_follows_the_closed_form_of_paddles_rules() -> None:
    """k good steps in a row: init * 2**(k // n); every bad step halves the scale and restarts the count."""
    scaler = amp.LossScaler(incr_every=5)
    for k in range(1, 23):
        scaler.update(found_inf=False)
        assert scaler.scale == 2.0**16 * 2.0 ** (k // 5)
    scaler.update(found_inf=True)
    assert scaler.scale == 2.0**16 * 2.0**4 / 2 and scaler.good_steps == 0
    for _ in range(4):
        scaler.update(found_inf=False)
    assert scaler.scale == 2.0**19  # the count restarted at the bad step: 4 good steps are not 5
    scaler.update(found_inf=False)
    assert scaler.scale == 2.0**20


def test_loss_scale_sequence_equals_paddles_update_loss_scaling_kernel() -> None:
    rng = np.random.default_rng(0)
    found = rng.random(300) < 0.3
    ours = amp.LossScaler(scale=1024.0, incr_every=3, decr_every=2)
    scale = paddle.to_tensor([1024.0])
    good, bad = paddle.to_tensor([0], dtype="int32"), paddle.to_tensor([0], dtype="int32")
    dummy = [paddle.to_tensor([1.0])]
    for step_found in found:
        ours.update(found_inf=bool(step_found))
        _C_ops.update_loss_scaling_(dummy, paddle.to_tensor([bool(step_found)]), scale, good, bad, 3, 2, 2.0, 0.5,
                                    paddle.to_tensor([False]))
        assert (ours.scale, ours.good_steps, ours.bad_steps) == (scale.item(), good.item(), bad.item())
    assert 1.0 < ours.scale != 1024.0  # the sequence moved the scale without reaching the kernel's floor of 1


def _param(values: list[float], grad: list[float]) -> paddle.Tensor:
    param = paddle.create_parameter([len(values)], "float32", default_initializer=paddle.nn.initializer.Assign(
        np.asarray(values, dtype=np.float32)))
    (param * paddle.to_tensor(np.asarray(grad, dtype=np.float32))).sum().backward()
    return param


@pytest.mark.parametrize("bad", [None, np.inf, np.nan])
def test_unscale_divides_every_gradient_and_reports_inf_or_nan_like_paddles_kernel(bad: float | None) -> None:
    grads = [[2.0**20, -3.0, 0.5], [7.0, 2.0**-3]]
    if bad is not None:
        grads[1][0] = bad
    params = [_param([1.0] * len(g), g) for g in grads]
    expected = [paddle.to_tensor(np.asarray(g, dtype=np.float32)) for g in grads]
    _, found_inf = _C_ops.check_finite_and_unscale_(expected, paddle.to_tensor([1024.0]))
    finite = amp.LossScaler(scale=1024.0).unscale(params)
    assert finite == (bad is None) == (not found_inf.item())
    for param, grad in zip(params, grads, strict=True):
        np.testing.assert_array_equal(param.grad.numpy(), np.asarray(grad, dtype=np.float32) / 1024.0)


def _learner(precision: amp.Precision) -> tuple[Learner, tuple[paddle.Tensor, ...]]:
    cfg = load_config(TINY_CONFIG)
    plan = plan_for(cfg, 1, 128, 10)
    paddle.seed(0)
    model = byol_from_config(cfg["model"], 10)
    learner = Learner(model, build_optimizer(model, cfg), plan, cfg["augmentation"], Context(0, 1, "cpu"),
                      precision=precision)
    n, size, length = 8, cfg["augmentation"]["image_size"], device_params_length(cfg["augmentation"])
    rng = np.random.default_rng(1)
    views = [paddle.to_tensor(rng.random((n, 3, size, size), dtype=np.float32)) for _ in range(2)]
    params = paddle.zeros([n, length])  # no blur, no solarisation
    return learner, (views[0], params, views[1], params, paddle.to_tensor(rng.integers(0, 10, n)))


def _state(learner: Learner) -> list[np.ndarray]:
    return [p.numpy().copy() for p in (*weights(learner.model.online), *weights(learner.model.target))]


def _float16_scaler_precision(scale: float) -> amp.Precision:
    """The float16 precision as on a GPU; on the CPU its auto_cast is a no-op (Paddle warns), the scaler is real."""
    return amp.Precision("float16", "O1", amp.LossScaler(scale=scale))


@pytest.mark.filterwarnings("ignore:amp_guard can only be enabled")
def test_a_loss_scaled_step_equals_the_float32_step_and_keeps_float32_master_weights() -> None:
    """Scaling by a power of two and unscaling are exact, so the scaled step is the float32 step bit for bit."""
    reference, batch = _learner(amp.FLOAT32)
    train_step(reference, 3, batch)
    scaled, batch = _learner(_float16_scaler_precision(2.0**16))
    before = _state(scaled)
    metrics = train_step(scaled, 3, batch)
    assert metrics["amp_skipped"] == 0.0 and metrics["loss_scale"] == 2.0**16
    assert any((a != b).any() for a, b in zip(before, _state(scaled), strict=True))
    for ours, theirs in zip(_state(scaled), _state(reference), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert {str(p.dtype) for p in scaled.model.parameters()} == {"paddle.float32"}
    assert {str(b.dtype) for b in scaled.optimizer._buffers.values()} == {"paddle.float32"}


@pytest.mark.filterwarnings("ignore:amp_guard can only be enabled")
def test_an_overflowing_step_is_skipped_and_lowers_the_scale_without_a_nan_alarm() -> None:
    """Scaled gradients that overflow float32 (as float16 ones overflow on a GPU): no LARS step, no EMA, no
    NonFiniteLossError (the loss itself is finite), the scale halves; the next step with the lower scale runs."""
    learner, batch = _learner(_float16_scaler_precision(2.0**127))  # the scaled loss (about 7 x 2^127) overflows
    before = _state(learner)
    metrics = train_step(learner, 3, batch)
    assert np.isfinite(metrics["loss"]) and metrics["amp_skipped"] == 1.0 and metrics["loss_scale"] == 2.0**126
    for a, b in zip(before, _state(learner), strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(p.grad is None for p in learner.optimizer.params)
    learner.precision.scaler.scale = 2.0**10
    assert train_step(learner, 4, batch)["amp_skipped"] == 0.0


def test_float32_steps_log_no_precision_metrics() -> None:
    learner, batch = _learner(amp.FLOAT32)
    assert not {"loss_scale", "amp_skipped"} & set(train_step(learner, 0, batch))


@pytest.mark.parametrize(("override", "message"), [
    ("amp.level=O2", "is not supported: O2 casts the parameters"),
    ("amp.level=O3", "'amp.level' = 'O3' is not one of ['O1', 'O2']"),
    ("amp.dtype=float32", "'amp.dtype' = 'float32' is not one of ['bfloat16', 'float16']"),
    ("amp.enabled=2", "'amp.enabled' must be bool"),
    ("amp.scale=2", "unknown key 'amp.scale'"),
])
def test_config_errors_name_the_amp_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(TINY_CONFIG, [override])
    assert message in str(err.value)


def test_amp_is_off_by_default_and_float32_configs_keep_their_hash() -> None:
    cfg = load_config(TINY_CONFIG)
    assert cfg["amp"] == {"enabled": False, "dtype": "bfloat16", "level": "O1"}
    assert amp.precision(cfg["amp"], "gpu:0") is amp.FLOAT32
    assert config_hash(cfg) == config_hash({k: v for k, v in cfg.items() if k != "amp"})
    assert config_hash(load_config(TINY_CONFIG, ["amp.enabled=true"])) != config_hash(cfg)


def test_amp_is_refused_on_the_cpu_with_the_reason() -> None:
    cfg = load_config(TINY_CONFIG, ["amp.enabled=true"])
    with pytest.raises(DeviceError, match=r"amp.enabled is true but this process runs on the CPU"):
        amp.precision(cfg["amp"], "cpu")


@pytest.mark.parametrize(("dtype", "scaled"), [("float16", True), ("bfloat16", False)])
def test_only_float16_has_a_loss_scaler(dtype: str, scaled: bool) -> None:
    chosen = amp.precision({"enabled": True, "dtype": dtype, "level": "O1"}, "gpu:0")
    assert (chosen.dtype, chosen.level, chosen.scaler is not None) == (dtype, "O1", scaled)


def test_paddles_cpu_autocast_is_a_no_op_which_is_why_amp_refuses_the_cpu() -> None:
    """If a future Paddle CPU build autocasts, this fails and the CPU refusal should be revisited."""
    layer = paddle.nn.Linear(4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with amp.Precision("bfloat16").autocast():
            out = layer(paddle.randn([2, 4]))
    assert out.dtype == paddle.float32


@pytest.mark.parametrize(("precision", "factor"), [
    (amp.Precision("bfloat16"), 1.0), (amp.Precision("float16", "O1", amp.LossScaler(scale=1024.0)), 1024.0)])
def test_the_loss_to_backpropagate_is_float32_and_scaled_only_under_float16(precision: amp.Precision,
                                                                              factor: float) -> None:
    low = paddle.to_tensor(1.5).astype(precision.dtype)
    scaled = precision.scaled(low)
    assert scaled.dtype == paddle.float32 and scaled.item() == 1.5 * factor


def test_pretraining_with_amp_on_the_cpu_stops_before_any_work(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pretrain", "-c", str(TINY_CONFIG), "-o", f"output_dir={tmp_path / 'runs'}",
                     "-o", "amp.enabled=true"]) == 2
    assert "amp.enabled is true but this process runs on the CPU" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
