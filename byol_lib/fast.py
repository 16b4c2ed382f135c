"""The CPU network's heavy ops through oneDNN, with Paddle's autograd (the ``onednn`` kernels).

Paddle 3.3's CPU ``conv2d`` is im2col + one small GEMM per image in its bundled MKL (about a third of
OpenBLAS's speed on AMD CPUs), and its oneDNN kernels are reachable only from static graphs, where training
is not reliable in 3.3.1 (wrong input gradients through residual blocks, BatchNorm running statistics left
unchanged). This module runs oneDNN itself (``byol_lib.onednn``: the library inside Paddle's wheel, the one
PyTorch's CPU convolutions use) as PyLayers on NHWC activations: JIT direct convolutions (``conv2d_nhwc``),
training-mode BatchNorm with the ReLU fused, each of several views normalised with its own statistics
(``batch_norm_nhwc``), the two fused with the normalised activations recomputed in the backward pass instead of
kept (``norm_relu_conv_nhwc``), and the projector/predictor products (``linear``). A convolution keeps only its
input for the backward pass. Padding is explicit per side (top, bottom, left, right), so JAX's asymmetric 'SAME'
and paddle.vision's symmetric padding (``model.spatial_pads``) take the same code. Results equal Paddle's
kernels up to float32 summation order (``tests/test_fast.py``).

The switch is the config key ``cpu_kernels``, passed to the encoder when it is built (``ResNet(...,
cpu_kernels=...)``, ``use_onednn``): ``auto`` (default) and ``onednn`` take these kernels for float32 CPU
batches, ``paddle`` never (Paddle's NCHW layers: the reference the tests compare against). ``blas``, the
name of the numpy-BLAS kernels these replaced, is read as ``onednn``. GPU tensors never take this path.
"""

from __future__ import annotations

import numpy as np
import paddle
import paddle.nn as nn
from paddle.autograd import PyLayer, PyLayerContext

from byol_lib import onednn

KERNELS = ("auto", "onednn", "paddle")
_RENAMED = {"blas": "onednn"}  # results folders written before oneDNN replaced the numpy-BLAS kernels
KERNEL_NAMES = (*KERNELS, *_RENAMED)  # what the config key accepts

Pads = tuple[int, int, int, int]  # top, bottom, left, right


def check_kernels(kernels: str) -> str:
    """The choice of CPU convolution kernels ``kernels`` names, else a ValueError naming the choices."""
    kernels = _RENAMED.get(kernels, kernels)
    if kernels not in KERNELS:
        raise ValueError(f"cpu kernels must be one of {list(KERNELS)}, got {kernels!r}")
    return kernels


def use_onednn(x: paddle.Tensor, kernels: str) -> bool:
    """Whether a batch ``x`` takes the oneDNN kernels under the choice ``kernels`` (float32 on the CPU)."""
    if kernels == "paddle" or x.dtype != paddle.float32 or not x.place.is_cpu_place():
        return False
    if not onednn.available():
        if kernels == "onednn":
            raise RuntimeError("cpu_kernels: onednn needs the oneDNN library of Paddle's x86-64 wheel "
                               "(paddle/libs/libdnnl.so.3), not found; use cpu_kernels: paddle")
        return False
    return True


def _shape(x: paddle.Tensor, weight: paddle.Tensor, stride: int, pads: Pads) -> onednn.ConvShape:
    n, h, w, cin = x.shape
    cout, _, k, _ = weight.shape
    return onednn.ConvShape(n, cin, h, w, cout, k, stride, tuple(pads))


def _forward(x: paddle.Tensor, weight: paddle.Tensor, stride: int, pads: Pads) -> paddle.Tensor:
    shape = _shape(x, weight, stride, pads)
    out = paddle.empty([shape.n, *shape.out_hw, shape.cout], dtype=paddle.float32)
    onednn.convolution(shape).forward(x.data_ptr(), weight.data_ptr(), out.data_ptr())
    return out


class _Conv2D(PyLayer):
    """Autograd wrapper of the oneDNN convolution (NHWC activations, Paddle's OIHW weights)."""

    @staticmethod
    def forward(ctx: PyLayerContext, x: paddle.Tensor, weight: paddle.Tensor, stride: int,
                pads: Pads) -> paddle.Tensor:
        ctx.saved = (x, weight, stride, pads, not x.stop_gradient)  # released in backward (save_for_backward's
        return _forward(x, weight, stride, pads)  # tensors live as long as the whole graph)

    @staticmethod
    def backward(ctx: PyLayerContext, dy: paddle.Tensor) -> tuple[paddle.Tensor | None, paddle.Tensor]:
        x, weight, stride, pads, needs_dx = ctx.saved
        ctx.saved = None
        return _backward(x, weight, dy, stride, pads, needs_dx)


def _backward(x: paddle.Tensor, weight: paddle.Tensor, dy: paddle.Tensor, stride: int, pads: Pads,
              needs_dx: bool) -> tuple[paddle.Tensor | None, paddle.Tensor]:
    """The input gradient (None unless ``needs_dx``) and the weight gradient of a convolution of ``x``."""
    convolution, dw = _weight_gradient(x, weight, dy, stride, pads)
    return (_input_gradient(convolution, x.shape, weight, dy) if needs_dx else None), dw


def _weight_gradient(x: paddle.Tensor, weight: paddle.Tensor, dy: paddle.Tensor, stride: int,
                     pads: Pads) -> tuple[onednn.Convolution, paddle.Tensor]:
    convolution = onednn.convolution(_shape(x, weight, stride, pads))
    dw = paddle.empty(weight.shape, dtype=paddle.float32)
    convolution.backward_weights(x.data_ptr(), dy.contiguous().data_ptr(), dw.data_ptr())
    return convolution, dw


def _input_gradient(convolution: onednn.Convolution, shape: list[int], weight: paddle.Tensor,
                    dy: paddle.Tensor) -> paddle.Tensor:
    dx = paddle.empty(shape, dtype=paddle.float32)
    convolution.backward_data(dy.contiguous().data_ptr(), weight.data_ptr(), dx.data_ptr())
    return dx


def conv2d_nhwc(x: paddle.Tensor, weight: paddle.Tensor, stride: int, pads: Pads) -> paddle.Tensor:
    """Bias-free 2-D cross-correlation of NHWC ``x`` ``[N, H, W, C]`` with OIHW ``weight``, zero padding of
    ``pads`` = (top, bottom, left, right) pixels; an NHWC result."""
    x, weight = x.contiguous(), weight.contiguous()
    if not paddle.is_grad_enabled() or (x.stop_gradient and weight.stop_gradient):
        return _forward(x, weight, stride, pads)
    return _Conv2D.apply(x, weight, stride, pads)


def _per_view(x: paddle.Tensor, layer: nn.BatchNorm2D, views: int, relu: bool) -> tuple[onednn.BatchNorm, int, int]:
    """oneDNN's BatchNorm of one of ``views`` equal NHWC batches of ``x``, the bytes per view and the channels."""
    n, h, w, c = x.shape
    return onednn.batch_norm(onednn.NormShape(n // views, c, h, w, layer._epsilon, relu)), x.size // views * 4, c


def _normalize_views(x: paddle.Tensor, layer: nn.BatchNorm2D, views: int,
                     relu: bool) -> tuple[paddle.Tensor, np.ndarray, list[np.ndarray | None]]:
    """Training-mode BatchNorm (+ ReLU) of each of ``views`` equal NHWC batches of ``x``: the output, the batch
    statistics ``[mean/variance, view, C]``, the ReLU masks. Deterministic: a second call gives the same bits."""
    norm, step, c = _per_view(x, layer, views, relu)
    out = paddle.empty(x.shape, dtype=paddle.float32)
    stats = np.empty((2, views, c), dtype=np.float32)
    masks = [norm.workspace() for _ in range(views)]
    for v in range(views):
        norm.forward(x.data_ptr() + v * step, out.data_ptr() + v * step, layer.weight.data_ptr(),
                     layer.bias.data_ptr(), stats[0, v].ctypes.data, stats[1, v].ctypes.data, masks[v])
    return out, stats, masks


def _normalize(x: paddle.Tensor, layer: nn.BatchNorm2D, views: int,
               relu: bool) -> tuple[paddle.Tensor, np.ndarray, list[np.ndarray | None]]:
    """``_normalize_views``, and the running statistics moved once per view in view order."""
    out, stats, masks = _normalize_views(x, layer, views, relu)
    momentum = np.float32(layer._momentum)
    for running, batch in ((layer._mean, stats[0]), (layer._variance, stats[1])):
        value = running.numpy()
        for view_statistic in batch:  # as separate calls, one after another
            value = momentum * value + (np.float32(1.0) - momentum) * view_statistic
        running.set_value(value)
    return out, stats, masks


def _normalize_backward(x: paddle.Tensor, dy: paddle.Tensor, layer: nn.BatchNorm2D, views: int, relu: bool,
                        stats: np.ndarray,
                        masks: list[np.ndarray | None]) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    """Gradients of input, scale and shift of ``_normalize_views`` from the output gradient ``dy``."""
    dy = dy.contiguous()
    norm, step, c = _per_view(x, layer, views, relu)
    dx = paddle.empty(x.shape, dtype=paddle.float32)
    dparams = np.empty((2, views, c), dtype=np.float32)
    for v in range(views):
        norm.backward(x.data_ptr() + v * step, dy.data_ptr() + v * step, layer.weight.data_ptr(),
                      stats[0, v].ctypes.data, stats[1, v].ctypes.data, masks[v], dx.data_ptr() + v * step,
                      dparams[0, v].ctypes.data, dparams[1, v].ctypes.data)
    dscale, dshift = dparams.sum(axis=1)  # the parameters serve every view: their gradients add up
    return dx, paddle.to_tensor(dscale), paddle.to_tensor(dshift)


class _BatchNorm(PyLayer):
    """Autograd wrapper of oneDNN's training-mode BatchNorm (+ ReLU) over views (NHWC)."""

    @staticmethod
    def forward(ctx: PyLayerContext, x: paddle.Tensor, scale: paddle.Tensor, shift: paddle.Tensor,
                layer: nn.BatchNorm2D, views: int, relu: bool) -> paddle.Tensor:
        out, stats, masks = _normalize(x, layer, views, relu)
        ctx.saved = (x, layer, views, relu, stats, masks)  # released in backward, as above
        return out

    @staticmethod
    def backward(ctx: PyLayerContext, dy: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
        x, layer, views, relu, stats, masks = ctx.saved
        ctx.saved = None
        return _normalize_backward(x, dy, layer, views, relu, stats, masks)


class _NormReluConv(PyLayer):
    """BatchNorm + ReLU over views, then a convolution, keeping only the BatchNorm's input: its output (the
    convolution's input) is recomputed, bit for bit, in the backward pass. One activation less per block."""

    @staticmethod
    def forward(ctx: PyLayerContext, x: paddle.Tensor, scale: paddle.Tensor, shift: paddle.Tensor,
                weight: paddle.Tensor, layer: nn.BatchNorm2D, views: int, stride: int, pads: Pads) -> paddle.Tensor:
        normalized, stats, masks = _normalize(x, layer, views, relu=True)
        ctx.saved = (x, weight, layer, views, stride, pads, stats, masks)
        return _forward(normalized, weight, stride, pads)

    @staticmethod
    def backward(ctx: PyLayerContext, dy: paddle.Tensor) -> tuple[paddle.Tensor, ...]:
        x, weight, layer, views, stride, pads, stats, masks = ctx.saved
        ctx.saved = None
        normalized = _normalize_views(x, layer, views, relu=True)[0]
        convolution, dw = _weight_gradient(normalized, weight, dy, stride, pads)
        del normalized  # before the input gradient is allocated: one activation less at the peak
        dnormalized = _input_gradient(convolution, x.shape, weight, dy)
        return (*_normalize_backward(x, dnormalized, layer, views, True, stats, masks), dw)


def batch_norm_nhwc(x: paddle.Tensor, layer: nn.BatchNorm2D, views: int, relu: bool) -> paddle.Tensor:
    """``layer``'s training-mode BatchNorm of an NHWC ``x`` made of ``views`` equal batches, each normalised with
    its own statistics (as separate calls), followed by a ReLU when ``relu``."""
    x = x.contiguous()
    if not paddle.is_grad_enabled() or (x.stop_gradient and layer.weight.stop_gradient):
        return _normalize(x, layer, views, relu)[0]
    return _BatchNorm.apply(x, layer.weight, layer.bias, layer, views, relu)


class _MatMul(PyLayer):
    """Autograd wrapper of oneDNN's GEMM: ``x [N, in] @ weight [in, out]`` (Paddle's Linear layout)."""

    @staticmethod
    def forward(ctx: PyLayerContext, x: paddle.Tensor, weight: paddle.Tensor) -> paddle.Tensor:
        ctx.saved = (x, weight)  # released in backward, as above
        return _matmul(x, weight)

    @staticmethod
    def backward(ctx: PyLayerContext, dy: paddle.Tensor) -> tuple[paddle.Tensor | None, paddle.Tensor | None]:
        x, weight = ctx.saved
        ctx.saved = None
        dy = dy.contiguous()
        (n, fan_in), fan_out = x.shape, weight.shape[1]
        dx = dw = None
        if not x.stop_gradient:
            dx = paddle.empty([n, fan_in], dtype=paddle.float32)
            onednn.sgemm(False, True, n, fan_in, fan_out, dy.data_ptr(), weight.data_ptr(), dx.data_ptr())
        if not weight.stop_gradient:
            dw = paddle.empty([fan_in, fan_out], dtype=paddle.float32)
            onednn.sgemm(True, False, fan_in, fan_out, n, x.data_ptr(), dy.data_ptr(), dw.data_ptr())
        return dx, dw


def _matmul(x: paddle.Tensor, weight: paddle.Tensor) -> paddle.Tensor:
    (n, fan_in), fan_out = x.shape, weight.shape[1]
    out = paddle.empty([n, fan_out], dtype=paddle.float32)
    onednn.sgemm(False, False, n, fan_out, fan_in, x.data_ptr(), weight.data_ptr(), out.data_ptr())
    return out


def linear(x: paddle.Tensor, weight: paddle.Tensor, bias: paddle.Tensor | None) -> paddle.Tensor:
    """``x @ weight + bias`` for a 2-D float32 CPU batch ``x`` and Paddle's ``[in, out]`` weight, the product in
    oneDNN's GEMM (Paddle's bundled MKL runs these 4096-wide layers at a third of the speed on AMD CPUs)."""
    x, weight = x.contiguous(), weight.contiguous()
    if not paddle.is_grad_enabled() or (x.stop_gradient and weight.stop_gradient):
        out = _matmul(x, weight)
    else:
        out = _MatMul.apply(x, weight)
    return out if bias is None else out + bias


def norm_relu_conv_nhwc(x: paddle.Tensor, layer: nn.BatchNorm2D, views: int, weight: paddle.Tensor, stride: int,
                        pads: Pads) -> paddle.Tensor:
    """``conv2d_nhwc(batch_norm_nhwc(x, layer, views, relu=True), weight, stride, pads)`` with the normalised
    activations recomputed in the backward pass instead of kept (training mode)."""
    x = x.contiguous()
    if not paddle.is_grad_enabled() or (x.stop_gradient and weight.stop_gradient):
        return conv2d_nhwc(_normalize(x, layer, views, relu=True)[0], weight, stride, pads)
    return _NormReluConv.apply(x, layer.weight, layer.bias, weight.contiguous(), layer, views, stride, pads)
