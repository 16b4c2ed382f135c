"""Mixed precision for the BYOL step (config ``amp``, PaddleClas's layout); off by default: the paper trains in float32.

``amp: {enabled: true, dtype: bfloat16 | float16, level: O1}``: the forward pass (and so its backward) runs under
``paddle.amp.auto_cast`` at level O1: Paddle's white-listed ops (convolutions, matmuls) compute in ``dtype``, its
black-listed ops (reductions, ``rsqrt``, softmax and cross-entropy, ``mean``) in float32, the rest in the dtype of
their inputs. The parameters stay float32, so they are the master weights: gradients arrive in float32, and the LARS
norms and update and the target EMA are float32 arithmetic as without AMP. The step's loss is cast to float32
before it is scaled and averaged.

float16 has a 5-bit exponent, so small gradients underflow: the loss is multiplied by a dynamic ``LossScaler``
before backward and the gradients divided by it after; a step whose gradients hold an inf or NaN is skipped (no
LARS step, no EMA; the scale halves), and after ``incr_every`` finite steps in a row the scale doubles. These are
Paddle's ``GradScaler`` rules and defaults (2**16, x2 every 2000 good steps, x0.5 on every bad one); Paddle's own
scaler is not used because it drives ``paddle.optimizer`` optimisers, not the project's LARS. bfloat16 has
float32's exponent range and needs no scaling.

Level O2 (parameters cast to low precision by ``paddle.amp.decorate``) is refused: it needs float32 master copies
kept by the optimiser (Paddle's ``multi_precision`` optimisers do, the project's LARS does not) and would write
low-precision checkpoints. AMP is refused on the CPU: Paddle 3.3's CPU build has no float16/bfloat16 kernels for
``conv2d``, ``matmul``, ``add``, ``relu`` or ``batch_norm``, and its ``auto_cast`` and ``GradScaler`` are no-ops
off CUDA/XPU/custom devices (they warn and leave everything float32), so a CPU "AMP" run would silently be float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import paddle

from byol_lib.distributed import DeviceError

DTYPES = ("bfloat16", "float16")
LEVELS = ("O1", "O2")  # PaddleClas's; O2 is refused by the config's check (O2_REFUSED)
DEFAULTS: dict[str, Any] = {"enabled": False, "dtype": "bfloat16", "level": "O1"}
O2_REFUSED = ("is not supported: O2 casts the parameters to the low-precision dtype, so LARS would update "
              "low-precision weights (no float32 master copies) and checkpoints would hold them; use O1 (float32 "
              "master weights)")


class AmpError(DeviceError):
    """``amp.enabled`` on a device where mixed precision cannot run."""


@dataclass
class LossScaler:
    """Dynamic loss scaling with Paddle ``GradScaler``'s rules and defaults (``paddle.amp.GradScaler``)."""

    scale: float = 2.0**16
    incr_ratio: float = 2.0
    decr_ratio: float = 0.5
    incr_every: int = 2000
    decr_every: int = 1
    good_steps: int = 0
    bad_steps: int = 0

    def update(self, found_inf: bool) -> None:
        """After a step: ``decr_every`` bad steps in a row multiply the scale by ``decr_ratio``, ``incr_every``
        good steps in a row by ``incr_ratio``; either count restarts when the other kind of step occurs."""
        if found_inf:
            self.good_steps, self.bad_steps = 0, self.bad_steps + 1
            if self.bad_steps == self.decr_every:
                self.scale, self.bad_steps = self.scale * self.decr_ratio, 0
        else:
            self.good_steps, self.bad_steps = self.good_steps + 1, 0
            if self.good_steps == self.incr_every:
                self.scale, self.good_steps = self.scale * self.incr_ratio, 0

    @paddle.no_grad()
    def unscale(self, params: Sequence[paddle.Tensor]) -> bool:
        """Divide every gradient by the scale in place; True when all of them are finite (one host sync)."""
        grads = [p.grad for p in params if p.grad is not None]
        for grad in grads:
            grad.scale_(1.0 / self.scale)
        return bool(paddle.stack([paddle.isfinite(g).all() for g in grads]).all()) if grads else True


@dataclass(frozen=True)
class Precision:
    """How the step computes: ``FLOAT32`` (the paper), or ``auto_cast`` to ``dtype`` with float32 master weights."""

    dtype: str
    level: str = "O1"
    scaler: LossScaler | None = None  # float16 only

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context for the forward pass (its backward follows the dtypes it chose)."""
        if self.dtype == "float32":
            return contextlib.nullcontext()
        return paddle.amp.auto_cast(enable=True, level=self.level, dtype=self.dtype)

    def scaled(self, loss: paddle.Tensor) -> paddle.Tensor:
        """The float32 loss to back-propagate (multiplied by the loss scale under float16)."""
        if loss.dtype != paddle.float32:
            loss = loss.astype("float32")
        return loss * self.scaler.scale if self.scaler is not None else loss

    def gradients_finite(self, params: Sequence[paddle.Tensor]) -> bool:
        """After backward: under float16, unscale the gradients, update the scale and say whether to take the step;
        otherwise True (the loss check guards float32 and bfloat16 runs)."""
        if self.scaler is None:
            return True
        finite = self.scaler.unscale(params)
        self.scaler.update(found_inf=not finite)
        return finite

    def metrics(self, stepped: bool) -> dict[str, float]:
        """What the step logs about precision: under float16 the loss scale and whether the step was skipped."""
        if self.scaler is None:
            return {}
        return {"loss_scale": self.scaler.scale, "amp_skipped": 0.0 if stepped else 1.0}


FLOAT32 = Precision("float32")


def precision(amp: Mapping[str, Any], device: str) -> Precision:
    """The step's precision for a validated ``amp`` section on ``device`` ("cpu", "gpu:<id>").

    Refuses the CPU (see the module docstring): there it would silently train in float32."""
    if not amp["enabled"]:
        return FLOAT32
    if device == "cpu":
        raise AmpError(f"amp.enabled is true but this process runs on the CPU ({device}), where Paddle's "
                       "auto_cast and GradScaler do nothing and there are no float16/bfloat16 convolution or "
                       "matmul kernels; set amp.enabled: false or run on a GPU (device gpu)")
    return Precision(amp["dtype"], amp["level"], LossScaler() if amp["dtype"] == "float16" else None)
