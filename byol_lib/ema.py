"""The target network: a copy-initialised exponential moving average of the online network (reference §2)."""

from __future__ import annotations

import paddle
import paddle.nn as nn


def copy_parameters(source: nn.Layer, destination: nn.Layer) -> None:
    """Copy parameters (not BN statistics: the target keeps its own, as in JAX and PASSL)."""
    with paddle.no_grad():
        for src, dst in zip(source.parameters(), destination.parameters(), strict=True):
            dst.copy_(src, False)


@paddle.no_grad()
def update_target(online: nn.Layer, target: nn.Layer, tau: float) -> None:
    """xi <- tau * xi + (1 - tau) * theta for every parameter (paper Eq. 1), after the optimiser step."""
    for theta, xi in zip(online.parameters(), target.parameters(), strict=True):
        xi.lerp_(theta, 1.0 - tau)
