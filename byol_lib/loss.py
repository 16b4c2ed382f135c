"""BYOL's symmetric normalised-MSE loss (paper Eq. 2)."""

from __future__ import annotations

import paddle

_LOW_PRECISION = (paddle.float16, paddle.bfloat16)


def l2_normalize(x: paddle.Tensor) -> paddle.Tensor:
    """x / ||x|| row-wise, with JAX's guard: x * rsqrt(max(sum x^2, 1e-12))."""
    return x * paddle.rsqrt(paddle.clip((x * x).sum(axis=-1, keepdim=True), min=1e-12))


def normalized_mse(prediction: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
    """Per-sample ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z), in [0, 4]."""
    diff = l2_normalize(prediction) - l2_normalize(target)
    return (diff * diff).sum(axis=-1)


def byol_loss(p1: paddle.Tensor, p2: paddle.Tensor, z1: paddle.Tensor, z2: paddle.Tensor) -> paddle.Tensor:
    """Both directions summed per sample (q(z1) vs z2', q(z2) vs z1'), averaged over the batch: [0, 8].

    Computed in float32 whatever the network's precision (under mixed precision the heads' outputs arrive in
    bfloat16/float16 and are cast up first, so normalisation and squares keep float32's range)."""
    p1, p2, z1, z2 = (x.astype("float32") if x.dtype in _LOW_PRECISION else x for x in (p1, p2, z1, z2))
    return (normalized_mse(p1, z2) + normalized_mse(p2, z1)).mean()
