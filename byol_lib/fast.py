"""CPU convolutions through oneDNN on channels-last activations, with Paddle's autograd (the ``onednn`` kernels).

Paddle 3.3's CPU ``conv2d`` is im2col + one small GEMM per image in its bundled MKL (about a third of
OpenBLAS's speed on AMD CPUs), and its oneDNN kernels are reachable only from static graphs, where training
is not reliable in 3.3.1 (wrong input gradients through residual blocks, BatchNorm running statistics left
unchanged). ``conv2d_nhwc`` runs oneDNN's own JIT direct convolutions (``byol_lib.onednn``, the library
inside Paddle's wheel, the one PyTorch's CPU convolutions use) on NHWC activations, forward and backward;
nothing but the input is kept for the backward pass. Padding is explicit per side (top, bottom, left,
right), so JAX's asymmetric 'SAME' and paddle.vision's symmetric padding (``model.spatial_pads``) take the
same code. Results equal Paddle's kernels up to float32 summation order (``tests/test_fast.py``).

The switch is the config key ``cpu_kernels``, passed to the encoder when it is built (``ResNet(...,
cpu_kernels=...)``, ``use_onednn``): ``auto`` (default) and ``onednn`` take these kernels for float32 CPU
batches, ``paddle`` never (Paddle's NCHW layers: the reference the tests compare against). ``blas``, the
name of the numpy-BLAS kernels these replaced, is read as ``onednn``. GPU tensors never take this path.
"""

from __future__ import annotations

import paddle
from paddle.autograd import PyLayer, PyLayerContext

from byol_lib import onednn

KERNELS = ("auto", "onednn", "paddle")
_RENAMED = {"blas": "onednn"}  # results folders written before oneDNN replaced the numpy-BLAS kernels

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
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, pads, not x.stop_gradient)
        return _forward(x, weight, stride, pads)

    @staticmethod
    def backward(ctx: PyLayerContext, dy: paddle.Tensor) -> tuple[paddle.Tensor | None, paddle.Tensor]:
        x, weight = ctx.saved_tensor()
        stride, pads, needs_dx = ctx.geometry
        dy = dy.contiguous()
        convolution = onednn.convolution(_shape(x, weight, stride, pads))
        dw = paddle.empty(weight.shape, dtype=paddle.float32)
        convolution.backward_weights(x.data_ptr(), dy.data_ptr(), dw.data_ptr())
        if not needs_dx:
            return None, dw
        dx = paddle.empty(x.shape, dtype=paddle.float32)
        convolution.backward_data(dy.data_ptr(), weight.data_ptr(), dx.data_ptr())
        return dx, dw


def conv2d_nhwc(x: paddle.Tensor, weight: paddle.Tensor, stride: int, pads: Pads) -> paddle.Tensor:
    """Bias-free 2-D cross-correlation of NHWC ``x`` ``[N, H, W, C]`` with OIHW ``weight``, zero padding of
    ``pads`` = (top, bottom, left, right) pixels; an NHWC result."""
    x, weight = x.contiguous(), weight.contiguous()
    if not paddle.is_grad_enabled() or (x.stop_gradient and weight.stop_gradient):
        return _forward(x, weight, stride, pads)
    return _Conv2D.apply(x, weight, stride, pads)
