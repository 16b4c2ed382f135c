"""Weighted kNN classification on frozen-backbone features (InstDisc / DINO style), and the cheap kNN monitor used
during pretraining."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import paddle

from byol_lib.evaluate import compute_features


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_predict(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray, *,
                ks: Sequence[int] = (20, 200), temperature: float = 0.07, num_classes: int | None = None,
                chunk: int = 256) -> dict[int, np.ndarray]:
    """Weighted kNN class predictions ``[N_test]`` per ``k`` (InstDisc / DINO style), numpy, ``chunk`` rows at a time.

    Features are l2-normalised; the neighbors of a test sample are the ``k`` train samples of highest cosine
    similarity (equal similarities: lower train index first); each votes for its label with weight
    ``exp(similarity / temperature)`` and the class with the largest total wins (equal totals: lower class).
    """
    train, test = _l2_normalize(train_features), _l2_normalize(test_features)
    train_labels = np.asarray(train_labels, np.int64)
    n = len(train)
    if not ks or min(ks) < 1 or max(ks) > n:
        raise ValueError(f"kNN needs 1 <= k <= {n} (the number of train features), got ks = {list(ks)}")
    if num_classes is None:
        num_classes = int(train_labels.max(initial=0)) + 1
    k_max = max(ks)
    predictions = {k: np.zeros(len(test), np.int64) for k in ks}
    for s in range(0, len(test), chunk):
        sims = test[s:s + chunk] @ train.T  # [m, n]
        neighbors = _nearest(sims, k_max)  # [m, k_max], most similar first
        near_sims = np.take_along_axis(sims, neighbors, axis=1).astype(np.float64)
        weights = np.exp(near_sims / temperature)
        near_labels = train_labels[neighbors]
        rows = np.arange(len(sims))[:, None]
        for k in ks:
            votes = np.zeros((len(sims), num_classes))
            np.add.at(votes, (np.broadcast_to(rows, (len(sims), k)), near_labels[:, :k]), weights[:, :k])
            predictions[k][s:s + chunk] = votes.argmax(axis=1)
    return predictions


def knn_eval(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
             test_labels: np.ndarray, *, ks: Sequence[int] = (20, 200), temperature: float = 0.07,
             num_classes: int | None = None, chunk: int = 256) -> dict[int, float]:
    """Weighted kNN top-1 accuracy per ``k`` (``knn_predict``'s predictions against ``test_labels``)."""
    test_labels = np.asarray(test_labels, np.int64)
    if num_classes is None:
        num_classes = int(max(np.max(train_labels, initial=0), test_labels.max(initial=0))) + 1
    predicted = knn_predict(train_features, train_labels, test_features, ks=ks, temperature=temperature,
                            num_classes=num_classes, chunk=chunk)
    return {k: float((p == test_labels).sum()) / max(len(test_labels), 1) for k, p in predicted.items()}


def _nearest(sims: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries of each row, by decreasing value then increasing index."""
    m, n = sims.shape
    if k == n:
        idx = np.broadcast_to(np.arange(n), sims.shape)
    else:
        kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1:k]  # the k-th largest value of each row
        candidates = sims >= kth  # k per row, more only when the k-th value is tied
        counts = candidates.sum(axis=1)
        idx = np.empty((m, k), dtype=np.int64)
        plain = counts == k
        idx[plain] = np.nonzero(candidates[plain])[1].reshape(-1, k)  # increasing index within each row
        for row in np.flatnonzero(~plain):
            cand = np.flatnonzero(candidates[row])
            idx[row] = cand[np.lexsort((cand, -sims[row, cand]))[:k]]
    order = np.argsort(-np.take_along_axis(sims, idx, axis=1), axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1)


class KnnMonitor:
    """kNN top-1 of an encoder on fixed subsets of the train and val splits: a cheap monitor during pretraining."""

    def __init__(self, dataset_cfg: Mapping[str, Any], aug: Mapping[str, Any], *, k: int, temperature: float,
                 num_train: int, num_val: int, batch_size: int) -> None:
        from byol_lib.data.datasets import build_dataset

        def subset(count: int) -> dict[str, Any]:
            given = dataset_cfg.get("num_images", 0)
            return {**dataset_cfg, "num_images": min(count, given) if given else count}

        self.train = build_dataset(subset(num_train), "train")
        self.val = build_dataset(subset(num_val), "val")
        self.aug, self.k, self.temperature, self.batch_size = aug, min(k, len(self.train)), temperature, batch_size

    def __call__(self, encoder: paddle.nn.Layer) -> float:
        train_x, train_y = compute_features(encoder, self.train, self.aug, batch_size=self.batch_size)
        val_x, val_y = compute_features(encoder, self.val, self.aug, batch_size=self.batch_size)
        return knn_eval(train_x, train_y, val_x, val_y, ks=(self.k,), temperature=self.temperature,
                        num_classes=len(self.train.classes))[self.k]
