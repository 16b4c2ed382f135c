"""Frozen-backbone features and linear evaluation (paper and PASSL protocols, D18 in docs/sources.md); kNN is in
``knn.py``.

Linear evaluation trains a linear head on the representation of a frozen backbone: no gradient reaches the
backbone and its BN layers run in inference mode with their stored statistics, so its parameters and BN
statistics are bit-identical before and after. The head is trained by momentum SGD (Nesterov by default) on the
softmax cross-entropy, with a cosine learning rate decaying to 0 over all steps and no warm-up.

* ``protocol="paper"`` (paper App. C.1): every lr of the grid trains its own head on the train split minus
  ``holdout`` held-out images (a seeded split); the lr whose head scores best on the held-out images is chosen
  and that head is evaluated on the test split once, without retraining. ``holdout=0`` with a one-value grid is
  the JAX eval code's simplified protocol (one lr, whole train split, test once).
* ``protocol="passl"`` (PASSL ``byol_clas_r50.yaml``, D18): one lr (``lr_grid[0]``), the whole train split, the
  test split evaluated after every epoch; the last epoch is reported and the best epoch recorded, which shows
  what selecting on the test split would add. The rest of PASSL's protocol (100 epochs, N(0, 0.01) head, its val
  resize) comes with the config key ``linear_eval.protocol`` (``byol_lib.config.LINEAR_PROTOCOLS``).

All heads of a grid train in lockstep on the same batches (one backbone forward per batch serves every lr), which
equals separate runs with the same data order and the same initial head. With ``augment=False`` the features are
computed once and cached in host memory; with ``augment=True`` each epoch recomputes the train features on that
epoch's random crops and flips. Held-out and test images always use the centre-crop evaluation transform.

Batches: each epoch visits the training images in a seeded permutation, in batches of ``batch_size`` with the last
one smaller (no image dropped); the loss is the mean over the batch.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import paddle
from paddle.io import DataLoader, Dataset

from byol_lib.data.augment import eval_transform, linear_train_transform, normalize
from byol_lib.data.datasets import DatasetError, ImageDataset
from byol_lib.data.loader import epoch_permutation
from byol_lib.plan import lr_at

PROTOCOLS = ("paper", "passl")
HEAD_INITS = ("jax", "passl")
PASSL_HEAD_STD = 0.01
HOLDOUT_STREAM = 0x401D  # seeds the held-out split, apart from the data order and augmentation streams
HEAD_INIT_STREAM = 0x4EAD
TOP_K = 5
EVAL_CHUNK = 4096  # features per head forward when scoring


@dataclass
class LinearEvalSettings:
    """Linear-evaluation hyper-parameters; defaults are the paper's (App. C.1)."""

    protocol: str = "paper"
    epochs: int = 80
    batch_size: int = 1024
    lr_grid: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1, 0.05)  # base values, x batch/256 when scale_lr_by_batch
    scale_lr_by_batch: bool = True  # the JAX eval code scales its base lr by batch/256 (the paper does not say)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    augment: bool = True  # random crop + flip for training; False: features computed once and cached
    holdout: int = 10009  # train images held out to choose the lr (paper only)
    head_init: str = "jax"  # "jax": truncated normal std 1/sqrt(fan_in); "passl": N(0, 0.01); zero bias
    extend_grid: int = 0  # paper protocol: how often a choice at the grid's edge may add a lr beyond it (x2 or /2)
    standardize: bool = False  # heads see features standardised by the train part's mean/sd (folded into the head)
    seed: int = 0
    num_workers: int = 0

    def peak_lrs(self) -> tuple[float, ...]:
        """The learning rates actually used: the grid (PASSL: its first value), x batch/256 if scaled."""
        grid = self.lr_grid if self.protocol == "paper" else self.lr_grid[:1]
        scale = self.batch_size / 256.0 if self.scale_lr_by_batch else 1.0
        return tuple(lr * scale for lr in grid)

    def validate(self, num_train: int) -> None:
        """Raise ``ValueError`` naming the setting when it cannot work with ``num_train`` train images."""
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"linear eval 'protocol' = {self.protocol!r} must be one of {list(PROTOCOLS)}")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"linear eval 'head_init' = {self.head_init!r} must be one of {list(HEAD_INITS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"linear eval needs 'epochs' >= 1 and 'batch_size' >= 1, got {self.epochs}, "
                             f"{self.batch_size}")
        grid = list(self.lr_grid)
        if not grid or min(grid) <= 0 or len(set(grid)) != len(grid):
            raise ValueError(f"linear eval 'lr_grid' = {grid} must be distinct values > 0")
        if not 0.0 <= self.momentum < 1.0 or self.weight_decay < 0:
            raise ValueError(f"linear eval needs 0 <= 'momentum' < 1 and 'weight_decay' >= 0, got {self.momentum}, "
                             f"{self.weight_decay}")
        if self.protocol == "paper":
            if not 0 <= self.holdout < num_train:
                raise ValueError(f"linear eval 'holdout' = {self.holdout} must be in [0, {num_train}) "
                                 f"(the train split has {num_train} images)")
            if self.holdout == 0 and len(grid) > 1:
                raise ValueError(f"linear eval 'holdout' = 0 cannot choose among 'lr_grid' = {grid}: "
                                 "hold images out or give a single lr")


@dataclass
class LinearEvalResult:
    """What a linear evaluation found; learning rates are the scaled (actually used) values."""

    protocol: str
    chosen_lr: float
    holdout_top1: dict[float, float]  # per lr, after the last epoch (paper); empty for passl
    test_top1: float  # the chosen head (paper) / the last epoch (passl)
    test_top5: float
    history: list[dict[str, Any]]  # per epoch: epoch, seconds, lr, train_loss, holdout_top1 | test_top1, test_top5
    head: dict[str, np.ndarray]  # {"weight": [C_in, C_out], "bias": [C_out]} of the reported head
    seconds: float
    test_predictions: np.ndarray  # [N_test] int64: the reported head's top-1 class per test image
    test_labels: np.ndarray  # [N_test] int64, in the test split's index order
    grid_extended: list[float] = field(default_factory=list)  # lrs added beyond the grid's edges, in order
    best_epoch: int | None = None  # passl: the epoch with the best test top-1 (selection on the test split)
    best_test_top1: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- features


class _TransformedImages(Dataset):
    """``(epoch, index) -> (float32 [3, S, S] in [0, 1], label, trouble)``: centre crop, or the seeded train view.

    An image that cannot be decoded in strict mode gives a black placeholder and ``trouble = index`` (else -1): the
    main process decodes it again and raises the dataset's one-line error, as the pretraining loader does (an
    exception inside a loader worker would hang or print worker tracebacks)."""

    def __init__(self, images: ImageDataset, aug: Mapping[str, Any], train_transform: bool, seed: int) -> None:
        super().__init__()
        self.images, self.aug, self.train_transform, self.seed = images, dict(aug), train_transform, seed

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        epoch, index = key
        trouble = -1
        try:
            image = self.images.image(index)
        except DatasetError:
            image, trouble = np.zeros((8, 8, 3), dtype=np.uint8), index
        if self.train_transform:
            x = linear_train_transform(image, self.aug, np.random.default_rng([self.seed, epoch, index]))
        else:
            x = eval_transform(image, self.aug)
        return x, np.asarray(self.images.label(index), dtype="int64"), np.asarray(trouble, dtype="int64")

    def __len__(self) -> int:
        return len(self.images)


@contextlib.contextmanager
def frozen(backbone: paddle.nn.Layer) -> Iterator[None]:
    """Run ``backbone`` in inference mode (BN with stored statistics); restore every sublayer's mode afterwards."""
    modes = [(layer, layer.training) for layer in backbone.sublayers(include_self=True)]
    for layer, _ in modes:  # Layer.eval() would also flip Paddle's global tracer flag, which is not restored
        layer.training = False
    try:
        yield
    finally:
        for layer, training in modes:
            layer.training = training


def _feature_batches(backbone: paddle.nn.Layer, images: ImageDataset, aug: Mapping[str, Any], order: np.ndarray,
                     batch_size: int, train_transform: bool, seed: int, epoch: int,
                     num_workers: int) -> Iterator[tuple[paddle.Tensor, paddle.Tensor]]:
    """Backbone features and labels of ``images[order]`` batch by batch (the caller freezes the backbone)."""
    keys = [(epoch, int(i)) for i in order]
    batches = [keys[s:s + batch_size] for s in range(0, len(keys), batch_size)]
    dataset = _TransformedImages(images, aug, train_transform, seed)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, use_shared_memory=num_workers > 0)
    for x, labels, trouble in loader:
        for index in trouble.numpy().reshape(-1):
            if index >= 0:
                images.image(int(index))  # strict mode: raises the one-line error naming the file
        with paddle.no_grad():  # not around the yield: no-grad mode would hold in the consumer meanwhile
            y = backbone(normalize(x, aug))
        yield y, labels


def compute_features(backbone: paddle.nn.Layer, images: ImageDataset, aug: Mapping[str, Any], *, batch_size: int,
                     train_transform: bool = False, seed: int = 0, epoch: int = 0, indices: np.ndarray | None = None,
                     num_workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Frozen-backbone features ``[N, D]`` float32 and labels ``[N]`` int64 of ``images[indices]`` (all by default).

    Images get the centre-crop ``eval_transform`` or, with ``train_transform``, ``linear_train_transform`` drawn
    from a generator seeded by ``(seed, epoch, image index)``; then ``augment.normalize``.
    """
    order = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
    features, labels = [], []
    with frozen(backbone):
        for y, label in _feature_batches(backbone, images, aug, order, batch_size, train_transform, seed, epoch,
                                         num_workers):
            features.append(y.numpy().astype(np.float32, copy=False))
            labels.append(label.numpy().astype(np.int64, copy=False).reshape(-1))
    if not features:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(features), np.concatenate(labels)


# ----------------------------------------------------------------------------- heads


def init_head_weight(in_features: int, num_classes: int, method: str, seed: int) -> np.ndarray:
    """Initial head weight ``[in, out]`` float32 from a numpy generator seeded by ``seed``.

    ``"jax"`` (Haiku's ``Linear``): normal with std ``1/sqrt(in)`` truncated at 2 std (redrawn outside);
    ``"passl"`` (PASSL ``ClasHead``): normal with std 0.01.
    """
    rng = np.random.default_rng([seed, HEAD_INIT_STREAM])
    if method == "passl":
        return (rng.standard_normal((in_features, num_classes)) * PASSL_HEAD_STD).astype(np.float32)
    if method != "jax":
        raise ValueError(f"head init {method!r} must be one of {list(HEAD_INITS)}")
    z = rng.standard_normal((in_features, num_classes))
    outside = np.abs(z) > 2.0
    while outside.any():
        z[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(z) > 2.0
    return (z / math.sqrt(in_features)).astype(np.float32)


class LinearHeads:
    """``G`` linear heads on the same features, one peak lr each, trained in lockstep by momentum SGD, in numpy.

    Weights are stacked ``[G, D, C]`` (biases ``[G, C]``) so one batched matmul scores every head. The gradient of
    the mean softmax cross-entropy is the closed form ``x^T (softmax(logits) - onehot) / B``: a step is a few small
    array operations instead of an autograd graph (with Paddle's autograd the heads' per-step overhead was about
    half of a small linear evaluation). The update follows ``paddle.optimizer.Momentum`` exactly::

        g = grad + weight_decay * p;  v = momentum * v + g
        p = p - lr * (g + momentum * v)        (Nesterov)   or   p = p - lr * v
    """

    def __init__(self, weight: np.ndarray, lrs: Sequence[float], *, bias: np.ndarray | None = None,
                 momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 0.0) -> None:
        g, (d, c) = len(lrs), weight.shape
        bias = np.zeros(c, np.float32) if bias is None else bias
        self.weight = np.array(np.broadcast_to(weight, (g, d, c)), dtype=np.float32)
        self.bias = np.array(np.broadcast_to(bias, (g, c)), dtype=np.float32)
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        self._velocity = [np.zeros_like(self.weight), np.zeros_like(self.bias)]

    def logits(self, x: np.ndarray) -> np.ndarray:
        """``[G, B, C]`` logits of every head for features ``x [B, D]``."""
        return np.matmul(np.asarray(x, dtype=np.float32), self.weight) + self.bias[:, None, :]

    def step(self, x: np.ndarray, labels: np.ndarray, lrs: Sequence[float]) -> np.ndarray:
        """One SGD step of every head (head ``i`` with lr ``lrs[i]``) on the batch; returns the ``[G]`` losses."""
        x = np.asarray(x, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        shifted = self.logits(x)
        shifted -= shifted.max(axis=-1, keepdims=True)
        log_total = np.log(np.exp(shifted).sum(axis=-1))  # [G, B]
        rows = np.arange(len(labels))
        losses = (log_total - shifted[:, rows, labels]).mean(axis=1)
        dlogits = np.exp(shifted - log_total[..., None])  # softmax
        dlogits[:, rows, labels] -= 1.0
        dlogits /= len(labels)
        grads = (np.matmul(x.T, dlogits), dlogits.sum(axis=1))
        lr = np.asarray(lrs, dtype=np.float32)
        for param, velocity, grad, shape in ((self.weight, self._velocity[0], grads[0], (-1, 1, 1)),
                                             (self.bias, self._velocity[1], grads[1], (-1, 1))):
            if self.weight_decay:
                grad = grad + np.float32(self.weight_decay) * param
            velocity *= np.float32(self.momentum)
            velocity += grad
            update = grad + velocity * np.float32(self.momentum) if self.nesterov else velocity
            param -= update * lr.reshape(shape)
        return losses.astype(np.float64)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """``[G, N]`` int64: every head's top-1 class for each row of ``features``."""
        chunks = [self.logits(features[s:s + EVAL_CHUNK]).argmax(axis=-1)
                  for s in range(0, len(features), EVAL_CHUNK)]
        if not chunks:
            return np.zeros((self.weight.shape[0], 0), np.int64)
        return np.concatenate(chunks, axis=1).astype(np.int64)

    def accuracy(self, features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Top-1 and top-k (k = min(5, classes)) accuracy ``[G]`` of every head on cached features (top-k: fewer
        than k classes score strictly higher than the true one)."""
        g, _, c = self.weight.shape
        k = min(TOP_K, c)
        hits1, hitsk = np.zeros(g), np.zeros(g)
        for s in range(0, len(features), EVAL_CHUNK):
            logits = self.logits(features[s:s + EVAL_CHUNK])
            truth = np.asarray(labels[s:s + EVAL_CHUNK], dtype=np.int64)
            hits1 += (logits.argmax(axis=-1) == truth).sum(axis=1)
            true_logit = np.take_along_axis(logits, np.broadcast_to(truth[None, :, None], (g, len(truth), 1)), -1)
            hitsk += ((logits > true_logit).sum(axis=-1) < k).sum(axis=1)
        n = max(len(features), 1)
        return hits1 / n, hitsk / n

    def head(self, i: int) -> dict[str, np.ndarray]:
        """Head ``i`` as ``{"weight": [D, C], "bias": [C]}`` (``paddle.nn.Linear`` layout)."""
        return {"weight": self.weight[i].copy(), "bias": self.bias[i].copy()}


def holdout_split(num_images: int, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices ``(train part, held-out part)``: ``holdout`` images drawn by a generator seeded by ``seed``."""
    perm = np.random.default_rng([seed, HOLDOUT_STREAM]).permutation(num_images)
    return np.sort(perm[holdout:]), np.sort(perm[:holdout])


# ----------------------------------------------------------------------------- linear evaluation


@dataclass
class _TrainedHeads:
    """Heads of some learning rates trained together: their per-epoch history and final held-out top-1."""

    lrs: tuple[float, ...]
    heads: LinearHeads
    history: list[dict[str, Any]]
    holdout_top1: dict[float, float]


Features = tuple[np.ndarray, np.ndarray]  # ([N, D] float32, [N] int64 labels) of a split, in index order


def linear_eval(backbone: paddle.nn.Layer, train_images: ImageDataset, test_images: ImageDataset,
                aug: Mapping[str, Any], settings: LinearEvalSettings,
                log: Callable[[dict[str, Any]], None] | None = None,
                features: tuple[Features, Features] | None = None) -> LinearEvalResult:
    """Linear evaluation of a frozen ``backbone`` (see the module docstring); ``log`` gets each history entry.

    ``features``: the centre-crop features of the whole train and test splits (``compute_features``), when the
    caller has them already (kNN needs the same ones); then no image goes through the backbone except the random
    views of ``augment``.

    Paper protocol with ``extend_grid`` > 0: when the held-out choice is the largest (smallest) lr tried, heads
    with twice (half) that lr are trained too and the choice is made again, at most ``extend_grid`` times, so
    the reported head is not a grid edge chosen only because the grid stopped there (``grid_extended``).
    """
    start = time.perf_counter()
    s = settings
    s.validate(len(train_images))
    paper = s.protocol == "paper"
    if paper:
        train_idx, holdout_idx = holdout_split(len(train_images), s.holdout, s.seed)
    else:
        train_idx, holdout_idx = np.arange(len(train_images)), np.zeros(0, np.int64)

    def features_of(images: ImageDataset, indices: np.ndarray | None = None) -> Features:
        if features is not None:
            x, y = features[0] if images is train_images else features[1]
            return (x, y) if indices is None else (x[indices], y[indices])
        return compute_features(backbone, images, aug, batch_size=s.batch_size, indices=indices,
                                num_workers=s.num_workers)

    with frozen(backbone):
        cached = None if s.augment else features_of(train_images, train_idx)
        holdout = features_of(train_images, holdout_idx) if len(holdout_idx) else None
        test = features_of(test_images)
        affine = None
        if s.standardize:  # x -> (x - mean) * scale per dimension, from the centre-crop train part
            reference = (cached or features_of(train_images, train_idx))[0].astype(np.float64)
            affine = (reference.mean(axis=0), 1.0 / np.maximum(reference.std(axis=0), 1e-6))
            cached, holdout, test = (None if f is None else (_apply(f[0], affine), f[1])
                                     for f in (cached, holdout, test))

        def train(lrs: tuple[float, ...]) -> _TrainedHeads:
            return _train_heads(backbone, train_images, aug, s, lrs, train_idx, cached, holdout,
                                None if paper else test, log, affine)

        runs = [train(s.peak_lrs())]
        extended: list[float] = []
        best = runs[0].lrs[0]  # one lr and nothing held out: the JAX eval code's simplified protocol
        while paper and holdout is not None:
            scores = {lr: top1 for run in runs for lr, top1 in run.holdout_top1.items()}
            best = max(scores.items(), key=lambda item: item[1])[0]  # ties: the first in grid order
            tried = sorted(scores)
            edge = 2.0 * best if best == tried[-1] else 0.5 * best if best == tried[0] else None
            if edge is None or len(tried) < 2 or len(extended) >= s.extend_grid:
                break
            extended.append(edge)
            runs.append(train((edge,)))
        if paper:  # the chosen head meets the test split once
            run, chosen = next((run, run.lrs.index(best)) for run in runs if best in run.lrs)
            top1, topk = run.heads.accuracy(*test)
            test_top1, test_top5 = float(top1[chosen]), float(topk[chosen])
            best_epoch = best_top1 = None
        else:
            run, chosen = runs[0], 0
            history = run.history
            test_top1, test_top5 = history[-1]["test_top1"], history[-1]["test_top5"]
            best_entry = max(history, key=lambda e: e["test_top1"])  # what selecting on the test split would report
            best_epoch, best_top1 = best_entry["epoch"], best_entry["test_top1"]
    holdout_top1 = {lr: top1 for r in runs for lr, top1 in r.holdout_top1.items()}
    head = run.heads.head(chosen)
    if affine is not None:  # fold the standardisation in: the saved head takes the backbone's raw features
        shift, scale = affine
        weight = head["weight"].astype(np.float64) * scale[:, None]
        head = {"weight": weight.astype(np.float32), "bias": (head["bias"] - shift @ weight).astype(np.float32)}
    return LinearEvalResult(
        protocol=s.protocol, chosen_lr=run.lrs[chosen], holdout_top1=holdout_top1, test_top1=test_top1,
        test_top5=test_top5, history=runs[0].history, head=head,
        seconds=time.perf_counter() - start, test_predictions=run.heads.predict(test[0])[chosen],
        test_labels=test[1], grid_extended=extended, best_epoch=best_epoch, best_test_top1=best_top1,
        settings=dict(vars(s)),
    )


def _train_heads(backbone: paddle.nn.Layer, train_images: ImageDataset, aug: Mapping[str, Any],
                 s: LinearEvalSettings, lrs: tuple[float, ...], train_idx: np.ndarray,
                 cached: tuple[np.ndarray, np.ndarray] | None, holdout: tuple[np.ndarray, np.ndarray] | None,
                 test: tuple[np.ndarray, np.ndarray] | None,
                 log: Callable[[dict[str, Any]], None] | None,
                 affine: tuple[np.ndarray, np.ndarray] | None = None) -> _TrainedHeads:
    """Train one head per lr in lockstep for ``s.epochs``; score the held-out (and, for PASSL, test) features
    after every epoch. ``affine``: the standardisation of features computed on the fly (``augment``)."""
    total_steps = s.epochs * math.ceil(len(train_idx) / s.batch_size)
    history: list[dict[str, Any]] = []
    heads: LinearHeads | None = None  # created at the first batch, when the feature width is known
    step = 0
    for epoch in range(s.epochs):
        epoch_start = time.perf_counter()
        loss_sum, seen = np.zeros(len(lrs)), 0
        for x, labels in _train_batches(backbone, train_images, aug, s, train_idx, cached, epoch):
            if affine is not None and cached is None:
                x = _apply(x, affine)
            if heads is None:
                weight = init_head_weight(x.shape[1], len(train_images.classes), s.head_init, s.seed)
                heads = LinearHeads(weight, lrs, momentum=s.momentum, nesterov=s.nesterov,
                                    weight_decay=s.weight_decay)
            step_lrs = [lr_at(step, peak_lr=lr, warmup_steps=0, total_steps=total_steps) for lr in lrs]
            loss_sum += heads.step(x, labels, step_lrs) * x.shape[0]
            seen += x.shape[0]
            step += 1
        entry: dict[str, Any] = {"epoch": epoch + 1, "lr": dict(zip(lrs, step_lrs, strict=True)),
                                 "train_loss": dict(zip(lrs, (loss_sum / seen).tolist(), strict=True))}
        if holdout is not None:
            entry["holdout_top1"] = dict(zip(lrs, heads.accuracy(*holdout)[0].tolist(), strict=True))
        if test is not None:
            top1, topk = heads.accuracy(*test)
            entry["test_top1"], entry["test_top5"] = float(top1[0]), float(topk[0])
        entry["seconds"] = time.perf_counter() - epoch_start
        history.append(entry)
        if log is not None:
            log(entry)
    assert heads is not None
    return _TrainedHeads(lrs, heads, history, history[-1].get("holdout_top1", {}))


def _apply(x: np.ndarray, affine: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``(x - shift) * scale`` per feature dimension, float32."""
    return ((x - affine[0]) * affine[1]).astype(np.float32)


def _train_batches(backbone: paddle.nn.Layer, images: ImageDataset, aug: Mapping[str, Any],
                   s: LinearEvalSettings, train_idx: np.ndarray, cached: tuple[np.ndarray, np.ndarray] | None,
                   epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One epoch of numpy ``(features, labels)`` batches: the seeded order of ``train_idx``, ``batch_size`` at a time,
    from the cached features (aligned with ``train_idx``) or recomputed on this epoch's random crops and flips."""
    positions = epoch_permutation(len(train_idx), s.seed, epoch)
    if cached is None:
        for x, labels in _feature_batches(backbone, images, aug, train_idx[positions], s.batch_size, True, s.seed,
                                          epoch, s.num_workers):
            yield x.numpy(), labels.numpy().reshape(-1)
        return
    for i in range(0, len(positions), s.batch_size):
        batch = positions[i:i + s.batch_size]
        yield cached[0][batch], cached[1][batch]


def evaluate_head(backbone: paddle.nn.Layer, head: Mapping[str, np.ndarray], images: ImageDataset,
                  aug: Mapping[str, Any], *, batch_size: int, num_workers: int = 0) -> dict[str, float]:
    """Top-1 and top-5 accuracy of a linear ``head`` on the frozen backbone's centre-crop features of ``images``.

    Top-5 is top-``min(5, classes)`` (1.0 with 5 classes or fewer).
    """
    features, labels = compute_features(backbone, images, aug, batch_size=batch_size, num_workers=num_workers)
    heads = LinearHeads(np.asarray(head["weight"], dtype=np.float32), [0.0], bias=np.asarray(head["bias"]))
    top1, topk = heads.accuracy(features, labels)
    return {"top1": float(top1[0]), "top5": float(topk[0])}
