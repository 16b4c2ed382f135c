"""The LARS optimiser (docs/sources.md, deviation D8); the lr it is given comes from ``plan.py``.

Two LARS formulas are available:

* ``"jax"`` (paper §3.3 / DeepMind's ``utils/optimizers.py``). For parameters not excluded by name::

      g' = g + wd * w
      trust = eta * ||w|| / ||g'||          (1 if either norm is 0)
      mu = momentum * mu + trust * g'
      w = w - lr * mu

  Excluded parameters (biases, BN) skip weight decay and the trust ratio: ``mu = momentum * mu + g``.
  The buffer ``mu`` holds no learning rate.

* ``"passl"`` (Paddle's ``lars_momentum`` kernel used by PASSL, D8 in docs/sources.md)::

      local_lr = lr * eta * ||w|| / (||g|| + wd * ||w|| + epsilon)   (only if wd > 0 and both norms > 0)
      local_lr = lr                                                   (otherwise)
      v = momentum * v + local_lr * (g + wd * w)
      w = w - v

  Excluded parameters get ``wd = 0`` and therefore plain momentum SGD with the learning rate inside the
  buffer: ``v = momentum * v + lr * g``.

The buffers of the two formulas differ in meaning (``mu`` is lr-free, ``v`` already contains the lr), so a
state saved with one formula must not be loaded into an optimiser using the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import paddle

FORMULAS = ("jax", "passl")


def excluded_by_name(param_name: str, patterns: Sequence[str]) -> bool:
    """True if any pattern is a substring of ``param_name`` (PASSL's ``exclude_from_weight_decay`` rule).

    With Paddle's automatic names the patterns ``(".b_0", "batch_norm")`` select every bias and every
    (Sync)BatchNorm scale/offset; parameters created with an explicit ``ParamAttr(name=...)`` are not covered.
    """
    return any(pattern in param_name for pattern in patterns)


class LARS:
    """LARS with momentum updating Paddle parameters in place; see the module docstring for the formulas.

    Momentum buffers are created (zeros) the first time a parameter has a gradient and are keyed by the
    parameter's ``.name``, which must be unique among ``parameters``. All arithmetic stays on the device
    (norms and ratios are 0-D tensors) and uses in-place ops on two reusable scratch buffers: out-of-place
    ops allocate a fresh tensor each and are several times slower on CPU.
    """

    def __init__(
        self,
        parameters: Sequence[paddle.Tensor],
        *,
        momentum: float = 0.9,
        eta: float = 1e-3,
        weight_decay: float = 1e-6,
        exclude_from_weight_decay: Sequence[str] = (".b_0", "batch_norm"),
        epsilon: float = 0.0,
        formula: str = "jax",
    ) -> None:
        if formula not in FORMULAS:
            raise ValueError(f"formula must be one of {FORMULAS}, got {formula!r}")
        self.params = list(parameters)
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError("parameter names must be unique (they key the optimiser state)")
        self.momentum = momentum
        self.eta = eta
        self.weight_decay = weight_decay
        self.epsilon = epsilon
        self.formula = formula
        self.excluded = {p.name: excluded_by_name(p.name, exclude_from_weight_decay) for p in self.params}
        self._buffers: dict[str, paddle.Tensor] = {}
        self._scratch: dict[paddle.dtype, tuple[paddle.Tensor, paddle.Tensor]] = {}

    @paddle.no_grad()
    def step(self, lr: float) -> None:
        """Apply one update with learning rate ``lr`` to every parameter that has a gradient."""
        update = self._jax_update if self.formula == "jax" else self._passl_update
        for param in self.params:
            grad = param.grad
            if grad is None:
                continue
            buf = self._buffers.get(param.name)
            if buf is None:
                buf = self._buffers[param.name] = paddle.zeros_like(param)
            a, b = self._scratch_views(param)
            update(param, grad, buf, lr, self.excluded[param.name], a, b)

    def _scratch_views(self, param: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        """Two views shaped like ``param`` into flat scratch buffers sized for the largest parameter."""
        if param.dtype not in self._scratch:
            size = max(int(p.size) for p in self.params if p.dtype == param.dtype)
            self._scratch[param.dtype] = (paddle.empty([size], dtype=param.dtype),
                                          paddle.empty([size], dtype=param.dtype))
        n = int(param.size)
        a, b = self._scratch[param.dtype]
        return a[:n].reshape(param.shape), b[:n].reshape(param.shape)

    @staticmethod
    def _squared_norm(x: paddle.Tensor, scratch: paddle.Tensor) -> paddle.Tensor:
        """sum(x**2) as a 0-D tensor (accurate, unlike ``paddle.linalg.vector_norm`` on big CPU tensors)."""
        scratch.copy_(x, False)
        scratch.multiply_(x)
        return scratch.sum()

    def _jax_update(self, param: paddle.Tensor, grad: paddle.Tensor, mu: paddle.Tensor, lr: float,
                    excluded: bool, a: paddle.Tensor, b: paddle.Tensor) -> None:
        """mu = momentum * mu + trust * (g + wd * w); w -= lr * mu (excluded: trust 1, wd 0)."""
        if excluded:
            mu.scale_(self.momentum).add_(grad)
        else:
            w_sq = self._squared_norm(param, b)
            a.copy_(param, False)
            a.scale_(self.weight_decay).add_(grad)
            g_sq = self._squared_norm(a, b)
            ok = paddle.logical_and(w_sq > 0, g_sq > 0)
            a.scale_(paddle.where(ok, self.eta * paddle.sqrt(w_sq / paddle.where(ok, g_sq, 1.0)), 1.0))
            mu.scale_(self.momentum).add_(a)
        a.copy_(mu, False)
        param.subtract_(a.scale_(lr))

    def _passl_update(self, param: paddle.Tensor, grad: paddle.Tensor, v: paddle.Tensor, lr: float,
                      excluded: bool, a: paddle.Tensor, b: paddle.Tensor) -> None:
        """v = momentum * v + local_lr * (g + wd * w); w -= v (Paddle ``lars_momentum`` kernel)."""
        wd = 0.0 if excluded else self.weight_decay
        if wd > 0.0:
            w_norm = paddle.sqrt(self._squared_norm(param, b))
            g_norm = paddle.sqrt(self._squared_norm(grad, b))
            ok = paddle.logical_and(w_norm > 0, g_norm > 0)
            local_lr = paddle.where(ok, lr * self.eta * w_norm / (g_norm + wd * w_norm + self.epsilon), lr)
            a.copy_(param, False)
            a.scale_(wd).add_(grad).scale_(local_lr)
        else:
            a.copy_(grad, False)
            a.scale_(lr)
        v.scale_(self.momentum).add_(a)
        param.subtract_(v)

    def clear_grad(self) -> None:
        """Drop every parameter's gradient (``.grad`` becomes None)."""
        for param in self.params:
            param.clear_gradient(False)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the momentum buffers keyed by parameter name (only parameters stepped so far)."""
        return {name: buf.numpy() for name, buf in self._buffers.items()}

    def set_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Replace all momentum buffers by ``state`` (exact copy); unknown names or wrong shapes raise."""
        params = {p.name: p for p in self.params}
        buffers: dict[str, paddle.Tensor] = {}
        for name, value in state.items():
            if name not in params:
                raise KeyError(f"optimiser state for unknown parameter {name!r}")
            param = params[name]
            array = np.asarray(value)
            if tuple(array.shape) != tuple(param.shape):
                raise ValueError(f"state for {name!r}: shape {array.shape}, parameter {tuple(param.shape)}")
            buffers[name] = paddle.to_tensor(array, dtype=param.dtype, place=param.place)
        self._buffers = buffers
