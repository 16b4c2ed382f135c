"""The BYOL module: shapes, which parameters learn, gradient isolation, and the EMA update."""

from __future__ import annotations

import math

import numpy as np
import paddle
import pytest

from byol_lib.config import load_config
from byol_lib.ema import update_target, weights
from byol_lib.model import BYOL, Conv2D, MaxPool, ResNet, byol_from_config, linear
from byol_lib.optim import LARS, excluded_by_name
from byol_lib.plan import resolve

from .conftest import TINY_CONFIG


def tiny_model(*overrides: str) -> BYOL:
    cfg = resolve(load_config(TINY_CONFIG, overrides), 1, 128, 10)
    paddle.seed(0)
    return byol_from_config(cfg["model"], 10)


def batch(n: int = 8, size: int = 16) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    paddle.seed(1)
    return paddle.randn([n, 3, size, size]), paddle.randn([n, 3, size, size]), paddle.randint(0, 10, [n])


@pytest.mark.parametrize(("depth", "stem", "size", "channels"), [
    (18, "cifar", 16, 64), (34, "imagenet", 64, 64), (50, "imagenet", 64, 256)])
def test_resnet_output_width(depth: int, stem: str, size: int, channels: int) -> None:
    net = ResNet(depth, stem, width=8)
    assert net.out_channels == channels
    assert net(paddle.randn([2, 3, size, size])).shape == [2, channels]


def test_resnet50_parameter_count_matches_the_standard_model() -> None:
    net = ResNet(50, "imagenet", width=64)
    assert sum(int(np.prod(p.shape)) for p in weights(net)) == 23_508_032  # torchvision R50 minus fc


@pytest.mark.parametrize("layer", ["conv", "linear"])
def test_default_init_is_haikus_truncated_normal_without_variance_correction(layer: str) -> None:
    """Haiku's Conv2D and Linear default: TruncatedNormal(stddev=1/sqrt(fan_in)) on [-2, 2], real std 0.8796x."""
    paddle.seed(0)
    weight = (Conv2D(256, 128, 3, 1, "same") if layer == "conv" else linear(2048, 512)).weight.numpy()
    fan_in = 256 * 9 if layer == "conv" else 2048
    scaled = weight.ravel() * math.sqrt(fan_in)
    assert scaled.size >= 290_000
    assert scaled.std() == pytest.approx(0.8796, abs=0.004)  # std of a unit normal truncated to [-2, 2]
    assert np.abs(scaled).max() <= 2.0 + 1e-6 and abs(scaled.mean()) < 0.005


# (input size, kernel, stride) -> JAX 'SAME' padding (before, after): the output has ceil(size / stride) pixels
SAME_PADS = {(8, 3, 2): (0, 1), (9, 3, 2): (1, 1), (224, 7, 2): (2, 3), (225, 7, 2): (3, 3), (112, 3, 2): (0, 1),
             (8, 1, 2): (0, 0), (9, 1, 2): (0, 0), (8, 3, 1): (1, 1), (8, 7, 2): (2, 3)}


def numpy_conv(x: np.ndarray, w: np.ndarray, stride: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """Cross-correlation by explicit loops over a zero-padded copy: the reference of the padding tests."""
    padded = np.pad(x, ((0, 0), (0, 0), rows, cols))
    k = w.shape[2]
    ho, wo = (padded.shape[2] - k) // stride + 1, (padded.shape[3] - k) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = padded[:, :, i * stride:i * stride + k, j * stride:j * stride + k]
            out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w)
    return out


@pytest.mark.parametrize(("height", "width", "kernel", "stride"),
                         [(8, 9, 3, 2), (224, 225, 7, 2), (112, 8, 3, 2), (8, 9, 1, 2), (8, 8, 3, 1), (8, 8, 7, 2)])
@pytest.mark.parametrize("padding", ["same", "symmetric"])
def test_conv_padding_shapes_and_pixel_alignment(height: int, width: int, kernel: int, stride: int,
                                                 padding: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, height, width)).astype(np.float32)
    layer = Conv2D(3, 4, kernel, stride, padding)
    w = layer.weight.numpy()
    if padding == "same":
        rows, cols = SAME_PADS[(height, kernel, stride)], SAME_PADS[(width, kernel, stride)]
    else:  # paddle.vision / PASSL: kernel // 2 on every side
        rows = cols = (kernel // 2, kernel // 2)
    got = layer(paddle.to_tensor(x)).numpy()
    assert got.shape == (2, 4, -(-height // stride), -(-width // stride))  # both rules: ceil(size / stride)
    np.testing.assert_allclose(got, numpy_conv(x, w, stride, rows, cols), rtol=1e-4, atol=1e-4)


def test_same_and_symmetric_padding_differ_by_one_pixel_on_even_inputs() -> None:
    """A one-hot 3x3 kernel (centre tap) at stride 2 reads input pixel 2i (+1 with 'SAME' on even inputs)."""
    x = np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8)
    for padding, offset in (("same", 1), ("symmetric", 0)):
        layer = Conv2D(1, 1, 3, 2, padding)
        centre = np.zeros((1, 1, 3, 3), dtype=np.float32)
        centre[0, 0, 1, 1] = 1.0
        layer.weight.set_value(centre)
        np.testing.assert_array_equal(layer(paddle.to_tensor(x)).numpy()[0, 0], x[0, 0, offset::2, offset::2])


@pytest.mark.parametrize(("size", "padding"), [(8, "same"), (9, "same"), (8, "symmetric"), (9, "symmetric")])
def test_max_pool_padding(size: int, padding: str) -> None:
    x = np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32)
    before, after = SAME_PADS[(size, 3, 2)] if padding == "same" else (1, 1)
    padded = np.pad(x, ((0, 0), (0, 0), (before, after), (before, after)), constant_values=-np.inf)
    out = -(-size // 2)
    want = np.array([[padded[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(2, 3)) for j in range(out)]
                     for i in range(out)]).transpose(2, 3, 0, 1)
    np.testing.assert_array_equal(MaxPool(padding)(paddle.to_tensor(x)).numpy(), want)


def test_target_starts_as_copy_and_gets_no_gradient() -> None:
    model = tiny_model()
    for theta, xi in zip(weights(model.online), weights(model.target), strict=True):
        np.testing.assert_array_equal(theta.numpy(), xi.numpy())
    assert all(xi.stop_gradient for xi in model.target.parameters())
    model(*batch())["loss"].backward()
    assert all(p.grad is None for p in model.target.parameters())
    assert all(p.grad is not None for p in model.online_parameters())


def test_independent_target_init_switch() -> None:
    model = tiny_model("model.align_init_network=False")
    differs = [not np.array_equal(a.numpy(), b.numpy())
               for a, b in zip(weights(model.online), weights(model.target), strict=True)]
    assert any(differs)


def test_classifier_gradient_does_not_reach_the_encoder() -> None:
    model = tiny_model()
    model(*batch())["classifier_loss"].backward()
    assert all(p.grad is None or not np.any(p.grad.numpy()) for p in model.online.parameters())
    assert np.any(model.classifier.weight.grad.numpy())


def test_last_layer_bias_switch() -> None:
    assert tiny_model().predictor.mlp[3].bias is None
    assert tiny_model("model.predictor.last_bias=True").predictor.mlp[3].bias is not None


def test_one_step_moves_target_by_one_minus_tau_times_the_gap() -> None:
    model = tiny_model()
    optimizer = LARS(model.online_parameters(), weight_decay=1e-6)
    xi_before = [p.numpy().copy() for p in weights(model.target)]
    model(*batch())["loss"].backward()
    optimizer.step(lr=0.5)
    theta_after = [p.numpy().copy() for p in weights(model.online)]
    assert any(not np.array_equal(a, b) for a, b in zip(theta_after, xi_before, strict=True))
    tau = 0.9
    update_target(model.online, model.target, tau)
    stats_before = model.target.encoder.bn1._mean.numpy().copy()
    for xi0, theta, xi1 in zip(xi_before, theta_after, weights(model.target), strict=True):
        np.testing.assert_allclose(xi1.numpy() - xi0, (1 - tau) * (theta - xi0), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(model.target.encoder.bn1._mean.numpy(), stats_before)  # statistics not averaged


def test_bias_and_norm_parameters_are_exactly_the_excluded_ones() -> None:
    model = tiny_model("model.neck.last_bias=True")
    patterns = [".b_0", "batch_norm"]
    for name, p in model.named_parameters():
        if name.endswith(("_mean", "_variance")):
            continue
        assert excluded_by_name(p.name, patterns) == (len(p.shape) == 1), (name, p.name)


def test_target_batch_norm_uses_batch_statistics() -> None:
    model = tiny_model()
    before = model.target.encoder.bn1._mean.numpy().copy()
    model(*batch())
    assert not np.allclose(model.target.encoder.bn1._mean.numpy(), before)  # running stats moved: train mode


@pytest.mark.parametrize("sync_predictor", [True, False])
def test_multi_gpu_runs_synchronise_every_batch_norm(sync_predictor: bool) -> None:
    from byol_lib.distributed import Context
    from byol_lib.train import synchronize_batch_norm

    cfg = resolve(load_config(TINY_CONFIG, [f"model.sync_predictor_bn={sync_predictor}"]), 2, 128, 10)
    paddle.seed(0)
    model = byol_from_config(cfg["model"], 10)
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    synchronize_batch_norm(model, cfg, Context(rank=0, world_size=2, device="gpu:0"))
    kinds = {name: type(layer).__name__ for name, layer in model.named_sublayers()}
    norms = {name: kind for name, kind in kinds.items() if "BatchNorm" in kind}
    assert all(kind == "SyncBatchNorm" for name, kind in norms.items() if not name.startswith("predictor"))
    predictor_kinds = {kind for name, kind in norms.items() if name.startswith("predictor")}
    assert predictor_kinds == ({"SyncBatchNorm"} if sync_predictor else {"BatchNorm1D"})  # D4 when off
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k].numpy()) for k in before)
    assert all(p.stop_gradient for p in model.target.parameters())


def test_cpu_runs_keep_plain_batch_norm() -> None:
    from byol_lib.distributed import Context
    from byol_lib.train import synchronize_batch_norm

    cfg = resolve(load_config(TINY_CONFIG), 2, 128, 10)
    model = byol_from_config(cfg["model"], 10)
    synchronize_batch_norm(model, cfg, Context(rank=0, world_size=2, device="cpu"))
    assert not any(type(layer).__name__ == "SyncBatchNorm" for layer in model.sublayers())
