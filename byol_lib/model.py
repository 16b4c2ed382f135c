"""The networks: ResNet encoders, the projector/predictor MLP, and the BYOL module (reference §1).

Parameter names follow ``paddle.vision``'s ResNet (``conv1``, ``bn1``, ``layer{1-4}.{b}.conv{k}``,
``downsample.{0,1}``) so that backbones convert to PaddleClas names by rule, and the MLP keys
(``mlp.0``, ``mlp.1``, ``mlp.3``) match PASSL's ``NonLinearNeckV2``.

Initialisation follows the JAX release (Haiku defaults): convolutions variance-scaling fan-in with
a truncated normal, linear layers a truncated normal with std 1/sqrt(fan_in), zero biases, BN
scale 1 / offset 0 (the last BN of a block 0 only with ``zero_init_residual``). BN: momentum 0.9,
eps 1e-5 as in JAX and PASSL.

On the CPU (float32 batches, when ``byol_lib.fast.use_blas`` says so) the encoder runs in CNHW layout
(channels first, then the batch): convolutions through numpy's BLAS, BatchNorm on the ``[1, C, N*H, W]``
view, max-pool per plane; same weights, same arithmetic up to float32 summation order. Elsewhere (GPU,
small CPU batches on several threads, or the config key ``cpu_kernels: paddle``) it is Paddle's NCHW layers as usual.
"""

from __future__ import annotations

import math
from typing import Any

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from byol_lib import fast
from byol_lib.ema import copy_parameters, weights
from byol_lib.loss import byol_loss, l2_normalize

BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5
_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
_TRUNCATED_STD_CORRECTION = 0.87962566103423978  # std of a unit normal truncated to [-2, 2]


def _truncated_normal(std: float) -> nn.initializer.Initializer:
    return nn.initializer.TruncatedNormal(mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


def conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2D:
    """A bias-free convolution with 'same'-style symmetric padding and Haiku's fan-in init."""
    fan_in = cin * kernel * kernel
    std = 1.0 / math.sqrt(fan_in) / _TRUNCATED_STD_CORRECTION
    return nn.Conv2D(cin, cout, kernel, stride=stride, padding=kernel // 2, bias_attr=False,
                     weight_attr=paddle.ParamAttr(initializer=_truncated_normal(std)))


def batch_norm(channels: int, zero_scale: bool = False) -> nn.BatchNorm2D:
    scale = nn.initializer.Constant(0.0 if zero_scale else 1.0)
    return nn.BatchNorm2D(channels, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                          weight_attr=paddle.ParamAttr(initializer=scale))


def _conv(layer: nn.Conv2D, x: paddle.Tensor, cnhw: bool) -> paddle.Tensor:
    """``layer(x)``, or the same convolution of a CNHW ``x`` through the numpy-BLAS kernel."""
    if not cnhw:
        return layer(x)
    return fast.conv2d_cnhw(x, layer.weight, layer._stride[0], layer._padding)


def _bn(layer: nn.BatchNorm2D, x: paddle.Tensor, cnhw: bool) -> paddle.Tensor:
    """``layer(x)``, or the same train/eval-mode BatchNorm of a CNHW ``x`` (statistics over N, H, W)."""
    if not cnhw:
        return layer(x)
    c, n, h, w = x.shape
    out = F.batch_norm(x.reshape([1, c, n * h, w]), layer._mean, layer._variance, weight=layer.weight,
                       bias=layer.bias, training=layer.training, momentum=layer._momentum, epsilon=layer._epsilon,
                       use_global_stats=layer._use_global_stats)
    return out.reshape([c, n, h, w])


def linear(cin: int, cout: int, bias: bool = True) -> nn.Linear:
    return nn.Linear(cin, cout,
                     weight_attr=paddle.ParamAttr(initializer=_truncated_normal(1.0 / math.sqrt(cin))),
                     bias_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(0.0)) if bias else False)


class BasicBlock(nn.Layer):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, zero_init_residual: bool) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = conv(cin, width, 3, stride), batch_norm(width)
        self.conv2, self.bn2 = conv(width, cout, 3), batch_norm(cout, zero_init_residual)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x: paddle.Tensor, cnhw: bool = False) -> paddle.Tensor:
        out = F.relu(_bn(self.bn1, _conv(self.conv1, x, cnhw), cnhw))
        out = _bn(self.bn2, _conv(self.conv2, out, cnhw), cnhw)
        return F.relu(out + _shortcut_forward(self.downsample, x, cnhw))


class Bottleneck(nn.Layer):
    """1x1 -> 3x3 (strided, ResNet v1.5 as in Haiku and paddle.vision) -> 1x1 (ResNet-50)."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, zero_init_residual: bool) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = conv(cin, width, 1), batch_norm(width)
        self.conv2, self.bn2 = conv(width, width, 3, stride), batch_norm(width)
        self.conv3, self.bn3 = conv(width, cout, 1), batch_norm(cout, zero_init_residual)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x: paddle.Tensor, cnhw: bool = False) -> paddle.Tensor:
        out = F.relu(_bn(self.bn1, _conv(self.conv1, x, cnhw), cnhw))
        out = F.relu(_bn(self.bn2, _conv(self.conv2, out, cnhw), cnhw))
        out = _bn(self.bn3, _conv(self.conv3, out, cnhw), cnhw)
        return F.relu(out + _shortcut_forward(self.downsample, x, cnhw))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(conv(cin, cout, 1, stride), batch_norm(cout))


def _shortcut_forward(downsample: nn.Sequential | None, x: paddle.Tensor, cnhw: bool) -> paddle.Tensor:
    if downsample is None:
        return x
    return _bn(downsample[1], _conv(downsample[0], x, cnhw), cnhw)


class ResNet(nn.Layer):
    """ResNet v1 encoder returning the pooled representation y ([N, channels])."""

    def __init__(self, depth: int = 50, stem: str = "imagenet", width: int = 64,
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        block = Bottleneck if depth == 50 else BasicBlock
        if stem == "imagenet":
            self.conv1 = conv(3, width, 7, stride=2)
            self.maxpool: nn.Layer = nn.MaxPool2D(kernel_size=3, stride=2, padding=1)
        else:  # CIFAR stem: 3x3 stride 1, no max-pool
            self.conv1 = conv(3, width, 3)
            self.maxpool = nn.Identity()
        self.bn1 = batch_norm(width)
        cin = width
        for stage, blocks in enumerate(_BLOCKS[depth]):
            layers = []
            for b in range(blocks):
                stride = 2 if (stage > 0 and b == 0) else 1
                layers.append(block(cin, width * 2**stage, stride, zero_init_residual))
                cin = width * 2**stage * block.expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
        self.out_channels = cin

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        cnhw = fast.use_blas(x, self.conv1.weight.shape[0])
        if cnhw:  # a [C, N, H, W] tensor is a valid NCHW input of the (per-plane) max-pool
            x = x.transpose([1, 0, 2, 3])
        x = self.maxpool(F.relu(_bn(self.bn1, _conv(self.conv1, x, cnhw), cnhw)))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = block(x, cnhw)
        return x.mean(axis=[2, 3]).t() if cnhw else x.mean(axis=[2, 3])


class MLP(nn.Layer):
    """Linear -> BN -> ReLU -> Linear, the projector g and predictor q (paper §3.3)."""

    def __init__(self, cin: int, hidden: int, cout: int, last_bias: bool = False) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            linear(cin, hidden),
            nn.BatchNorm1D(hidden, momentum=BN_MOMENTUM, epsilon=BN_EPSILON),
            nn.ReLU(),
            linear(hidden, cout, bias=last_bias),
        )

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.mlp(x)


class Tower(nn.Layer):
    """Encoder f followed by projector g: one branch of BYOL."""

    def __init__(self, backbone_cfg: dict[str, Any], neck_cfg: dict[str, Any]) -> None:
        super().__init__()
        self.encoder = ResNet(backbone_cfg["depth"], backbone_cfg["stem"], backbone_cfg["width"],
                              backbone_cfg["zero_init_residual"])
        self.projector = MLP(self.encoder.out_channels, neck_cfg["hid_channels"], neck_cfg["out_channels"],
                             neck_cfg["last_bias"])

    def forward(self, x: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        y = self.encoder(x)
        return y, self.projector(y)


class BYOL(nn.Layer):
    """Online tower + predictor + online classifier, and the EMA target tower.

    ``forward`` computes everything a training step needs so that ``paddle.DataParallel`` sees one
    call: the symmetric BYOL loss, the cross-entropy of a linear classifier on the detached view-1
    representation (as in JAX and PASSL: it never reaches the encoder), and monitors.
    """

    def __init__(self, model_cfg: dict[str, Any], num_classes: int) -> None:
        super().__init__()
        self.online = Tower(model_cfg["backbone"], model_cfg["neck"])
        self.target = Tower(model_cfg["backbone"], model_cfg["neck"])
        pred = model_cfg["predictor"]
        self.predictor = MLP(model_cfg["neck"]["out_channels"], pred["hid_channels"], pred["out_channels"],
                             pred["last_bias"])
        self.classifier = linear(self.online.encoder.out_channels, num_classes)
        if model_cfg["align_init_network"]:
            copy_parameters(self.online, self.target)
        for p in self.target.parameters():
            p.stop_gradient = True

    def online_parameters(self) -> list[paddle.Tensor]:
        """The parameters the optimiser updates: online tower, predictor, classifier."""
        return [*weights(self.online), *weights(self.predictor), *weights(self.classifier)]

    def forward(self, view1: paddle.Tensor, view2: paddle.Tensor, labels: paddle.Tensor) -> dict[str, paddle.Tensor]:
        y1, z1 = self.online(view1)
        _, z2 = self.online(view2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with paddle.no_grad():
            _, t1 = self.target(view1)
            _, t2 = self.target(view2)
        byol = byol_loss(p1, p2, t1.detach(), t2.detach())
        logits = self.classifier(y1.detach())
        classif = F.cross_entropy(logits, labels.reshape([-1, 1]))
        with paddle.no_grad():
            accuracy = (logits.argmax(axis=1) == labels.reshape([-1])).astype("float32").mean()
            z_std = l2_normalize(z1.detach()).std(axis=0).mean()
        return {"loss": byol + classif, "byol_loss": byol, "classifier_loss": classif,
                "online_accuracy": accuracy, "z_std": z_std}


def build_model(cfg: dict[str, Any]) -> BYOL:
    return BYOL(cfg["model"], cfg["derived"]["num_classes"])
