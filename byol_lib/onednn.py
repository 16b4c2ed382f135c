"""oneDNN's CPU convolutions through its C API: the ``libdnnl.so.3`` (oneDNN 3.x) inside Paddle's wheel.

Paddle 3.3's dygraph never dispatches to oneDNN (its flags only reach static graphs); PyTorch's CPU
convolutions are oneDNN's. Called directly on channels-last (NHWC) activations with weights reordered to
the layout the primitive picks, oneDNN runs its JIT direct convolutions (``brg_conv``/``jit`` on AVX-512
and AVX2, no im2col): forward + both backward passes of a batch-256 convolution were 2.7x faster than im2col
+ OpenBLAS GEMMs at 8 channels and 32 px, 3.4x at 16 channels / 16 px, 1.7x at 64 channels / 32 px (one
thread, 2-core EPYC). ``byol_lib.fast`` wraps them for Paddle's autograd.

Handles: one CPU engine and stream per process; a ``Convolution`` per shape (cached: creating a primitive
JITs code) with its forward, backward-data and backward-weights primitives and the weight reorders between
Paddle's OIHW and the primitives' layouts. Buffers are raw pointers (Paddle tensors' ``data_ptr()``, numpy
arrays), so every call is synchronous on the caller's thread; oneDNN's OpenMP threads follow
``runtime.threads()``. Enum and argument values are those of oneDNN 3.x's ``dnnl_types.h``.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from byol_lib import runtime

_Dims = ctypes.c_int64 * 12
_F32, _ANY_TAG, _CPU, _IN_ORDER = 3, 1, 1, 1
_FORWARD_TRAINING, _BACKWARD, _DIRECT = 64, 128, 1
_USE_SCALE, _USE_SHIFT, _FUSE_RELU = 0x2, 0x4, 0x8  # dnnl_normalization_flags_t
_QUERY_EXEC_ARG_MD, _QUERY_IMPL_INFO = 255, 8
SRC, DST, WEIGHTS, DIFF_SRC, DIFF_DST, DIFF_WEIGHTS, FROM, TO = 1, 17, 33, 129, 145, 161, 1, 17
MEAN, VARIANCE, SCALE, SHIFT, WORKSPACE, DIFF_SCALE, DIFF_SHIFT = 49, 50, 51, 52, 64, 255, 256
NHWC, OIHW = "acdb", "abcd"  # oneDNN's tags over the logical (N, C, H, W) / (O, I, H, W) dimensions
_ALIGN = 64  # bytes


class _Arg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", ctypes.c_void_p)]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]


class OneDNNError(RuntimeError):
    """A oneDNN call failed (its status code and the call are in the message)."""


@functools.cache
def _library() -> ctypes.CDLL:
    import paddle  # the wheel's own copy of oneDNN, loaded with Paddle's OpenMP

    lib = ctypes.CDLL(str(Path(paddle.__file__).parent / "libs" / "libdnnl.so.3"))
    lib.dnnl_version.restype = ctypes.POINTER(_Version)
    if lib.dnnl_version().contents.major != 3:  # the enum and argument values below are oneDNN 3.x's
        raise OSError("libdnnl.so.3 is not oneDNN 3.x")
    lib.dnnl_primitive_desc_query_md.restype = ctypes.c_void_p
    lib.dnnl_memory_desc_get_size.restype = ctypes.c_size_t
    return lib


@functools.cache
def _openmp() -> ctypes.CDLL:
    return ctypes.CDLL("libgomp.so.1")  # the OpenMP runtime libdnnl.so.3 is linked against


def available() -> bool:
    """Whether this Paddle wheel ships oneDNN 3.x (Paddle's CPU and GPU wheels for x86-64 do)."""
    try:
        _library()
        _openmp()
    except OSError:
        return False
    return True


def _check(status: int, call: str) -> None:
    if status != 0:
        raise OneDNNError(f"oneDNN {call} failed with status {status} (oneDNN 3.x's dnnl_status_t)")


@functools.cache
def _engine_and_stream() -> tuple[ctypes.c_void_p, ctypes.c_void_p]:
    lib, engine, stream = _library(), ctypes.c_void_p(), ctypes.c_void_p()
    _check(lib.dnnl_engine_create(ctypes.byref(engine), _CPU, 0), "engine_create")
    _check(lib.dnnl_stream_create(ctypes.byref(stream), engine, _IN_ORDER), "stream_create")
    return engine, stream


def _md(dims: tuple[int, ...], tag: str | None) -> ctypes.c_void_p:
    """A float32 memory descriptor over ``dims`` in the layout ``tag`` (None: the primitive chooses)."""
    lib, md = _library(), ctypes.c_void_p()
    if tag is None:
        _check(lib.dnnl_memory_desc_create_with_tag(ctypes.byref(md), len(dims), _Dims(*dims), _F32, _ANY_TAG),
               "memory_desc_create_with_tag")
    else:
        _check(lib.dnnl_memory_desc_create_with_string_tag(ctypes.byref(md), len(dims), _Dims(*dims), _F32,
                                                           tag.encode()), "memory_desc_create_with_string_tag")
    return md


def empty(md: ctypes.c_void_p) -> np.ndarray:
    """An uninitialised, 64-byte aligned float32 buffer the size of ``md``."""
    count = _library().dnnl_memory_desc_get_size(md) // 4
    raw = np.empty(count + _ALIGN // 4, dtype=np.float32)
    start = (-raw.ctypes.data % _ALIGN) // 4
    return raw[start:start + count]


class Primitive:
    """A oneDNN primitive with one memory object per argument; ``run`` points them at buffers and executes."""

    def __init__(self, pd: ctypes.c_void_p, args: tuple[int, ...]) -> None:
        lib, (engine, _) = _library(), _engine_and_stream()
        self.pd, self.primitive = pd, ctypes.c_void_p()
        _check(lib.dnnl_primitive_create(ctypes.byref(self.primitive), pd), "primitive_create")
        self.mds = {arg: ctypes.c_void_p(lib.dnnl_primitive_desc_query_md(pd, _QUERY_EXEC_ARG_MD, arg))
                    for arg in args}
        self.memories = {}
        for arg, md in self.mds.items():
            memory = ctypes.c_void_p()
            _check(lib.dnnl_memory_create(ctypes.byref(memory), md, engine, None), "memory_create")
            self.memories[arg] = memory
        self._args = (_Arg * len(args))(*[_Arg(arg, self.memories[arg]) for arg in args])

    def implementation(self) -> str:
        """oneDNN's name of the implementation it chose (e.g. ``brg_conv_fwd:avx512_core``)."""
        name = ctypes.c_char_p()
        _check(_library().dnnl_primitive_desc_query(self.pd, _QUERY_IMPL_INFO, 0, ctypes.byref(name)),
               "primitive_desc_query")
        return (name.value or b"").decode()

    def run(self, buffers: dict[int, int]) -> None:
        """Execute with argument ``arg`` at address ``buffers[arg]`` (every argument given)."""
        lib, (_, stream) = _library(), _engine_and_stream()
        for arg, address in buffers.items():
            _check(lib.dnnl_memory_set_data_handle(self.memories[arg], ctypes.c_void_p(address)),
                   "memory_set_data_handle")
        _set_threads()
        _check(lib.dnnl_primitive_execute(self.primitive, stream, len(self._args), self._args), "primitive_execute")
        _check(lib.dnnl_stream_wait(stream), "stream_wait")


def _set_threads() -> None:
    """oneDNN's OpenMP threads (this thread's ICV) at ``runtime.threads()``."""
    threads = runtime.threads()
    if _openmp().omp_get_max_threads() != threads:
        _openmp().omp_set_num_threads(threads)


def _reorder(source: ctypes.c_void_p, target: ctypes.c_void_p) -> Primitive | None:
    """The reorder from layout ``source`` to ``target``, or None when they are the same layout."""
    lib, (engine, _) = _library(), _engine_and_stream()
    if lib.dnnl_memory_desc_equal(source, target):
        return None
    pd = ctypes.c_void_p()
    _check(lib.dnnl_reorder_primitive_desc_create(ctypes.byref(pd), source, engine, target, engine, None),
           "reorder_primitive_desc_create")
    return Primitive(pd, (FROM, TO))


@dataclass(frozen=True)
class ConvShape:
    """A bias-free 2-D convolution of an NHWC batch: input ``[n, h, w, cin]``, OIHW ``[cout, cin, k, k]``
    weights, zero padding ``pads`` = (top, bottom, left, right)."""

    n: int
    cin: int
    h: int
    w: int
    cout: int
    k: int
    stride: int
    pads: tuple[int, int, int, int]

    @property
    def out_hw(self) -> tuple[int, int]:
        top, bottom, left, right = self.pads
        return (self.h + top + bottom - self.k) // self.stride + 1, (self.w + left + right - self.k) // self.stride + 1


class Convolution:
    """oneDNN's forward, backward-data and backward-weights primitives of one ``ConvShape`` (NHWC activations,
    Paddle's OIHW weights in and out; the weights are reordered to the primitives' layouts on every call, as
    they change every step)."""

    def __init__(self, shape: ConvShape) -> None:
        lib, (engine, _) = _library(), _engine_and_stream()
        ho, wo = shape.out_hw
        self.shape = shape
        self._src = _md((shape.n, shape.cin, shape.h, shape.w), NHWC)
        self._dst = _md((shape.n, shape.cout, ho, wo), NHWC)
        self._plain_weights = _md((shape.cout, shape.cin, shape.k, shape.k), OIHW)
        top, bottom, left, right = shape.pads
        self._geometry = (_Dims(shape.stride, shape.stride), _Dims(0, 0), _Dims(top, left), _Dims(bottom, right))
        pd = ctypes.c_void_p()
        _check(lib.dnnl_convolution_forward_primitive_desc_create(
            ctypes.byref(pd), engine, _FORWARD_TRAINING, _DIRECT, self._src, _md(self._weight_dims(), None), None,
            self._dst, *self._geometry, None), "convolution_forward_primitive_desc_create")
        self.forward_primitive = Primitive(pd, (SRC, WEIGHTS, DST))
        self._to_forward = _reorder(self._plain_weights, self.forward_primitive.mds[WEIGHTS])
        self._backward: tuple[Primitive, Primitive | None, Primitive, Primitive | None] | None = None

    def _weight_dims(self) -> tuple[int, int, int, int]:
        return self.shape.cout, self.shape.cin, self.shape.k, self.shape.k

    def _backward_primitives(self) -> tuple[Primitive, Primitive | None, Primitive, Primitive | None]:
        if self._backward is None:
            lib, (engine, _) = _library(), _engine_and_stream()
            data, weights = ctypes.c_void_p(), ctypes.c_void_p()
            _check(lib.dnnl_convolution_backward_data_primitive_desc_create(
                ctypes.byref(data), engine, _DIRECT, self._src, _md(self._weight_dims(), None), self._dst,
                *self._geometry, self.forward_primitive.pd, None), "convolution_backward_data_primitive_desc_create")
            _check(lib.dnnl_convolution_backward_weights_primitive_desc_create(
                ctypes.byref(weights), engine, _DIRECT, self._src, _md(self._weight_dims(), None), None, self._dst,
                *self._geometry, self.forward_primitive.pd, None),
                "convolution_backward_weights_primitive_desc_create")
            backward_data = Primitive(data, (DIFF_DST, WEIGHTS, DIFF_SRC))
            backward_weights = Primitive(weights, (SRC, DIFF_DST, DIFF_WEIGHTS))
            self._backward = (backward_data, _reorder(self._plain_weights, backward_data.mds[WEIGHTS]),
                              backward_weights, _reorder(backward_weights.mds[DIFF_WEIGHTS], self._plain_weights))
        return self._backward

    @staticmethod
    def _weights_as(reorder: Primitive | None, weights: int) -> tuple[int, np.ndarray | None]:
        """The address of the weights in ``reorder``'s target layout (a new buffer, kept alive by the caller)."""
        if reorder is None:
            return weights, None
        buffer = empty(reorder.mds[TO])
        reorder.run({FROM: weights, TO: buffer.ctypes.data})
        return buffer.ctypes.data, buffer

    def forward(self, x: int, weights: int, y: int) -> None:
        """``y = conv(x, weights)``: NHWC input and output, OIHW weights (addresses)."""
        address, _keep = self._weights_as(self._to_forward, weights)
        self.forward_primitive.run({SRC: x, WEIGHTS: address, DST: y})

    def backward_data(self, dy: int, weights: int, dx: int) -> None:
        """``dx``, the input gradient of output gradient ``dy`` (NHWC) through OIHW ``weights``."""
        primitive, to_layout, _, _ = self._backward_primitives()
        address, _keep = self._weights_as(to_layout, weights)
        primitive.run({DIFF_DST: dy, WEIGHTS: address, DIFF_SRC: dx})

    def backward_weights(self, x: int, dy: int, dw: int) -> None:
        """``dw`` (OIHW), the weight gradient of output gradient ``dy`` for input ``x`` (NHWC)."""
        _, _, primitive, to_plain = self._backward_primitives()
        if to_plain is None:
            primitive.run({SRC: x, DIFF_DST: dy, DIFF_WEIGHTS: dw})
            return
        blocked = empty(primitive.mds[DIFF_WEIGHTS])
        primitive.run({SRC: x, DIFF_DST: dy, DIFF_WEIGHTS: blocked.ctypes.data})
        to_plain.run({FROM: blocked.ctypes.data, TO: dw})


def convolution(shape: ConvShape) -> Convolution:
    """The primitives of ``shape`` at the current thread count (created once: creation compiles code, and a
    primitive must run with the threads it was created for)."""
    _set_threads()
    return _convolution(shape, runtime.threads())


@functools.lru_cache(maxsize=256)
def _convolution(shape: ConvShape, threads: int) -> Convolution:
    return Convolution(shape)


@dataclass(frozen=True)
class NormShape:
    """Training-mode BatchNorm of one NHWC batch ``[n, h, w, c]`` (statistics over n, h, w), optionally followed
    by a ReLU fused into the same pass."""

    n: int
    c: int
    h: int
    w: int
    epsilon: float
    relu: bool


class BatchNorm:
    """oneDNN's training-mode batch normalization of one ``NormShape``, forward and backward: the batch mean
    and biased variance come out beside the output (Paddle's running statistics use the same), the fused
    ReLU keeps a bit mask (the workspace) for the backward pass."""

    def __init__(self, shape: NormShape) -> None:
        lib, (engine, _) = _library(), _engine_and_stream()
        self.shape = shape
        self._data = _md((shape.n, shape.c, shape.h, shape.w), NHWC)
        self._flags = _USE_SCALE | _USE_SHIFT | (_FUSE_RELU if shape.relu else 0)
        pd = ctypes.c_void_p()
        _check(lib.dnnl_batch_normalization_forward_primitive_desc_create(
            ctypes.byref(pd), engine, _FORWARD_TRAINING, self._data, self._data, ctypes.c_float(shape.epsilon),
            self._flags, None), "batch_normalization_forward_primitive_desc_create")
        workspace = (WORKSPACE,) if shape.relu else ()
        self.forward_primitive = Primitive(pd, (SRC, DST, SCALE, SHIFT, MEAN, VARIANCE, *workspace))
        self._backward: Primitive | None = None

    def workspace(self) -> np.ndarray | None:
        """A buffer for the fused ReLU's mask (None without ReLU)."""
        return empty(self.forward_primitive.mds[WORKSPACE]) if self.shape.relu else None

    def forward(self, x: int, y: int, scale: int, shift: int, mean: int, variance: int,
                workspace: np.ndarray | None) -> None:
        """``y`` = BN(``x``) (+ ReLU) with the batch's ``mean`` and ``variance`` written out (addresses)."""
        buffers = {SRC: x, DST: y, SCALE: scale, SHIFT: shift, MEAN: mean, VARIANCE: variance}
        if workspace is not None:
            buffers[WORKSPACE] = workspace.ctypes.data
        self.forward_primitive.run(buffers)

    def backward(self, x: int, dy: int, scale: int, mean: int, variance: int, workspace: np.ndarray | None,
                 dx: int, dscale: int, dshift: int) -> None:
        """Gradients of input, scale and shift from the output gradient ``dy`` and the forward's statistics."""
        if self._backward is None:
            lib, (engine, _) = _library(), _engine_and_stream()
            pd = ctypes.c_void_p()
            _check(lib.dnnl_batch_normalization_backward_primitive_desc_create(
                ctypes.byref(pd), engine, _BACKWARD, self._data, self._data, self._data,
                ctypes.c_float(self.shape.epsilon), self._flags, self.forward_primitive.pd, None),
                "batch_normalization_backward_primitive_desc_create")
            args = (SRC, MEAN, VARIANCE, DIFF_DST, SCALE, DIFF_SRC, DIFF_SCALE, DIFF_SHIFT)
            self._backward = Primitive(pd, (*args, WORKSPACE) if self.shape.relu else args)
        buffers = {SRC: x, MEAN: mean, VARIANCE: variance, DIFF_DST: dy, SCALE: scale, DIFF_SRC: dx,
                   DIFF_SCALE: dscale, DIFF_SHIFT: dshift}
        if workspace is not None:
            buffers[WORKSPACE] = workspace.ctypes.data
        self._backward.run(buffers)


def batch_norm(shape: NormShape) -> BatchNorm:
    """The primitives of ``shape`` at the current thread count (created once, as ``convolution``)."""
    _set_threads()
    return _batch_norm(shape, runtime.threads())


@functools.lru_cache(maxsize=256)
def _batch_norm(shape: NormShape, threads: int) -> BatchNorm:
    return BatchNorm(shape)


def sgemm(trans_a: bool, trans_b: bool, m: int, n: int, k: int, a: int, b: int, c: int) -> None:
    """``C[m, n] = op(A) @ op(B)`` in float32 (row-major, dense: ``op(A)`` is ``[m, k]``, ``op(B)`` ``[k, n]``; ``A``
    stored ``[k, m]`` when ``trans_a``, ``B`` stored ``[n, k]`` when ``trans_b``): oneDNN's JIT GEMM."""
    lib = _library()
    _set_threads()
    _check(lib.dnnl_sgemm(ctypes.c_char(b"T" if trans_a else b"N"), ctypes.c_char(b"T" if trans_b else b"N"),
                          ctypes.c_int64(m), ctypes.c_int64(n), ctypes.c_int64(k), ctypes.c_float(1.0),
                          ctypes.c_void_p(a), ctypes.c_int64(m if trans_a else k), ctypes.c_void_p(b),
                          ctypes.c_int64(k if trans_b else n), ctypes.c_float(0.0), ctypes.c_void_p(c),
                          ctypes.c_int64(n)), "sgemm")
