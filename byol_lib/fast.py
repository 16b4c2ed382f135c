"""CPU convolutions through numpy's BLAS, with Paddle's autograd (the ``blas`` CPU kernels).

Paddle 3.3's CPU ``conv2d`` is im2col + a GEMM per image in the bundled MKL, which on AMD CPUs reaches
about a third of the speed of numpy's OpenBLAS (2048^2 fp32 matmul, 2 threads on a Zen 4 EPYC: ~30 vs
~90 GFLOP/s), and per-image GEMMs are tiny in the deep layers (4x4 maps: 16 columns). Its oneDNN kernels
are reachable only from static graphs, where training is not reliable in 3.3.1 (wrong input gradients
through residual blocks, BatchNorm running statistics left unchanged, crashes on a lone convolution).

``conv2d_cnhw`` computes the same cross-correlation on CNHW activations (``[C, N, H, W]``: channels
first, then the batch) as GEMMs over blocks of images, ``[Cout, Cin*k*k] @ [Cin*k*k, n*Ho*Wo]`` with ``n``
images per block: on one thread the block's im2col matrix is about ``BLOCK_BYTES`` and stays in cache, on
several at most ``SHARED_BLOCK_BYTES`` (im2col in numpy, the GEMM in numpy's BLAS, zero-copy exchange with
Paddle through DLPack). Backward, block by block from the saved input (the im2col matrices are recomputed,
never stored: at width 64 they were two thirds of the step's peak memory): ``dW = sum (cols @ dY^T)^T``;
``dX`` is the convolution of ``dY`` with the flipped kernel (stride 1, symmetric padding) or ``W^T @ dY``
summed back (col2im). Padding is explicit per side (top,
bottom, left, right), so JAX's asymmetric 'SAME' and paddle.vision's symmetric padding (``model.spatial_pads``)
take the same code. Results equal Paddle's kernels up to float32 summation order.

The switch is the config key ``cpu_kernels``, passed to the encoder when it is built (``ResNet(...,
cpu_kernels=...)``, ``use_blas``): ``auto`` (default) uses these kernels
for float32 CPU batches when Paddle runs on one thread, or with stem width x N x H x W >=
``AUTO_MIN_ELEMENTS``; ``blas`` always on the CPU, ``paddle`` never. GPU tensors never take this path.
Measured (``bench/train_step.py``, 2-core EPYC), blas / Paddle step speed: one thread: 1.22x at width 8 /
batch 128 / 32 px (the default preset, which pretrains on one thread beside its loader worker), 1.34x on
the 16 px tiny preset, 1.48x at width 16; two threads: 1.03x, 0.80x and 1.95x (small GEMMs split over
two threads cost more than they gain). Buffers handed to Paddle are 64-byte aligned, so runs are
bitwise reproducible.
"""

from __future__ import annotations

import numpy as np
import paddle
from paddle.autograd import PyLayer, PyLayerContext

from byol_lib import runtime

KERNELS = ("auto", "blas", "paddle")
AUTO_MIN_ELEMENTS = 2**21  # with 2+ threads: stem width x N x H x W from 16 x 128 x 32x32 (not width 8)


def check_kernels(kernels: str) -> str:
    """``kernels`` if it names a choice of CPU convolution kernels, else a ValueError naming the choices."""
    if kernels not in KERNELS:
        raise ValueError(f"cpu kernels must be one of {list(KERNELS)}, got {kernels!r}")
    return kernels


def use_blas(x: paddle.Tensor, stem_channels: int, kernels: str) -> bool:
    """Whether an NCHW batch ``x`` entering a network of ``stem_channels`` takes the numpy-BLAS kernels under the
    choice ``kernels``."""
    if kernels == "paddle" or x.dtype != paddle.float32 or not x.place.is_cpu_place():
        return False
    n, _, h, w = x.shape
    return kernels == "blas" or runtime.threads() == 1 or stem_channels * n * h * w >= AUTO_MIN_ELEMENTS


Pads = tuple[int, int, int, int]  # top, bottom, left, right

BLOCK_BYTES = 2**21  # im2col block of the blocked convolution on one thread (L2-sized; tests shrink it)
SHARED_BLOCK_BYTES = 2**26  # several threads: >= 7,000-column GEMMs at width 64 (or the batch); 64 MB at most
_ALIGN = 64  # bytes, as Paddle's CPU allocator: BLAS and reduction kernels sum in an address-dependent order


def _empty(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised float32 array on a 64-byte boundary (glibc gives 16): run-to-run identical results."""
    count = int(np.prod(shape))
    raw = np.empty(count + _ALIGN // 4, dtype=np.float32)
    start = (-raw.ctypes.data % _ALIGN) // 4
    return raw[start:start + count].reshape(shape)


def _zeros(shape: tuple[int, ...]) -> np.ndarray:
    out = _empty(shape)
    out.fill(0.0)
    return out


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` into an aligned array."""
    return np.matmul(a, b, out=_empty((a.shape[0], b.shape[1])))


def _copy(a: np.ndarray) -> np.ndarray:
    """A C-contiguous aligned copy."""
    out = _empty(a.shape)
    np.copyto(out, a)
    return out


def _numpy(x: paddle.Tensor) -> np.ndarray:
    """Zero-copy numpy view of a CPU tensor (made contiguous first)."""
    return np.from_dlpack(x.detach().contiguous())


def _valid(size: int, out: int, offset: int, stride: int) -> tuple[int, int]:
    """Output positions ``[lo, hi)`` whose input position ``o * stride + offset`` lies in ``[0, size)``."""
    lo = -(-max(0, -offset) // stride)
    hi = min(out, (size - 1 - offset) // stride + 1)
    return lo, max(lo, hi)


def _taps(h: int, w: int, k: int, stride: int, pads: Pads, ho: int,
          wo: int) -> list[tuple[int, int, slice, slice, slice, slice]]:
    """Per kernel tap ``(i, j)``: the valid output rows/columns and the input rows/columns they read."""
    def source(lo: int, hi: int, offset: int) -> slice:
        return slice(lo * stride + offset, (hi - 1) * stride + offset + 1, stride) if hi > lo else slice(0, 0)

    top, left = pads[0], pads[2]
    taps = []
    for i in range(k):
        r0, r1 = _valid(h, ho, i - top, stride)
        for j in range(k):
            c0, c1 = _valid(w, wo, j - left, stride)
            taps.append((i, j, slice(r0, r1), slice(c0, c1), source(r0, r1, i - top), source(c0, c1, j - left)))
    return taps


def _im2col(x: np.ndarray, k: int, stride: int, pads: Pads, ho: int, wo: int) -> np.ndarray:
    """Patches ``[C, k, k, N, Ho, Wo]`` of a CNHW array (zero padding), as a ``[C*k*k, N*Ho*Wo]`` matrix."""
    c, n, h, w = x.shape
    if k == 1 and not any(pads):
        cols = x if stride == 1 else _copy(x[:, :, ::stride, ::stride])
        return cols.reshape(c, n * ho * wo)
    cols = _empty((c, k, k, n, ho, wo))
    for i, j, out_rows, out_cols, rows, columns in _taps(h, w, k, stride, pads, ho, wo):
        tap = cols[:, i, j]
        tap[:, :, :out_rows.start] = 0.0
        tap[:, :, out_rows.stop:] = 0.0
        tap[:, :, out_rows, :out_cols.start] = 0.0
        tap[:, :, out_rows, out_cols.stop:] = 0.0
        tap[:, :, out_rows, out_cols] = x[:, :, rows, columns]
    return cols.reshape(c * k * k, n * ho * wo)


def _col2im(dcols: np.ndarray, shape: tuple[int, ...], k: int, stride: int, pads: Pads, ho: int,
            wo: int) -> np.ndarray:
    """Adjoint of ``_im2col``: sum ``[C*k*k, N*Ho*Wo]`` patch gradients back into a CNHW array."""
    c, n, h, w = shape
    dx = _zeros(shape)
    d = dcols.reshape(c, k, k, n, ho, wo)
    for i, j, out_rows, out_cols, rows, columns in _taps(h, w, k, stride, pads, ho, wo):
        dx[:, :, rows, columns] += d[:, i, j, :, out_rows, out_cols]
    return dx


def _out_size(size: int, k: int, stride: int, before: int, after: int) -> int:
    return (size + before + after - k) // stride + 1


def _chunk(n: int, cin: int, k: int, ho: int, wo: int) -> int:
    """Images per block of the blocked convolution: an im2col block of about ``BLOCK_BYTES`` on one thread (it
    stays in cache), of at most ``SHARED_BLOCK_BYTES`` on several (BLAS splits small GEMMs at a loss; the cap
    bounds the transient memory); the whole batch for 1x1 kernels (no im2col)."""
    budget = BLOCK_BYTES if runtime.threads() == 1 else SHARED_BLOCK_BYTES
    return n if k == 1 else max(1, min(n, budget // (4 * cin * k * k * ho * wo)))


def _images(a: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Images ``[start, stop)`` of a CNHW array as an aligned ``[C, (stop - start) * H * W]`` matrix."""
    block = a if (start, stop) == (0, a.shape[1]) else _copy(a[:, start:stop])
    return block.reshape(a.shape[0], -1)


def _conv_forward(x: np.ndarray, weight: np.ndarray, stride: int, pads: Pads) -> np.ndarray:
    """CNHW output ``[Cout, N, Ho, Wo]``: one im2col block + GEMM per ``_chunk`` images (the block stays in cache)."""
    cin, n, h, w = x.shape
    cout, _, k, _ = weight.shape
    ho, wo = _out_size(h, k, stride, *pads[:2]), _out_size(w, k, stride, *pads[2:])
    kernel = weight.reshape(cout, -1)
    step = _chunk(n, cin, k, ho, wo)
    if step == n:
        return _matmul(kernel, _im2col(x, k, stride, pads, ho, wo)).reshape(cout, n, ho, wo)
    out = _empty((cout, n, ho, wo))
    for start in range(0, n, step):
        block = _im2col(x[:, start:start + step], k, stride, pads, ho, wo)
        out[:, start:start + step] = _matmul(kernel, block).reshape(cout, -1, ho, wo)
    return out


class _Conv2D(PyLayer):
    """Autograd wrapper of the numpy-BLAS convolution (CNHW activations, Paddle's OIHW weights).

    Only the input is kept for the backward pass (alive anyway as the previous layer's output): the im2col
    blocks are recomputed there, block by block, instead of storing ``k*k`` copies of every activation."""

    @staticmethod
    def forward(ctx: PyLayerContext, x: paddle.Tensor, weight: paddle.Tensor, stride: int,
                pads: Pads) -> paddle.Tensor:
        xn, wn = _numpy(x), _numpy(weight)
        ctx.saved = (xn, wn, stride, pads, not x.stop_gradient)
        return paddle.from_dlpack(_conv_forward(xn, wn, stride, pads))

    @staticmethod
    def backward(ctx: PyLayerContext, dy: paddle.Tensor) -> tuple[paddle.Tensor | None, paddle.Tensor]:
        xn, wn, stride, pads, needs_dx = ctx.saved
        ctx.saved = None
        dyn = _numpy(dy)
        cout, n, ho, wo = dyn.shape
        _, cin, k, _ = wn.shape
        flip = stride == 1 and all(2 * p == k - 1 for p in pads)  # dX = dY (*) flipped kernel
        step = _chunk(n, cin, k, ho, wo)
        dw_t = _zeros((cin * k * k, cout))
        dx = _empty(xn.shape) if needs_dx and not flip else None
        for start in range(0, n, step):
            stop = min(n, start + step)
            dy_block = _images(dyn, start, stop)
            dw_t += _matmul(_im2col(xn[:, start:stop], k, stride, pads, ho, wo), dy_block.T)  # 2-3x dy @ cols.T
            if dx is not None:
                dcols = _matmul(wn.reshape(cout, -1).T, dy_block)
                dx[:, start:stop] = _col2im(dcols, (cin, stop - start, *xn.shape[2:]), k, stride, pads, ho, wo)
        dw = paddle.from_dlpack(_copy(dw_t.T).reshape(wn.shape))
        if not needs_dx:
            return None, dw
        if flip:
            dx = _conv_forward(dyn, _copy(wn[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)), 1, pads)
        return paddle.from_dlpack(dx), dw


def conv2d_cnhw(x: paddle.Tensor, weight: paddle.Tensor, stride: int, pads: Pads) -> paddle.Tensor:
    """Bias-free 2-D cross-correlation of CNHW ``x`` ``[C, N, H, W]`` with OIHW ``weight``, zero padding of
    ``pads`` = (top, bottom, left, right) pixels."""
    if not paddle.is_grad_enabled() or (x.stop_gradient and weight.stop_gradient):
        return paddle.from_dlpack(_conv_forward(_numpy(x), _numpy(weight), stride, pads))
    return _Conv2D.apply(x, weight, stride, pads)

