"""PASSL's initialisation of the BYOL networks (deviation D6), applied to a built model instead of ours.

What PASSL's networks end up with (D6 in docs/sources.md):

* every ``Conv2D``: an untruncated normal with std 1/sqrt(fan_in), fan_in = in_channels x kh x kw. (PASSL's
  ResNet first draws its convolutions kaiming-normal with fan_out, then BYOL's ``net_init`` overwrites them; the
  first draw leaves no trace in the weights, so it is not repeated here.)
* every ``Linear`` (projector, predictor, online classifier): Paddle's defaults, because ``net_init``'s Linear
  branch tests ``nn.Conv2D`` and never matches and ``NonLinearNeckV2.init_parameters`` is never called. The
  weights are drawn by a freshly built ``paddle.nn.Linear`` of the same shape, so they follow whatever this
  Paddle version's default is.
* BatchNorm scale 1, offset 0: the same as ours (``zero_init_residual: False``), left as built.

Ours (the default, ``model.init: jax``) is Haiku's: truncated normals with std 1/sqrt(fan_in) (see ``model.py``).
"""

from __future__ import annotations

import math

import paddle
import paddle.nn as nn

from byol_lib.ema import copy_parameters
from byol_lib.model import BYOL


def conv_std(layer: nn.Conv2D) -> float:
    """1/sqrt(fan_in) of a convolution (weight shape [out, in / groups, kh, kw])."""
    _, cin, kh, kw = layer.weight.shape
    return 1.0 / math.sqrt(cin * kh * kw)


@paddle.no_grad()
def passl_initialize(model: BYOL, align_target: bool) -> None:
    """Re-draw every convolution and linear layer of ``model`` as PASSL does; copy online to target if aligned."""
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, nn.Conv2D):
            layer.weight.set_value(paddle.normal(0.0, conv_std(layer), layer.weight.shape))
        elif isinstance(layer, nn.Linear):
            cin, cout = layer.weight.shape
            fresh = nn.Linear(cin, cout, bias_attr=None if layer.bias is not None else False)
            layer.weight.set_value(fresh.weight)
            if layer.bias is not None:
                layer.bias.set_value(fresh.bias)
    if align_target:
        copy_parameters(model.online, model.target)
