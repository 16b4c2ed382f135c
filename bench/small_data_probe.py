"""How strong is the random-init baseline on a small dataset, and why? (README "Small real datasets".)

For each backbone (``random`` or a pretraining run folder) prints kNN top-1 (k=20, cosine, as ``byol linear-eval``)
and a closed-form ridge probe on standardised features, twice: with the BatchNorm statistics the backbone carries
(what ``byol linear-eval`` uses: for a random-init network mean 0 / variance 1, i.e. every BN layer is the
identity), and with the statistics recomputed in one pass over the centre-cropped training images. Also prints
the same two probes on raw pixels (one grey channel of the centre crop), the reference a pixel-separable dataset
sets for any encoder. Runs in seconds on one core for 32-pixel images at width 8.

    python bench/small_data_probe.py -c configs/byol/linear_digits.yaml random results/<pretrain run> ...
"""

from __future__ import annotations

import argparse

import numpy as np
import paddle

from byol_lib.config import load_config
from byol_lib.data.augment import eval_transform, normalize
from byol_lib.data.datasets import build_dataset
from byol_lib.evaluate import compute_features
from byol_lib.knn import knn_eval
from byol_lib.linear import build_backbone, load_pretrained


def ridge_top1(a: np.ndarray, ya: np.ndarray, b: np.ndarray, yb: np.ndarray, classes: int, lam: float = 1.0) -> float:
    """One-vs-all ridge regression on features standardised by the train part; top-1 on ``b``."""
    mu, sd = a.mean(0), a.std(0) + 1e-6
    a1 = np.c_[(a - mu) / sd, np.ones(len(a))]
    b1 = np.c_[(b - mu) / sd, np.ones(len(b))]
    w = np.linalg.solve(a1.T @ a1 + lam * np.eye(a1.shape[1]), a1.T @ np.eye(classes)[ya])
    return float(((b1 @ w).argmax(1) == yb).mean())


def recalibrate_bn(backbone: paddle.nn.Layer, images: np.ndarray, aug: dict) -> None:
    """BN running statistics := the batch statistics of one pass over ``images`` (all at once)."""
    for layer in backbone.sublayers():
        if isinstance(layer, paddle.nn.BatchNorm2D):
            layer._momentum = 0.0
    backbone.train()
    with paddle.no_grad():
        backbone(normalize(paddle.to_tensor(images), aug))
    backbone.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", required=True, help="a linear-evaluation config (datasets, backbone)")
    parser.add_argument("backbones", nargs="+", help="'random' or pretraining run folders / checkpoints")
    parser.add_argument("--seed", type=int, default=0, help="paddle.seed before building each backbone")
    args = parser.parse_args()
    cfg = load_config(args.config, [])
    aug = cfg["augmentation"]
    train = build_dataset(cfg["dataloader"]["train"]["dataset"], "train")
    val = build_dataset(cfg["dataloader"]["val"]["dataset"], "val")
    classes = len(train.classes)
    centre = np.stack([eval_transform(train.image(i), aug) for i in range(len(train))])
    val_centre = np.stack([eval_transform(val.image(i), aug) for i in range(len(val))])

    def pixels(x: np.ndarray) -> np.ndarray:  # eval_transform gives [3, S, S]: keep the first channel
        return x[:, 0].reshape(len(x), -1).astype(np.float32)

    a, b = pixels(centre), pixels(val_centre)
    print(f"pixels: knn20 {100 * knn_eval(a, train.labels, b, val.labels, ks=(20,))[20]:.1f}  "
          f"ridge {100 * ridge_top1(a, train.labels, b, val.labels, classes):.1f}")
    for source in args.backbones:
        paddle.seed(args.seed)
        backbone = build_backbone(cfg)
        if source != "random":
            load_pretrained(backbone, source)
        row = []
        for mode in ("stored BN", "recomputed BN"):
            if mode == "recomputed BN":
                recalibrate_bn(backbone, centre, aug)
            a, ya = compute_features(backbone, train, aug, batch_size=256)
            b, yb = compute_features(backbone, val, aug, batch_size=256)
            row.append(f"{mode}: knn20 {100 * knn_eval(a, ya, b, yb, ks=(20,))[20]:.1f} "
                       f"ridge {100 * ridge_top1(a, ya, b, yb, classes):.1f}")
        print(f"{source}: " + "  |  ".join(row), flush=True)


if __name__ == "__main__":
    main()
