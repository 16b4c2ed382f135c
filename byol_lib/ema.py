"""The target network: a copy-initialised exponential moving average of the online network (paper Eq. 1, §3.3).

Only weights are averaged. BatchNorm running statistics (which Paddle stores as parameters named
``_mean``/``_variance``) are not: the target keeps its own, computed in its own train-mode forward,
as in JAX and PASSL.
"""

from __future__ import annotations

import paddle
import paddle.nn as nn

_BN_STATISTICS = ("._mean", "._variance")


def weights(layer: nn.Layer) -> list[paddle.Tensor]:
    """Learnable parameters of ``layer`` in registration order, without BN running statistics."""
    return [p for name, p in layer.named_parameters() if not name.endswith(_BN_STATISTICS)
            and not name.startswith(tuple(s[1:] for s in _BN_STATISTICS))]


@paddle.no_grad()
def copy_parameters(source: nn.Layer, destination: nn.Layer) -> None:
    """Make ``destination``'s weights equal to ``source``'s."""
    for src, dst in zip(weights(source), weights(destination), strict=True):
        dst.copy_(src, False)


@paddle.no_grad()
def update_target(online: nn.Layer, target: nn.Layer, tau: float) -> None:
    """xi <- tau * xi + (1 - tau) * theta for every weight (paper Eq. 1), after the optimiser step."""
    for theta, xi in zip(weights(online), weights(target), strict=True):
        xi.subtract_(theta).scale_(tau).add_(theta)  # tau*(xi - theta) + theta; in-place ops only (lerp_ is slow)
