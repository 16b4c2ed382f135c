"""The oneDNN CPU kernels (byol_lib.fast) compute what Paddle's kernels compute, and the runtime set-up."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from byol_lib import fast, onednn, runtime
from byol_lib.config import ConfigError, load_config
from byol_lib.data.augment import device_params_length
from byol_lib.distributed import Context
from byol_lib.model import ResNet, build_model, spatial_pads
from byol_lib.plan import plan_for, resolve
from byol_lib.results import read_metrics
from byol_lib.train import Learner, build_optimizer, pretrain, train_step
from tests.conftest import TINY_CONFIG


def _close(got: np.ndarray, want: np.ndarray, rtol: float, name: str, floor: float = 1e-12) -> None:
    """Relative to the largest magnitude (plus ``floor`` for tensors near 0): float32 GEMMs sum in another order."""
    scale = float(np.abs(want).max()) + floor
    assert float(np.abs(got - want).max()) <= rtol * scale, name


@pytest.mark.parametrize("padding", ["same", "symmetric"])
@pytest.mark.parametrize(("cin", "cout", "size", "kernel", "stride"), [
    (3, 8, 9, 3, 1), (5, 6, 8, 3, 2), (5, 6, 9, 3, 2), (4, 7, 8, 1, 2), (4, 4, 6, 1, 1), (3, 5, 11, 7, 2),
    (3, 5, 12, 7, 2), (16, 32, 8, 3, 1),
])
def test_conv_matches_paddle_forward_and_gradients(cin: int, cout: int, size: int, kernel: int, stride: int,
                                                   padding: str) -> None:
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((3, cin, size, size + 1)).astype(np.float32)  # one odd and one even axis
    w_np = rng.standard_normal((cout, cin, kernel, kernel)).astype(np.float32)
    pads = spatial_pads(size, size + 1, kernel, stride, padding)
    x, w = paddle.to_tensor(x_np, stop_gradient=False), paddle.to_tensor(w_np, stop_gradient=False)
    y = F.conv2d(x, w, stride=stride, padding=list(pads))
    g_np = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(paddle.to_tensor(g_np))

    xc = paddle.to_tensor(x_np.transpose(0, 2, 3, 1).copy(), stop_gradient=False)
    wc = paddle.to_tensor(w_np, stop_gradient=False)
    for _ in range(2):  # the second call reuses the cached primitives
        yc = fast.conv2d_nhwc(xc, wc, stride, pads)
        yc.backward(paddle.to_tensor(g_np.transpose(0, 2, 3, 1).copy()))
        _close(yc.numpy().transpose(0, 3, 1, 2), y.numpy(), 1e-6, "output")
        _close(wc.grad.numpy(), w.grad.numpy(), 1e-6, "weight gradient")
        _close(xc.grad.numpy().transpose(0, 3, 1, 2), x.grad.numpy(), 1e-6, "input gradient")
        xc.clear_gradient()
        wc.clear_gradient()


def test_conv_without_input_gradient_and_without_autograd() -> None:
    x = paddle.randn([2, 8, 8, 3])  # an image batch: no input gradient wanted
    w = paddle.randn([4, 3, 3, 3])
    w.stop_gradient = False
    out = fast.conv2d_nhwc(x, w, 1, (1, 1, 1, 1))
    out.sum().backward()
    assert x.grad is None and w.grad is not None
    with paddle.no_grad():
        again = fast.conv2d_nhwc(x, w, 1, (1, 1, 1, 1))
    assert again.stop_gradient
    np.testing.assert_array_equal(again.numpy(), out.numpy())


@pytest.mark.parametrize(("rows", "fan_in", "fan_out"), [(5, 7, 3), (32, 64, 256), (1, 16, 4)])
def test_linear_matches_numpy(rows: int, fan_in: int, fan_out: int) -> None:
    """``x @ W + b`` through oneDNN's GEMM, and its gradients, against float64 numpy."""
    rng = np.random.default_rng(rows)
    x_np, w_np = rng.standard_normal((rows, fan_in)), rng.standard_normal((fan_in, fan_out))
    b_np, dy = rng.standard_normal(fan_out), rng.standard_normal((rows, fan_out))
    x, w, b = (paddle.to_tensor(a.astype(np.float32), stop_gradient=False) for a in (x_np, w_np, b_np))
    y = fast.linear(x, w, b)
    y.backward(paddle.to_tensor(dy.astype(np.float32)))
    _close(y.numpy(), x_np @ w_np + b_np, 1e-6, "output")
    _close(x.grad.numpy(), dy @ w_np.T, 1e-6, "input gradient")
    _close(w.grad.numpy(), x_np.T @ dy, 1e-6, "weight gradient")
    _close(b.grad.numpy(), dy.sum(axis=0), 1e-6, "bias gradient")
    with paddle.no_grad():
        _close(fast.linear(x, w, None).numpy(), x_np @ w_np, 1e-6, "no bias, no autograd")


def _batch_norm_reference(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, dy: np.ndarray, eps: float,
                          relu: bool) -> tuple[np.ndarray, ...]:
    """Training-mode BatchNorm (+ ReLU) of one NHWC batch and its closed-form gradients, in float64."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    xhat = (x - mean) / np.sqrt(var + eps)
    y = xhat * gamma + beta
    if relu:
        dy = dy * (y > 0)
        y = np.maximum(y, 0.0)
    count = x.shape[0] * x.shape[1] * x.shape[2]
    dbeta, dgamma = dy.sum(axis=(0, 1, 2)), (dy * xhat).sum(axis=(0, 1, 2))
    dx = gamma / np.sqrt(var + eps) * (dy - dbeta / count - xhat * dgamma / count)
    return y, dx, dgamma, dbeta, mean, var


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("channels", [4, 8, 16, 24])  # oneDNN picks other kernels per channel count
def test_batch_norm_per_view_matches_a_numpy_reference(channels: int, relu: bool) -> None:
    """Each of two views normalised with its own statistics, the ReLU fused, gradients summed over the views for
    the parameters, running statistics moved once per view in view order: against float64 numpy."""
    rng = np.random.default_rng(channels)
    layer = paddle.nn.BatchNorm2D(channels, momentum=0.9, epsilon=1e-5)
    gamma, beta = rng.standard_normal(channels).astype(np.float32), rng.standard_normal(channels).astype(np.float32)
    layer.weight.set_value(gamma)
    layer.bias.set_value(beta)
    running = [rng.standard_normal(channels).astype(np.float32), rng.random(channels).astype(np.float32) + 0.5]
    layer._mean.set_value(running[0])
    layer._variance.set_value(running[1])
    views = [rng.standard_normal((3, 5, 6, channels)).astype(np.float32) * scale + scale for scale in (1.0, 3.0)]
    dy = rng.standard_normal((6, 5, 6, channels)).astype(np.float32)
    x = paddle.to_tensor(np.concatenate(views), stop_gradient=False)
    y = fast.batch_norm_nhwc(x, layer, 2, relu)
    y.backward(paddle.to_tensor(dy))
    refs = [_batch_norm_reference(v, gamma, beta, d, 1e-5, relu) for v, d in zip(views, np.split(dy, 2), strict=True)]
    _close(y.numpy(), np.concatenate([r[0] for r in refs]), 1e-5, "output")
    _close(x.grad.numpy(), np.concatenate([r[1] for r in refs]), 1e-4, "input gradient")
    _close(layer.weight.grad.numpy(), refs[0][2] + refs[1][2], 1e-5, "scale gradient")
    _close(layer.bias.grad.numpy(), refs[0][3] + refs[1][3], 1e-5, "shift gradient")
    for index, got in ((4, layer._mean), (5, layer._variance)):  # Paddle's rule: biased variance, momentum 0.9
        want = running[index - 4].astype(np.float64)
        for ref in refs:
            want = 0.9 * want + 0.1 * ref[index]
        _close(got.numpy(), want, 1e-6, "running statistic")


@pytest.mark.parametrize(("stem", "padding"), [("cifar", "same"), ("imagenet", "same"), ("imagenet", "symmetric")])
def test_encoder_matches_in_train_and_eval_mode(stem: str, padding: str) -> None:
    paddle.seed(1)
    net = ResNet(18, stem, width=4, padding=padding, cpu_kernels="paddle")
    twin = copy.deepcopy(net)
    twin.cpu_kernels = "onednn"
    size = 32 if stem == "cifar" else 64  # the ImageNet stem at 32 px leaves 1x1 maps: BN over 4 values
    x = paddle.randn([4, 3, size, size])
    for training in (True, False):
        for layer in (net, twin):
            layer.train() if training else layer.eval()
        want = net(x)
        got = twin(x)
        _close(got.numpy(), want.numpy(), 1e-5, f"features (training={training})")
    for (name, a), b in zip(net.state_dict().items(), twin.state_dict().values(), strict=True):
        _close(b.numpy(), a.numpy(), 1e-5, name)  # BN running statistics updated alike


@pytest.mark.parametrize("kernels", ["onednn", "paddle"])
def test_views_in_one_pass_match_separate_calls(kernels: str) -> None:
    """Two views through the encoder at once (``views=2``) normalise each with its own BatchNorm statistics: over
    three training passes the features, weight gradients and running statistics equal two separate calls."""
    paddle.seed(2)
    joint = ResNet(18, "cifar", width=4, cpu_kernels=kernels)
    separate = copy.deepcopy(joint)
    separate.cpu_kernels = "paddle"
    rng = np.random.default_rng(3)
    for _ in range(3):
        views = [paddle.to_tensor(rng.standard_normal((4, 3, 16, 16)).astype(np.float32)) for _ in range(2)]
        views[1] = views[1] * 3.0 + 1.0  # other statistics than view 1: pooled statistics would show
        projection = paddle.to_tensor(rng.standard_normal((8, 32)).astype(np.float32))
        got = joint(paddle.concat(views), 2)
        want = paddle.concat([separate(views[0]), separate(views[1])])
        _close(got.numpy(), want.numpy(), 1e-5, "features")
        (got * projection).sum().backward()
        (want * projection).sum().backward()
        trained = [(name, a, b) for (name, a), b in zip(separate.named_parameters(), joint.parameters(), strict=True)
                   if not a.stop_gradient]  # BatchNorm's running statistics are parameters without gradients
        for name, a, b in trained:
            _close(b.grad.numpy(), a.grad.numpy(), 5e-5, f"gradient of {name}")  # BN sums in another order
            a.clear_gradient()
            b.clear_gradient()
    for (name, a), b in zip(separate.state_dict().items(), joint.state_dict().values(), strict=True):
        _close(b.numpy(), a.numpy(), 1e-6, name)
    pooled = ResNet(18, "cifar", width=4, cpu_kernels=kernels)
    pooled.set_state_dict(separate.state_dict())
    assert float((pooled(paddle.concat(views), 1) - got).abs().max()) > 1e-2  # one batch of both views differs


def test_without_onednn_auto_falls_back_and_onednn_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Paddle wheel without oneDNN 3.x (other platforms): ``auto`` takes Paddle's kernels, ``onednn`` says why not."""
    monkeypatch.setattr(onednn, "available", lambda: False)
    assert not fast.use_onednn(paddle.zeros([2, 3, 8, 8]), "auto")
    with pytest.raises(RuntimeError, match="libdnnl.so.3.*use cpu_kernels: paddle"):
        fast.use_onednn(paddle.zeros([2, 3, 8, 8]), "onednn")


def test_kernel_choice_and_onednn_threads() -> None:
    assert fast.use_onednn(paddle.zeros([2, 3, 8, 8]), "auto")
    assert fast.use_onednn(paddle.zeros([2, 3, 8, 8]), "onednn")
    assert not fast.use_onednn(paddle.zeros([2, 3, 8, 8]), "paddle")
    assert not fast.use_onednn(paddle.zeros([2, 3, 8, 8], dtype="float64"), "auto")
    assert fast.check_kernels("blas") == "onednn"  # the numpy-BLAS kernels' name in older results folders
    assert load_config(None, ["dataloader.train.dataset.name=Synthetic", "cpu_kernels=blas"])["cpu_kernels"] == "blas"
    with pytest.raises(ValueError, match="cpu kernels must be one of"):
        ResNet(18, "cifar", width=4, cpu_kernels="mkl")
    before = runtime.threads()
    try:
        for threads in (1, 2):
            runtime.set_threads(threads)
            fast.conv2d_nhwc(paddle.ones([2, 4, 4, 3]), paddle.ones([2, 3, 3, 3]), 1, (1, 1, 1, 1))
            assert onednn._openmp().omp_get_max_threads() == threads
    finally:
        runtime.set_threads(before)


def _train(kernels: str, steps: int) -> tuple[list[float], dict[str, np.ndarray]]:
    """``steps`` calls of the loop's ``train_step`` (device stage, model, LARS, EMA) on one fixed batch whose device
    augmentations are all off, from seed-0 weights; lr from the plan (0.2, no warm-up, cosine over the steps)."""
    cfg = load_config(None, ["dataloader.train.dataset.name=Synthetic", "model.backbone.depth=18",
                             "model.backbone.width=8", "model.backbone.stem=cifar", "model.neck.hid_channels=64",
                             "model.neck.out_channels=16", "model.predictor.hid_channels=64",
                             "model.predictor.out_channels=16", f"cpu_kernels={kernels}", "augmentation.image_size=16",
                             "dataloader.train.sampler.batch_size=16", "lr_scheduler.warmup_epochs=0",
                             "lr_scheduler.learning_rate=0.2", "epochs=1"])
    plan = plan_for(cfg, 1, 16 * steps, 10)
    paddle.seed(0)
    model = build_model(resolve(cfg, 1, 16 * steps, 10))
    learner = Learner(model, build_optimizer(model, cfg), plan, cfg["augmentation"], Context(0, 1, "cpu"))
    rng = np.random.default_rng(0)
    views = [paddle.to_tensor(rng.random((16, 3, 16, 16), dtype=np.float32)) for _ in range(2)]
    off = paddle.zeros([16, device_params_length(cfg["augmentation"])])
    batch = (views[0], off, views[1], off, paddle.to_tensor(rng.integers(0, 10, 16)))
    losses = [train_step(learner, step, batch)["loss"] for step in range(steps)]
    return losses, {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("steps", "rtol"), [(1, 5e-5), (2, 2e-4)])
@pytest.mark.slow
def test_training_steps_match_the_paddle_kernels(steps: int, rtol: float) -> None:
    """Same initial weights and batch: losses and every weight and BN statistic after the steps agree.

    Float32 summation-order differences grow through LARS and BatchNorm (2e-5 after one step, 5e-5 after
    two at lr 0.2-0.4; a third step at lr 0.6 amplifies single BN parameters to 1e-2 with either padding,
    while the losses still agree to 1e-6); biases feeding a BatchNorm have ~0 gradients, hence the 1e-3 floor.
    """
    want_losses, want = _train("paddle", steps)
    got_losses, got = _train("onednn", steps)
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    assert got.keys() == want.keys()
    for key in want:
        _close(got[key], want[key], rtol, key, floor=1e-3)


@pytest.mark.slow
def test_config_key_cpu_kernels_selects_the_kernels_of_a_run(tmp_path: Path) -> None:
    """``cpu_kernels`` is validated, picks the kernels of a run (float32 sums in another order: the losses differ
    in their last bits), and leaves the run's numbers nearly unchanged."""
    with pytest.raises(ConfigError, match="cpu_kernels"):
        load_config(TINY_CONFIG, ["cpu_kernels=mkl"])
    losses = {}
    for choice in ("paddle", "onednn"):
        cfg = load_config(TINY_CONFIG, [f"output_dir={tmp_path / choice}", f"cpu_kernels={choice}", "epochs=1"])
        run = pretrain(cfg, verbose=False)
        losses[choice] = [row["loss"] for row in read_metrics(run)]
    assert losses["onednn"] != losses["paddle"]
    np.testing.assert_allclose(losses["onednn"], losses["paddle"], rtol=1e-4)


_THREADS_PROBE = """
import os
import byol_lib
from byol_lib import runtime
threads = runtime.configure()
pid = os.fork()
if pid == 0:
    print("child", runtime.blas_threads(), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
print("parent", threads, runtime.blas_threads())
"""


@pytest.mark.slow
def test_blas_threads_follow_the_configured_count_and_forked_children_use_one() -> None:
    if runtime.blas_threads() is None:
        pytest.skip("numpy is not linked against OpenBLAS")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    env["BYOL_NUM_THREADS"] = "2"
    out = subprocess.run([sys.executable, "-c", _THREADS_PROBE], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["child", "1", "parent", "2", "2"]


@pytest.mark.slow
def test_user_openblas_threads_are_left_alone() -> None:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "BYOL_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", _THREADS_PROBE], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[-3:] == ["parent", "2", "1"]


@pytest.mark.slow
def test_onednn_training_is_bitwise_reproducible() -> None:
    """The same steps give the same bits (resume after a crash stays bit-identical)."""
    first_losses, first = _train("onednn", 2)
    second_losses, second = _train("onednn", 2)
    assert first_losses == second_losses
    for key in first:
        np.testing.assert_array_equal(second[key], first[key], err_msg=key)


_WORKER_CORES_PROBE = """
import byol_lib
from byol_lib import runtime
before = runtime.configure()
with runtime.cores_left_for_workers(1) as inside:
    during = runtime.blas_threads()
print(before, inside, during, runtime.blas_threads())
"""


@pytest.mark.parametrize("chosen", [None, "3"])
@pytest.mark.slow
def test_pretraining_leaves_a_core_per_loader_worker_unless_the_user_chose(chosen: str | None) -> None:
    cores = len(os.sched_getaffinity(0))
    if runtime.blas_threads() is None or cores < 2:
        pytest.skip("needs numpy linked against OpenBLAS and 2 cores")
    expected = [chosen] * 4 if chosen else [str(n) for n in (cores, cores - 1, cores - 1, cores)]
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "BYOL_NUM_THREADS",
                                                              "OMP_NUM_THREADS")}
    if chosen:
        env["BYOL_NUM_THREADS"] = chosen
    out = subprocess.run([sys.executable, "-c", _WORKER_CORES_PROBE], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == expected
