"""The BYOL module: shapes, which parameters learn, gradient isolation, and the EMA update."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from byol_lib.config import load_config, resolve
from byol_lib.ema import update_target, weights
from byol_lib.model import BYOL, ResNet
from byol_lib.optim import LARS, excluded_by_name

from .conftest import TINY_CONFIG


def tiny_model(*overrides: str) -> BYOL:
    cfg = resolve(load_config(TINY_CONFIG, overrides), 1, 128, 10)
    paddle.seed(0)
    return BYOL(cfg["model"], 10)


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
    from byol_lib.train import synchronise_batch_norm

    cfg = resolve(load_config(TINY_CONFIG, [f"model.sync_predictor_bn={sync_predictor}"]), 2, 128, 10)
    paddle.seed(0)
    model = BYOL(cfg["model"], 10)
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    synchronise_batch_norm(model, cfg, Context(rank=0, world_size=2, device="gpu:0"))
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
    from byol_lib.train import synchronise_batch_norm

    cfg = resolve(load_config(TINY_CONFIG), 2, 128, 10)
    model = BYOL(cfg["model"], 10)
    synchronise_batch_norm(model, cfg, Context(rank=0, world_size=2, device="cpu"))
    assert not any(type(layer).__name__ == "SyncBatchNorm" for layer in model.sublayers())
