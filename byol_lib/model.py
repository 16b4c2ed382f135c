"""The networks: ResNet encoders, the projector/predictor MLP, and the BYOL module (docs/sources.md).

Parameter names follow ``paddle.vision``'s ResNet (``conv1``, ``bn1``, ``layer{1-4}.{b}.conv{k}``,
``downsample.{0,1}``) so that backbones convert to PaddleClas names by rule, and the MLP keys
(``mlp.0``, ``mlp.1``, ``mlp.3``) match PASSL's ``NonLinearNeckV2``.

Initialisation follows the JAX release (Haiku's defaults, which DeepMind's ResNet and MLPs do not override):
convolutions and linear layers draw ``TruncatedNormal(stddev=1/sqrt(fan_in))``, a unit normal truncated to
[-2, 2] and scaled by that stddev with no variance correction, so the weights' real std is
0.8796/sqrt(fan_in) (Haiku ``conv.py`` / ``basic.py`` / ``initializers.py``); zero biases, BN scale 1 /
offset 0 (the last BN of a block 0 only with ``zero_init_residual``). BN: momentum 0.9, eps 1e-5 as in JAX
and PASSL. PASSL's initialisation is the switch ``model.init: passl`` (D6, ``passl_init.py``).

Padding (``model.backbone.padding``): ``same`` (default) is JAX's 'SAME' of every convolution and of the
stem's max-pool: per axis ``total = max((ceil(n / s) - 1) * s + k - n, 0)``, ``total // 2`` before and the
rest after, so a stride-2 3x3 on an even input pads 0 before and 1 after; ``symmetric`` pads ``k // 2`` on
every side as paddle.vision's ResNet in PASSL (D13). The two differ only on strided layers with an even
input (stride-1 and 1x1 layers pad alike).

On the CPU (float32 batches, unless the config key ``cpu_kernels`` given at construction is ``paddle``;
``byol_lib.fast.use_onednn``) the encoder runs channels-last (NHWC): convolutions, training-mode BatchNorm (the
ReLU fused, the views normalised separately) and the projector/predictor products through oneDNN; eval-mode
BatchNorm and the max-pool in Paddle's NHWC kernels; same weights, same arithmetic up to float32 summation order.
Elsewhere (GPU, or ``cpu_kernels: paddle``) it is Paddle's NCHW layers as usual.
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
BLOCKS_PER_STAGE = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}  # by depth; export.py names tensors from it
PADDINGS = ("same", "symmetric")


def haiku_init(fan_in: int) -> nn.initializer.Initializer:
    """Haiku's default weight init: a unit normal truncated to [-2, 2], times 1/sqrt(fan_in) (real std 0.88x that)."""
    std = 1.0 / math.sqrt(fan_in)
    return nn.initializer.TruncatedNormal(mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """JAX/TF 'SAME' padding (before, after) of one axis of ``size`` pixels: the output has ceil(size / stride)."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def spatial_pads(height: int, width: int, kernel: int, stride: int, padding: str) -> fast.Pads:
    """(top, bottom, left, right) of a ``kernel`` x ``kernel`` window at ``stride`` under the padding rule."""
    if padding == "symmetric":
        return (kernel // 2,) * 4
    return (*same_padding(height, kernel, stride), *same_padding(width, kernel, stride))


class Conv2D(nn.Conv2D):
    """A bias-free convolution with Haiku's default init, padded by ``padding`` (``same`` or ``symmetric``)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: str) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=0, bias_attr=False,
                         weight_attr=paddle.ParamAttr(initializer=haiku_init(cin * kernel * kernel)))
        self.padding_rule = padding

    def pads(self, height: int, width: int) -> fast.Pads:
        return spatial_pads(height, width, self._kernel_size[0], self._stride[0], self.padding_rule)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return F.conv2d(x, self.weight, stride=self._stride, padding=list(self.pads(*x.shape[2:])))


class MaxPool(nn.Layer):
    """The stem's 3x3 stride-2 max-pool, padded by ``padding`` like the convolutions (padding never wins)."""

    def __init__(self, padding: str) -> None:
        super().__init__()
        self.padding_rule = padding

    def forward(self, x: paddle.Tensor, nhwc: bool = False) -> paddle.Tensor:
        height, width = x.shape[1:3] if nhwc else x.shape[2:]
        return F.max_pool2d(x, 3, 2, padding=list(spatial_pads(height, width, 3, 2, self.padding_rule)),
                            data_format="NHWC" if nhwc else "NCHW")


def batch_norm(channels: int, zero_scale: bool = False) -> nn.BatchNorm2D:
    scale = nn.initializer.Constant(0.0 if zero_scale else 1.0)
    return nn.BatchNorm2D(channels, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                          weight_attr=paddle.ParamAttr(initializer=scale))


def _conv(layer: Conv2D, x: paddle.Tensor, views: int) -> paddle.Tensor:
    """``layer(x)`` (``views`` 0: NCHW), or the same convolution of an NHWC ``x`` through oneDNN."""
    if not views:
        return layer(x)
    return fast.conv2d_nhwc(x, layer.weight, layer._stride[0], layer.pads(*x.shape[1:3]))


def _batch_statistics_on_nhwc(norm: nn.BatchNorm2D, views: int) -> bool:
    """Whether ``norm`` normalises with batch statistics on the NHWC path (oneDNN's training-mode BatchNorm)."""
    return bool(views) and norm.training and not norm._use_global_stats


def _bn(layer: nn.BatchNorm2D, x: paddle.Tensor, views: int, relu: bool = False) -> paddle.Tensor:
    """``layer(x)`` (``views`` 0: NCHW), or the same train/eval-mode BatchNorm of an NHWC ``x`` made of ``views``
    equal batches: in training each view is normalised with its own statistics and moves the running ones, in
    view order, exactly as if the views had run one after another (oneDNN, the ReLU fused). Then the ReLU when
    ``relu``."""
    if _batch_statistics_on_nhwc(layer, views):
        return fast.batch_norm_nhwc(x, layer, views, relu)
    if views:  # global statistics: views are irrelevant
        x = F.batch_norm(x, layer._mean, layer._variance, weight=layer.weight, bias=layer.bias, training=False,
                         epsilon=layer._epsilon, data_format="NHWC")
    else:
        x = layer(x)
    return F.relu(x) if relu else x


def _bn_relu_conv(norm: nn.BatchNorm2D, layer: Conv2D, x: paddle.Tensor, views: int) -> paddle.Tensor:
    """``_conv(layer, _bn(norm, x, views, relu=True), views)``; in training on the NHWC path the normalised
    activations are recomputed in the backward pass instead of kept (``fast.norm_relu_conv_nhwc``)."""
    if _batch_statistics_on_nhwc(norm, views):
        return fast.norm_relu_conv_nhwc(x, norm, views, layer.weight, layer._stride[0], layer.pads(*x.shape[1:3]))
    return _conv(layer, _bn(norm, x, views, relu=True), views)


def linear(cin: int, cout: int, bias: bool = True) -> nn.Linear:
    return nn.Linear(cin, cout, weight_attr=paddle.ParamAttr(initializer=haiku_init(cin)),
                     bias_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(0.0)) if bias else False)


class BasicBlock(nn.Layer):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, zero_init_residual: bool, padding: str) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = Conv2D(cin, width, 3, stride, padding), batch_norm(width)
        self.conv2, self.bn2 = Conv2D(width, cout, 3, 1, padding), batch_norm(cout, zero_init_residual)
        self.downsample = _shortcut(cin, cout, stride, padding)

    def forward(self, x: paddle.Tensor, views: int = 0) -> paddle.Tensor:
        out = _bn(self.bn2, _bn_relu_conv(self.bn1, self.conv2, _conv(self.conv1, x, views), views), views)
        return F.relu(out + _shortcut_forward(self.downsample, x, views))


class Bottleneck(nn.Layer):
    """1x1 -> 3x3 (strided, ResNet v1.5 as in Haiku and paddle.vision) -> 1x1 (ResNet-50)."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, zero_init_residual: bool, padding: str) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = Conv2D(cin, width, 1, 1, padding), batch_norm(width)
        self.conv2, self.bn2 = Conv2D(width, width, 3, stride, padding), batch_norm(width)
        self.conv3, self.bn3 = Conv2D(width, cout, 1, 1, padding), batch_norm(cout, zero_init_residual)
        self.downsample = _shortcut(cin, cout, stride, padding)

    def forward(self, x: paddle.Tensor, views: int = 0) -> paddle.Tensor:
        out = _bn_relu_conv(self.bn1, self.conv2, _conv(self.conv1, x, views), views)
        out = _bn(self.bn3, _bn_relu_conv(self.bn2, self.conv3, out, views), views)
        return F.relu(out + _shortcut_forward(self.downsample, x, views))


def _shortcut(cin: int, cout: int, stride: int, padding: str) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(Conv2D(cin, cout, 1, stride, padding), batch_norm(cout))


def _shortcut_forward(downsample: nn.Sequential | None, x: paddle.Tensor, views: int) -> paddle.Tensor:
    if downsample is None:
        return x
    return _bn(downsample[1], _conv(downsample[0], x, views), views)


class ResNet(nn.Layer):
    """ResNet v1 encoder returning the pooled representation y ([N, channels])."""

    def __init__(self, depth: int = 50, stem: str = "imagenet", width: int = 64,
                 zero_init_residual: bool = False, padding: str = "same", cpu_kernels: str = "auto") -> None:
        super().__init__()
        self.cpu_kernels = fast.check_kernels(cpu_kernels)  # see byol_lib.fast: auto, onednn or paddle
        block = Bottleneck if depth == 50 else BasicBlock
        if stem == "imagenet":
            self.conv1 = Conv2D(3, width, 7, 2, padding)
            self.maxpool: MaxPool | None = MaxPool(padding)
        else:  # CIFAR stem: 3x3 stride 1, no max-pool
            self.conv1 = Conv2D(3, width, 3, 1, padding)
            self.maxpool = None
        self.bn1 = batch_norm(width)
        cin = width
        for stage, blocks in enumerate(BLOCKS_PER_STAGE[depth]):
            layers = []
            for b in range(blocks):
                stride = 2 if (stage > 0 and b == 0) else 1
                layers.append(block(cin, width * 2**stage, stride, zero_init_residual, padding))
                cin = width * 2**stage * block.expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
        self.out_channels = cin

    def forward(self, x: paddle.Tensor, views: int = 1) -> paddle.Tensor:
        """Representations ``[views*N, channels]`` of ``x``, ``views`` equal batches one after another along the
        batch axis, each normalised with its own BatchNorm statistics (as separate calls would; on the NHWC
        path one pass over all of them, else one call per view)."""
        if not fast.use_onednn(x, self.cpu_kernels):
            return paddle.concat([self._forward(part, 0) for part in paddle.split(x, views)]) if views > 1 \
                else self._forward(x, 0)
        return self._forward(x.transpose([0, 2, 3, 1]), views)

    def _forward(self, x: paddle.Tensor, views: int) -> paddle.Tensor:
        x = _bn(self.bn1, _conv(self.conv1, x, views), views, relu=True)
        if self.maxpool is not None:
            x = self.maxpool(x, nhwc=bool(views))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = block(x, views)
        return x.mean(axis=[1, 2]) if views else x.mean(axis=[2, 3])


class MLP(nn.Layer):
    """Linear -> BN -> ReLU -> Linear, the projector g and predictor q (paper §3.3); on the CPU the products run in
    oneDNN's GEMM unless ``cpu_kernels`` is ``paddle`` (see ``byol_lib.fast``)."""

    def __init__(self, cin: int, hidden: int, cout: int, last_bias: bool = False, cpu_kernels: str = "auto") -> None:
        super().__init__()
        self.cpu_kernels = fast.check_kernels(cpu_kernels)
        self.mlp = nn.Sequential(
            linear(cin, hidden),
            nn.BatchNorm1D(hidden, momentum=BN_MOMENTUM, epsilon=BN_EPSILON),
            nn.ReLU(),
            linear(hidden, cout, bias=last_bias),
        )

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if not fast.use_onednn(x, self.cpu_kernels):
            return self.mlp(x)
        first, norm, relu, last = self.mlp
        return fast.linear(relu(norm(fast.linear(x, first.weight, first.bias))), last.weight, last.bias)


class Tower(nn.Layer):
    """Encoder f followed by projector g (``hidden`` -> ``out``): one branch of BYOL."""

    def __init__(self, encoder: ResNet, hidden: int, out: int, last_bias: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = MLP(encoder.out_channels, hidden, out, last_bias, encoder.cpu_kernels)

    def forward(self, x: paddle.Tensor, views: int = 1) -> tuple[paddle.Tensor, paddle.Tensor]:
        """``(y, z)`` of ``x`` made of ``views`` equal batches, each with its own BatchNorm statistics."""
        y = self.encoder(x, views)
        z = paddle.concat([self.projector(part) for part in paddle.split(y, views)]) if views > 1 else self.projector(y)
        return y, z


class BYOL(nn.Layer):
    """Online tower + predictor + online classifier, and the EMA target tower.

    ``forward`` computes everything a training step needs so that ``paddle.DataParallel`` sees one
    call: the symmetric BYOL loss, the cross-entropy of a linear classifier on the detached view-1
    representation (as in JAX and PASSL: it never reaches the encoder), and monitors.
    ``align_init``: the target starts as a copy of the online weights (else its own draw).
    """

    def __init__(self, online: Tower, target: Tower, predictor: MLP, num_classes: int, align_init: bool) -> None:
        super().__init__()
        self.online, self.target, self.predictor = online, target, predictor
        self.classifier = linear(self.online.encoder.out_channels, num_classes)
        if align_init:
            copy_parameters(self.online, self.target)
        for p in self.target.parameters():
            p.stop_gradient = True

    def online_parameters(self) -> list[paddle.Tensor]:
        """The parameters the optimiser updates: online tower, predictor, classifier."""
        return [*weights(self.online), *weights(self.predictor), *weights(self.classifier)]

    def forward(self, view1: paddle.Tensor, view2: paddle.Tensor, labels: paddle.Tensor) -> dict[str, paddle.Tensor]:
        both = paddle.concat([view1, view2])  # one pass, per-view BatchNorm: the same as two calls
        y, z = self.online(both, 2)
        y1, (z1, z2) = y[:view1.shape[0]], paddle.split(z, 2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with paddle.no_grad():
            t1, t2 = paddle.split(self.target(both, 2)[1], 2)
        byol = byol_loss(p1, p2, t1.detach(), t2.detach())
        logits = self.classifier(y1.detach())
        classif = F.cross_entropy(logits, labels.reshape([-1, 1]))
        with paddle.no_grad():
            accuracy = (logits.argmax(axis=1) == labels.reshape([-1])).astype("float32").mean()
            z_std = l2_normalize(z1.detach()).std(axis=0).mean()
        return {"loss": byol + classif, "byol_loss": byol, "classifier_loss": classif,
                "online_accuracy": accuracy, "z_std": z_std}


def encoder_from_config(backbone: dict[str, Any], cpu_kernels: str = "auto") -> ResNet:
    """The ResNet of a config's ``model.backbone`` section."""
    return ResNet(backbone["depth"], backbone["stem"], backbone["width"], backbone["zero_init_residual"],
                  backbone["padding"], cpu_kernels)


def byol_from_config(model_cfg: dict[str, Any], num_classes: int, cpu_kernels: str = "auto") -> BYOL:
    """The BYOL network of a config's ``model`` section (parameters drawn online, target, predictor, classifier)."""
    neck, pred = model_cfg["neck"], model_cfg["predictor"]

    def tower() -> Tower:
        encoder = encoder_from_config(model_cfg["backbone"], cpu_kernels)
        return Tower(encoder, neck["hid_channels"], neck["out_channels"], neck["last_bias"])

    online, target = tower(), tower()
    predictor = MLP(neck["out_channels"], pred["hid_channels"], pred["out_channels"], pred["last_bias"], cpu_kernels)
    return BYOL(online, target, predictor, num_classes, model_cfg["align_init_network"])


def build_model(cfg: dict[str, Any]) -> BYOL:
    """The BYOL network of a resolved config (its ``model`` section, class count and ``cpu_kernels``)."""
    return byol_from_config(cfg["model"], cfg["derived"]["num_classes"], cfg["cpu_kernels"])
