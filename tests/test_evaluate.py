"""Linear evaluation and kNN against numpy re-computations, Paddle's Momentum optimiser and brute force."""

from __future__ import annotations  # noqa: I001  (byol_lib before paddle)

import math
from collections import Counter

import byol_lib  # noqa: F401  (before paddle: quiet logs, thread count)
import numpy as np
import paddle
import paddle.nn as nn
import pytest

from byol_lib.data.augment import AUGMENT_DEFAULTS, eval_transform, linear_train_transform
from byol_lib.data.datasets import ImageDataset
from byol_lib.data.loader import epoch_permutation
from byol_lib.evaluate import (
    LinearEvalSettings,
    LinearHeads,
    compute_features,
    evaluate_head,
    holdout_split,
    init_head_weight,
    linear_eval,
)
from byol_lib.knn import knn_eval
from byol_lib.model import ResNet
from byol_lib.plan import lr_at

SIZE = 16
AUG = {**AUGMENT_DEFAULTS, "image_size": SIZE}
MEAN, STD = np.array(AUG["mean"], np.float32), np.array(AUG["std"], np.float32)


class ColorImages(ImageDataset):
    """Noisy 20x20 images whose class is the dominant colour channel; records which images were read."""

    def __init__(self, count: int, seed: int, num_classes: int = 3) -> None:
        rng = np.random.default_rng(seed)
        self.labels = np.arange(count, dtype=np.int64) % num_classes
        base = rng.uniform(40, 140, size=(count, 20, 20, 3))
        base[np.arange(count), :, :, self.labels] += 90
        self.data = np.clip(base, 0, 255).astype(np.uint8)
        self.classes = [f"c{i}" for i in range(num_classes)]
        self.bad_files, self.image_size = [], (20, 20)
        self.reads: Counter[int] = Counter()

    def image(self, index: int) -> np.ndarray:
        self.reads[int(index)] += 1
        return self.data[index].copy()


class PooledConv(nn.Layer):
    """1x1 convolution -> BN -> global mean: features linear in the mean colour (a separable toy backbone)."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2D(3, width, 1, bias_attr=False)
        self.bn = nn.BatchNorm2D(width)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.bn(self.conv(x)).mean(axis=[2, 3])


def make_backbone(seed: int = 0) -> PooledConv:
    """A PooledConv with non-trivial BN statistics and affine parameters."""
    paddle.seed(seed)
    net = PooledConv()
    net.train()
    with paddle.no_grad():
        for _ in range(3):
            net(paddle.randn([8, 3, 4, 4]) * 2.0 + 0.5)
    net.bn.weight.set_value(paddle.uniform([6], min=0.5, max=1.5))
    net.bn.bias.set_value(paddle.uniform([6], min=-0.5, max=0.5))
    return net


def numpy_features(net: PooledConv, views: np.ndarray) -> np.ndarray:
    """The backbone in numpy with BN in inference mode (stored statistics)."""
    x = (views - MEAN[:, None, None]) / STD[:, None, None]
    w = net.conv.weight.numpy()[:, :, 0, 0].astype(np.float64)
    y = np.einsum("oc,nchw->nohw", w, x)
    bn = net.bn
    scale = bn.weight.numpy() / np.sqrt(bn._variance.numpy() + bn._epsilon)
    y = (y - bn._mean.numpy()[:, None, None]) * scale[:, None, None] + bn.bias.numpy()[:, None, None]
    return y.mean(axis=(2, 3))


def state(layer: nn.Layer) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in layer.state_dict().items()}


def quick(**changes: object) -> LinearEvalSettings:
    base = {"epochs": 6, "batch_size": 16, "lr_grid": (1.0, 0.1, 0.001), "scale_lr_by_batch": False,
            "augment": False, "holdout": 24}
    return LinearEvalSettings(**{**base, **changes})


@pytest.fixture(scope="module")
def data() -> tuple[ColorImages, ColorImages]:
    return ColorImages(96, seed=1), ColorImages(45, seed=2)


# ----------------------------------------------------------------------------- features


def test_compute_features_matches_numpy_and_restores_modes(data: tuple[ColorImages, ColorImages]) -> None:
    train, _ = data
    net = make_backbone()
    net.train()
    net.bn.eval()  # a mixed state must come back exactly
    before = state(net)
    feats, labels = compute_features(net, train, AUG, batch_size=7)
    views = np.stack([eval_transform(train.data[i], AUG) for i in range(len(train))])
    np.testing.assert_allclose(feats, numpy_features(net, views), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(labels, train.labels)
    assert feats.dtype == np.float32 and labels.dtype == np.int64
    assert net.training and net.conv.training and not net.bn.training

    indices = np.array([5, 2, 9])
    feats, labels = compute_features(net, train, AUG, batch_size=2, train_transform=True, seed=3, epoch=4,
                                     indices=indices)
    views = np.stack([linear_train_transform(train.data[i], AUG, np.random.default_rng([3, 4, i])) for i in indices])
    np.testing.assert_allclose(feats, numpy_features(net, views), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(labels, train.labels[indices])
    for key, value in state(net).items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


# ----------------------------------------------------------------------------- the optimiser


def numpy_sgd(w: np.ndarray, b: np.ndarray, batches: list, lrs: list[float], *, momentum: float, nesterov: bool,
              weight_decay: float) -> tuple[np.ndarray, np.ndarray]:
    """Softmax cross-entropy gradients in closed form and Paddle's Momentum update, float64."""
    w, b = w.astype(np.float64), b.astype(np.float64)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for (x, y), lr in zip(batches, lrs, strict=True):
        logits = x @ w + b
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(y)), y] -= 1.0
        grads = (x.T @ p / len(y), p.mean(axis=0))
        new = []
        for param, grad, v in ((w, grads[0], vw), (b, grads[1], vb)):
            grad = grad + weight_decay * param
            v *= momentum
            v += grad
            new.append(param - lr * (grad + momentum * v if nesterov else v))
        w, b = new
    return w, b


@pytest.mark.parametrize(("nesterov", "weight_decay"), [(True, 0.0), (False, 0.0), (True, 0.05)])
def test_momentum_update_matches_numpy_and_paddle(nesterov: bool, weight_decay: float) -> None:
    rng = np.random.default_rng(0)
    d, c, steps = 7, 4, 5
    w0 = rng.standard_normal((d, c)).astype(np.float32) * 0.3
    batches = [(rng.standard_normal((6, d)).astype(np.float32), rng.integers(0, c, 6)) for _ in range(steps)]
    lrs = [0.5, 0.4, 0.3, 0.2, 0.1]
    heads = LinearHeads(w0, [1.0], momentum=0.9, nesterov=nesterov, weight_decay=weight_decay)
    for (x, y), lr in zip(batches, lrs, strict=True):
        heads.step(x, y, [lr])
    ours = heads.head(0)
    w_ref, b_ref = numpy_sgd(w0, np.zeros(c, np.float32), batches, lrs, momentum=0.9, nesterov=nesterov,
                             weight_decay=weight_decay)
    np.testing.assert_allclose(ours["weight"], w_ref, atol=1e-6)
    np.testing.assert_allclose(ours["bias"], b_ref, atol=1e-6)

    layer = nn.Linear(d, c)
    layer.weight.set_value(w0)
    layer.bias.set_value(np.zeros(c, np.float32))
    opt = paddle.optimizer.Momentum(learning_rate=lrs[0], momentum=0.9, parameters=layer.parameters(),
                                    use_nesterov=nesterov, weight_decay=weight_decay or None)
    for (x, y), lr in zip(batches, lrs, strict=True):
        opt.set_lr(lr)
        loss = nn.functional.cross_entropy(layer(paddle.to_tensor(x)), paddle.to_tensor(y).reshape([-1, 1]))
        loss.backward()
        opt.step()
        opt.clear_grad()
    np.testing.assert_allclose(ours["weight"], layer.weight.numpy(), atol=1e-6)
    np.testing.assert_allclose(ours["bias"], layer.bias.numpy(), atol=1e-6)


def test_heads_trained_together_equal_one_trained_alone() -> None:
    rng = np.random.default_rng(1)
    w0 = init_head_weight(9, 5, "jax", seed=0)
    together = LinearHeads(w0, [0.3, 0.1, 0.02])
    alone = LinearHeads(w0, [0.1])
    for step in range(6):
        x = rng.standard_normal((8, 9)).astype(np.float32)
        y = rng.integers(0, 5, 8)
        factor = 0.5 * (1 + math.cos(math.pi * step / 6))
        together.step(x, y, [0.3 * factor, 0.1 * factor, 0.02 * factor])
        alone.step(x, y, [0.1 * factor])
    for key, value in alone.head(0).items():
        np.testing.assert_allclose(together.head(1)[key], value, rtol=0, atol=1e-6)
    assert not np.allclose(together.head(0)["weight"], together.head(1)["weight"])


def test_head_init() -> None:
    w = init_head_weight(400, 300, "jax", seed=0)
    assert w.shape == (400, 300) and w.dtype == np.float32
    assert np.abs(w).max() <= 2.0 / math.sqrt(400)
    assert abs(w.std() * math.sqrt(400) - 0.8796) < 0.01  # std of a unit normal truncated to [-2, 2]
    np.testing.assert_array_equal(w, init_head_weight(400, 300, "jax", seed=0))
    assert abs(init_head_weight(400, 300, "passl", seed=0).std() - 0.01) < 2e-4


# ----------------------------------------------------------------------------- linear evaluation


def test_paper_protocol(data: tuple[ColorImages, ColorImages]) -> None:
    train, test = data
    net = make_backbone()
    net.train()  # linear_eval must freeze BN anyway, and give the mode back
    before = state(net)
    train.reads.clear()
    settings = quick(augment=True, epochs=3)
    result = linear_eval(net, train, test, AUG, settings)
    for key, value in state(net).items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    assert net.training and net.bn.training

    # holdout images are read once (eval transform), the train part once per epoch, and the two are disjoint
    train_part, held = holdout_split(len(train), settings.holdout, settings.seed)
    assert len(held) == settings.holdout and not set(held) & set(train_part)
    assert {i for i, n in train.reads.items() if n == 1} == set(held.tolist())
    assert {i for i, n in train.reads.items() if n == settings.epochs} == set(train_part.tolist())
    assert sum(train.reads.values()) == len(held) + settings.epochs * len(train_part)

    assert set(result.holdout_top1) == set(settings.lr_grid)
    best = max(result.holdout_top1.values())
    assert result.chosen_lr == next(lr for lr in settings.lr_grid if result.holdout_top1[lr] == best)
    assert result.holdout_top1 == result.history[-1]["holdout_top1"]
    assert result.test_top1 >= 0.95 and result.test_top5 == 1.0  # 3 classes: top-5 is trivially right

    # the reported numbers, recomputed in numpy from the returned head
    w, b = result.head["weight"], result.head["bias"]
    feats, labels = compute_features(net, train, AUG, batch_size=16, indices=held)
    assert result.holdout_top1[result.chosen_lr] == pytest.approx(np.mean((feats @ w + b).argmax(1) == labels))
    feats, labels = compute_features(net, test, AUG, batch_size=16)
    assert result.test_top1 == pytest.approx(np.mean((feats @ w + b).argmax(1) == labels))
    assert evaluate_head(net, result.head, test, AUG, batch_size=16) == {"top1": result.test_top1,
                                                                         "top5": result.test_top5}


@pytest.mark.parametrize("augment", [False, True])
def test_linear_eval_matches_numpy_training(data: tuple[ColorImages, ColorImages], augment: bool) -> None:
    """The whole paper protocol replayed in numpy: split, data order, views, batches, cosine lr, Nesterov SGD."""
    train, test = data
    net = make_backbone()
    settings = quick(augment=augment, epochs=2, lr_grid=(0.5, 0.05), batch_size=20, seed=4)
    result = linear_eval(net, train, test, AUG, settings)
    part, _ = holdout_split(len(train), settings.holdout, settings.seed)
    steps_per_epoch = math.ceil(len(part) / 20)
    total = settings.epochs * steps_per_epoch
    batches = []
    for epoch in range(settings.epochs):
        order = part[epoch_permutation(len(part), settings.seed, epoch)]
        for start in range(0, len(order), 20):
            chunk = order[start:start + 20]
            views = [linear_train_transform(train.data[i], AUG, np.random.default_rng([4, epoch, i])) if augment
                     else eval_transform(train.data[i], AUG) for i in chunk]
            batches.append((numpy_features(net, np.stack(views)), train.labels[chunk]))
    lrs = [lr_at(step, peak_lr=result.chosen_lr, warmup_steps=0, total_steps=total) for step in range(total)]
    w0 = init_head_weight(6, 3, "jax", settings.seed)
    w, b = numpy_sgd(w0, np.zeros(3, np.float32), batches, lrs, momentum=0.9, nesterov=True, weight_decay=0.0)
    np.testing.assert_allclose(result.head["weight"], w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.head["bias"], b, rtol=1e-4, atol=1e-5)


def test_grid_run_equals_single_lr_run(data: tuple[ColorImages, ColorImages]) -> None:
    train, test = data
    net = make_backbone()
    grid = linear_eval(net, train, test, AUG, quick())
    alone = linear_eval(net, train, test, AUG, quick(lr_grid=(grid.chosen_lr,)))
    assert alone.chosen_lr == grid.chosen_lr
    assert alone.holdout_top1[grid.chosen_lr] == grid.holdout_top1[grid.chosen_lr]
    assert alone.test_top1 == grid.test_top1
    for key, value in grid.head.items():
        np.testing.assert_allclose(alone.head[key], value, rtol=0, atol=1e-6)
    assert grid.test_top1 >= 0.95
    assert grid.holdout_top1[0.001] < grid.holdout_top1[grid.chosen_lr]  # the grid matters here


@pytest.mark.parametrize(("grid", "direction"), [((0.004, 0.002), 2.0), ((50.0, 100.0), 0.5)])
def test_a_choice_at_the_grid_edge_extends_the_grid(data: tuple[ColorImages, ColorImages], grid: tuple,
                                                    direction: float) -> None:
    """Too low (high) a grid: lrs x2 (/2) are added beyond the edge until the choice is inside, at most
    ``extend_grid`` times; the outcome equals a plain run of the grid holding every lr tried."""
    train, test = data
    net = make_backbone()
    result = linear_eval(net, train, test, AUG, quick(lr_grid=grid, extend_grid=3))
    edge = max(grid) if direction > 1 else min(grid)
    assert result.grid_extended == [edge * direction**k for k in range(1, len(result.grid_extended) + 1)]
    assert 1 <= len(result.grid_extended) <= 3
    tried = (*grid, *result.grid_extended)
    plain = linear_eval(net, train, test, AUG, quick(lr_grid=tried, extend_grid=0))
    assert plain.grid_extended == [] and plain.holdout_top1 == pytest.approx(result.holdout_top1)
    assert (plain.chosen_lr, plain.test_top1) == (result.chosen_lr, result.test_top1)
    scores = sorted(result.holdout_top1.items())
    inside = scores[0][0] < result.chosen_lr < scores[-1][0]
    assert inside or len(result.grid_extended) == 3
    capped = linear_eval(net, train, test, AUG, quick(lr_grid=grid, extend_grid=0))
    assert capped.grid_extended == [] and set(capped.holdout_top1) == set(grid)


@pytest.mark.parametrize("augment", [False, True])
def test_standardised_heads_fold_into_a_raw_feature_head(data: tuple[ColorImages, ColorImages],
                                                         augment: bool) -> None:
    """With ``standardize`` the heads see (x - mean) / sd of the train part; the returned head takes raw features
    and reproduces the reported accuracy and predictions, and the run equals one on features standardised here."""
    train, test = data
    net = make_backbone()
    result = linear_eval(net, train, test, AUG, quick(standardize=True, augment=augment))
    feats, labels = compute_features(net, test, AUG, batch_size=16)
    logits = feats @ result.head["weight"] + result.head["bias"]
    np.testing.assert_array_equal(logits.argmax(1), result.test_predictions)
    assert result.test_top1 == pytest.approx(np.mean(logits.argmax(1) == labels))
    if augment:
        return
    part, _ = holdout_split(len(train), quick().holdout, 0)
    train_x, train_y = compute_features(net, train, AUG, batch_size=16)
    mean, sd = train_x[part].astype(np.float64).mean(0), train_x[part].astype(np.float64).std(0)
    scaled = (((train_x - mean) / sd).astype(np.float32), train_y), (((feats - mean) / sd).astype(np.float32), labels)
    by_hand = linear_eval(net, train, test, AUG, quick(), features=scaled)
    assert by_hand.holdout_top1 == pytest.approx(result.holdout_top1, abs=1e-9)
    assert by_hand.chosen_lr == result.chosen_lr and by_hand.test_top1 == pytest.approx(result.test_top1)


def test_passl_protocol(data: tuple[ColorImages, ColorImages]) -> None:
    train, test = data
    net = make_backbone()
    logged: list[dict] = []
    settings = LinearEvalSettings(protocol="passl", epochs=3, batch_size=16, lr_grid=(0.4, 0.1), holdout=0,
                                  head_init="passl", augment=False)
    result = linear_eval(net, train, test, AUG, settings, log=logged.append)
    assert logged == result.history and [e["epoch"] for e in logged] == [1, 2, 3]
    assert result.chosen_lr == pytest.approx(0.4 * 16 / 256) and result.holdout_top1 == {}
    assert result.test_top1 == logged[-1]["test_top1"] and result.test_top5 == logged[-1]["test_top5"]
    tops = [e["test_top1"] for e in logged]
    assert result.best_test_top1 == max(tops) and result.best_epoch == 1 + tops.index(max(tops))
    steps = 3 * math.ceil(len(train) / 16)  # every train image, no holdout
    for epoch, entry in enumerate(logged, start=1):
        last = epoch * steps // 3 - 1
        assert entry["lr"] == {result.chosen_lr: lr_at(last, peak_lr=result.chosen_lr, warmup_steps=0,
                                                       total_steps=steps)}
    assert evaluate_head(net, result.head, test, AUG, batch_size=16)["top1"] == result.test_top1


def test_resnet_backbone_is_frozen(data: tuple[ColorImages, ColorImages]) -> None:
    train, test = data
    paddle.seed(0)
    net = ResNet(18, "cifar", 4)
    net.train()
    with paddle.no_grad():
        net(paddle.randn([4, 3, SIZE, SIZE]))  # non-default BN statistics
    before = state(net)
    result = linear_eval(net, train, test, AUG, quick(augment=True, epochs=1, lr_grid=(0.1,), holdout=0))
    after = state(net)
    assert any(k.endswith("_mean") for k in after)
    for key, value in after.items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    assert net.training and result.head["weight"].shape == (net.out_channels, 3)


def test_settings_are_checked() -> None:
    train = ColorImages(12, seed=0)
    with pytest.raises(ValueError, match="holdout"):
        linear_eval(make_backbone(), train, train, AUG, quick(holdout=0))
    with pytest.raises(ValueError, match="protocol"):
        linear_eval(make_backbone(), train, train, AUG, quick(protocol="simclr"))
    with pytest.raises(ValueError, match="holdout"):
        linear_eval(make_backbone(), train, train, AUG, quick(holdout=12))


# ----------------------------------------------------------------------------- kNN


def brute_knn(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray, k: int,
              temperature: float) -> float:
    """One test sample at a time: sort by (-similarity, index), vote, lowest class wins a tie."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    correct = 0
    for query, truth in zip(test, test_labels, strict=True):
        sims = [float(np.dot(query, t)) for t in train]
        ranked = sorted(range(len(train)), key=lambda j: (-sims[j], j))[:k]
        votes: dict[int, float] = {}
        for j in ranked:
            votes[int(train_labels[j])] = votes.get(int(train_labels[j]), 0.0) + math.exp(sims[j] / temperature)
        best = max(votes.values())
        correct += min(c for c, v in votes.items() if v == best) == truth
    return correct / len(test)


def test_knn_matches_brute_force_with_ties() -> None:
    rng = np.random.default_rng(0)
    train = rng.standard_normal((60, 8)).astype(np.float32)
    labels = rng.integers(0, 4, 60)
    train[10] = train[3] * 2.0  # same direction, another class: a similarity tie and a vote tie
    labels[3], labels[10] = 2, 1
    train[20] = train[3]
    labels[20] = 0
    test = np.concatenate([rng.standard_normal((25, 8)), train[[3, 3, 10, 20]] + 1e-3]).astype(np.float32)
    test_labels = np.concatenate([rng.integers(0, 4, 25), [0, 1, 2, 0]])
    ks = (1, 2, 3, 5)
    together = knn_eval(train, labels, test, test_labels, ks=ks, temperature=0.1, chunk=7)
    for k in ks:
        expected = brute_knn(train, labels, test, test_labels, k, 0.1)
        alone = knn_eval(train, labels, test, test_labels, ks=(k,), temperature=0.1)  # the k-th neighbour tied
        assert together[k] == pytest.approx(expected) and alone[k] == pytest.approx(expected), k
    assert knn_eval(train, labels, test, test_labels, ks=(60,), temperature=0.5) == {
        60: pytest.approx(brute_knn(train, labels, test, test_labels, 60, 0.5))}
    with pytest.raises(ValueError, match="k <="):
        knn_eval(train, labels, test, test_labels, ks=(61,))


def test_head_accuracy_matches_a_sort_of_the_logits() -> None:
    rng = np.random.default_rng(3)
    w, b = rng.standard_normal((6, 8)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    x, y = rng.standard_normal((50, 6)).astype(np.float32), rng.integers(0, 8, 50)
    top1, top5 = LinearHeads(w, [0.0], bias=b).accuracy(x, y)
    ranked = np.argsort(-(x.astype(np.float64) @ w + b), axis=1)
    assert top1[0] == pytest.approx(np.mean(ranked[:, 0] == y))
    assert top5[0] == pytest.approx(np.mean((ranked[:, :5] == y[:, None]).any(axis=1)))
    assert 0 < top1[0] < top5[0] < 1
