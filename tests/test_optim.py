"""LARS against float64 numpy re-implementations, closed forms and Paddle's own lars_momentum kernel."""

from __future__ import annotations  # noqa: I001  (byol_lib before paddle)

from collections.abc import Callable, Sequence

import byol_lib  # noqa: F401  (before paddle: quiet logs, thread count)
import numpy as np
import paddle
import paddle.nn as nn
import pytest

from byol_lib.optim import LARS, excluded_by_name

PATTERNS = (".b_0", "batch_norm")
LRS = (0.5, 1.0, 0.8, 0.3, 0.1)  # a changing lr shows where lr enters (after vs inside the momentum buffer)
STRONG = {"momentum": 0.9, "eta": 0.05, "weight_decay": 0.1}  # updates large enough to see every term
PAPER = {"momentum": 0.9, "eta": 1e-3, "weight_decay": 1e-6}
Arrays = dict[str, np.ndarray]


def make_model(seed: int = 0) -> nn.Sequential:
    """Linear -> BN1D -> ReLU -> Linear, with fresh auto names (linear_0, batch_norm1d_0, linear_1)."""
    paddle.seed(seed)
    with paddle.utils.unique_name.guard():
        return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1D(5), nn.ReLU(), nn.Linear(5, 3))


def trainable(model: nn.Layer) -> list[paddle.Tensor]:
    return [p for p in model.parameters() if not p.stop_gradient]


def random_grads(model: nn.Layer, steps: int, seed: int = 1) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(p.shape).astype(np.float32) for p in trainable(model)] for _ in range(steps)]


def assign_grads(model: nn.Layer, grads: Sequence[np.ndarray]) -> None:
    """Backward of sum(p * G) leaves exactly G in p.grad."""
    loss = sum((p * paddle.to_tensor(g)).sum() for p, g in zip(trainable(model), grads, strict=True))
    loss.backward()


def params_of(model: nn.Layer) -> Arrays:
    return {p.name: p.numpy().copy() for p in model.parameters()}


def run(model: nn.Layer, opt: LARS, grads: Sequence[Sequence[np.ndarray]], lrs: Sequence[float]) -> None:
    for step_grads, lr in zip(grads, lrs, strict=True):
        opt.clear_grad()
        assign_grads(model, step_grads)
        opt.step(lr)


def ref_jax(w: np.ndarray, g: np.ndarray, mu: np.ndarray, lr: float, excluded: bool, *, momentum: float,
            eta: float, weight_decay: float) -> tuple[np.ndarray, np.ndarray]:
    """The JAX code (utils/optimizers.py): wd and trust ratio on non-excluded params, lr after the momentum buffer."""
    if not excluded:
        g = g + weight_decay * w
        w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
        g = g * (eta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0)
    mu = momentum * mu + g
    return w - lr * mu, mu


def ref_passl(w: np.ndarray, g: np.ndarray, v: np.ndarray, lr: float, excluded: bool, *, momentum: float,
              eta: float, weight_decay: float, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """Paddle's lars_momentum (D8 in docs/sources.md); excluded params have wd 0 and hence plain momentum."""
    wd = 0.0 if excluded else weight_decay
    w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
    adapt = wd > 0 and w_norm > 0 and g_norm > 0
    local_lr = lr * eta * w_norm / (g_norm + wd * w_norm + epsilon) if adapt else lr
    v = momentum * v + local_lr * (g + wd * w)
    return w - v, v


def reference_run(model: nn.Layer, grads: Sequence[Sequence[np.ndarray]], lrs: Sequence[float],
                  update: Callable[..., tuple[np.ndarray, np.ndarray]], patterns: Sequence[str],
                  **hyper: float) -> tuple[Arrays, Arrays]:
    """Float64 numpy run of ``update`` from the model's current parameters; returns (params, buffers)."""
    names = [p.name for p in trainable(model)]
    w = {p.name: p.numpy().astype(np.float64) for p in trainable(model)}
    buf = {n: np.zeros_like(w[n]) for n in names}
    for step_grads, lr in zip(grads, lrs, strict=True):
        for n, g in zip(names, step_grads, strict=True):
            excluded = excluded_by_name(n, patterns)
            w[n], buf[n] = update(w[n], g.astype(np.float64), buf[n], lr, excluded, **hyper)
    return w, buf


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-5) -> None:
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * 0.1 * np.abs(expected).max())


CASES = [
    ("jax", ref_jax, STRONG, {}),
    ("jax", ref_jax, PAPER, {}),
    ("passl", ref_passl, STRONG, {"epsilon": 1e-3}),
    ("passl", ref_passl, PAPER, {"epsilon": 1e-9}),
]


@pytest.mark.parametrize("patterns", [PATTERNS, ()])
@pytest.mark.parametrize(("formula", "ref", "hyper", "extra"), CASES)
def test_lars_matches_numpy_reference(formula: str, ref: Callable[..., tuple[np.ndarray, np.ndarray]],
                                      hyper: dict[str, float], extra: dict[str, float],
                                      patterns: Sequence[str]) -> None:
    model = make_model()
    grads = random_grads(model, len(LRS))
    before = params_of(model)
    w_ref, buf_ref = reference_run(model, grads, LRS, ref, patterns, **hyper, **extra)
    opt = LARS(model.parameters(), formula=formula, exclude_from_weight_decay=patterns, **hyper, **extra)
    run(model, opt, grads, LRS)
    after, state = params_of(model), opt.state_dict()
    assert sorted(state) == sorted(w_ref)  # BN running stats (grad None) get no buffer
    for name, value in after.items():
        if name in w_ref:
            assert_close(state[name], buf_ref[name])
            assert_close(value, w_ref[name])
            assert_close(value - before[name], w_ref[name] - before[name], rtol=1e-3)
        else:
            np.testing.assert_array_equal(value, before[name])


@pytest.mark.parametrize("formula", ["jax", "passl"])
def test_excluded_params_get_plain_momentum_sgd(formula: str) -> None:
    model = make_model()
    grads = random_grads(model, len(LRS))
    before = params_of(model)
    opt = LARS(model.parameters(), formula=formula, **STRONG)
    run(model, opt, grads, LRS)
    after = params_of(model)
    names = [p.name for p in trainable(model)]
    excluded = [n for n in names if n.endswith(".b_0") or "batch_norm" in n]
    assert sorted(excluded) == sorted(n for n in names if opt.excluded[n])
    assert len(excluded) == 4 and len(names) == 6
    for i, name in enumerate(names):
        w, buf = before[name].astype(np.float64), np.zeros(before[name].shape)
        for step_grads, lr in zip(grads, LRS, strict=True):  # plain momentum SGD, no wd, no trust ratio
            if formula == "jax":
                buf = 0.9 * buf + step_grads[i]
                w = w - lr * buf
            else:
                buf = 0.9 * buf + lr * step_grads[i]
                w = w - buf
        if name in excluded:
            assert_close(after[name], w)
        else:  # the adapted weights must differ, or this test could not tell the two apart
            assert not np.allclose(after[name], w, rtol=1e-2)


@pytest.mark.parametrize("formula", ["jax", "passl"])
def test_zero_weight_norm_uses_trust_one(formula: str) -> None:
    model = make_model()
    weight = model[0].weight
    weight.set_value(np.zeros(weight.shape, dtype=np.float32))
    grads = random_grads(model, 1)
    opt = LARS(model.parameters(), formula=formula, **STRONG)
    run(model, opt, grads, [0.7])
    # jax: g' = G + wd * 0, trust 1, mu = G, w = -lr * G; passl: local_lr = lr, v = lr * G, w = -v.
    assert_close(weight.numpy(), -0.7 * grads[0][0])
    assert_close(opt.state_dict()[weight.name], grads[0][0] * (1.0 if formula == "jax" else 0.7))


@pytest.mark.parametrize("formula", ["jax", "passl"])
def test_zero_gradient_is_finite(formula: str) -> None:
    model = make_model()
    w0 = model[0].weight.numpy().astype(np.float64)
    grads = [[np.zeros(p.shape, dtype=np.float32) for p in trainable(model)]]
    opt = LARS(model.parameters(), formula=formula, **STRONG)
    run(model, opt, grads, [0.7])
    wd = STRONG["weight_decay"]
    # jax: g' = wd * w, trust = eta * |w| / |wd * w| = eta / wd, mu = eta * w.
    # passl: |g| = 0 -> local_lr = lr, v = lr * wd * w.
    expected = w0 - 0.7 * (STRONG["eta"] if formula == "jax" else wd) * w0
    assert_close(model[0].weight.numpy(), expected)
    assert all(np.isfinite(v).all() for v in params_of(model).values())


@pytest.mark.parametrize("epsilon", [0.0, 1e-9, 1e-3])
def test_passl_formula_matches_paddle_lars_momentum_kernel(epsilon: float) -> None:
    ours, theirs = make_model(), make_model()
    grads = random_grads(ours, len(LRS))
    opt = LARS(ours.parameters(), formula="passl", epsilon=epsilon, **STRONG)
    run(ours, opt, grads, LRS)
    native = paddle.incubate.optimizer.LarsMomentumOptimizer(
        learning_rate=LRS[0], momentum=STRONG["momentum"], lars_coeff=STRONG["eta"],
        lars_weight_decay=STRONG["weight_decay"], parameter_list=trainable(theirs),
        exclude_from_weight_decay=list(PATTERNS), epsilon=epsilon)
    for step_grads, lr in zip(grads, LRS, strict=True):
        native.clear_grad()
        assign_grads(theirs, step_grads)
        native.set_lr(lr)
        native.step()
    for name, value in params_of(theirs).items():
        assert_close(params_of(ours)[name], value, rtol=1e-6)


@pytest.mark.parametrize("formula", ["jax", "passl"])
def test_state_dict_round_trip_is_bit_exact(formula: str) -> None:
    grads = random_grads(make_model(), 5)
    model = make_model()
    opt = LARS(model.parameters(), formula=formula, **PAPER)
    run(model, opt, grads[:3], LRS[:3])
    saved_params, saved_state = params_of(model), opt.state_dict()
    run(model, opt, grads[3:], LRS[3:])

    fresh = make_model(seed=123)
    for p in fresh.parameters():
        p.set_value(saved_params[p.name])
    fresh_opt = LARS(fresh.parameters(), formula=formula, **PAPER)
    fresh_opt.set_state_dict(saved_state)
    run(fresh, fresh_opt, grads[3:], LRS[3:])

    for name, value in params_of(model).items():
        np.testing.assert_array_equal(params_of(fresh)[name], value)
    resumed = fresh_opt.state_dict()
    for name, value in opt.state_dict().items():
        np.testing.assert_array_equal(resumed[name], value)


def test_set_state_dict_rejects_mismatches() -> None:
    model = make_model()
    opt = LARS(model.parameters())
    with pytest.raises(KeyError):
        opt.set_state_dict({"nope.w_0": np.zeros(3, dtype=np.float32)})
    with pytest.raises(ValueError):
        opt.set_state_dict({model[0].weight.name: np.zeros((2, 2), dtype=np.float32)})


def test_step_is_in_place_and_keeps_leaves() -> None:
    model = make_model()
    weight = model[0].weight
    ptr, ident = weight.data_ptr(), id(weight)
    opt = LARS(model.parameters(), **STRONG)
    before = weight.numpy().copy()
    run(model, opt, random_grads(model, 1), [1.0])
    assert id(model[0].weight) == ident and weight.data_ptr() == ptr
    assert not np.array_equal(weight.numpy(), before)
    assert weight.is_leaf and not weight.stop_gradient
    opt.clear_grad()
    assert all(p.grad is None for p in model.parameters())
    model(paddle.randn([4, 6])).sum().backward()  # autograd still reaches the updated parameters
    assert all(p.grad is not None for p in trainable(model))
    frozen = params_of(model)
    opt.clear_grad()
    opt.step(1.0)  # no gradients: nothing moves
    for name, value in params_of(model).items():
        np.testing.assert_array_equal(value, frozen[name])


def test_constructor_validation() -> None:
    model = make_model()
    with pytest.raises(ValueError):
        LARS(model.parameters(), formula="torch")
    with pytest.raises(ValueError):
        LARS(model.parameters() + model.parameters())


def test_excluded_by_name_on_paddle_layers() -> None:
    layers = [nn.Linear(3, 4), nn.Conv2D(3, 4, 3), nn.BatchNorm1D(4), nn.BatchNorm2D(4), nn.SyncBatchNorm(4),
              nn.Linear(3, 4, bias_attr=False), nn.Conv2D(3, 4, 1, bias_attr=False),
              paddle.vision.models.resnet18(num_classes=10)]
    params = [p for layer in layers for p in trainable(layer)]
    assert len(params) > 60
    for p in params:  # "biases and norm params" == the 1-D parameters of these layers
        assert excluded_by_name(p.name, PATTERNS) == (len(p.shape) == 1), p.name
    assert excluded_by_name("batch_norm2d_3.w_0", PATTERNS)
    assert excluded_by_name("linear_7.b_0", PATTERNS)
    assert not excluded_by_name("linear_7.w_0", PATTERNS)
    assert not excluded_by_name("linear_7.b_0", ())
    assert not excluded_by_name("conv2d_12.w_0", PATTERNS)
