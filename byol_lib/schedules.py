"""The run's plan and the schedules it follows: learning rate and target EMA rate per step (paper §3.2, App. C).

``Plan`` is the arithmetic ``config.resolve`` derives from a config, the world size and the dataset: batch sizes,
step counts, warm-up, peak lr, and the tau schedule's parameters. It is frozen: the training step reads its lr
and tau from it, and the run folder's ``config.yaml`` records it under ``derived`` (``Plan.derived``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

TAU_METHODS = ("cosine", "fixed")


def lr_at(step: int, *, peak_lr: float, warmup_steps: int, total_steps: int, start_lr: float = 0.0,
          periodic: bool = False) -> float:
    """LR at 0-based ``step``: linear warm-up, cosine decay to 0, then 0 from ``total_steps`` on.

    ``periodic``: PASSL's ``CosineWarmup`` past ``total_steps`` (D10): the cosine is not clamped and rises again.
    """
    if step < 0 or total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need step >= 0, total_steps >= 1, 0 <= warmup_steps <= total_steps; got "
                         f"step={step}, warmup_steps={warmup_steps}, total_steps={total_steps}")
    if step >= total_steps and not periodic:
        return 0.0
    if step < warmup_steps:
        return start_lr + (peak_lr - start_lr) * step / warmup_steps
    decay_steps = total_steps - warmup_steps
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / decay_steps))


def tau_at(step: int, *, base_tau: float, total_steps: int, method: str = "cosine", periodic: bool = False) -> float:
    """Target EMA rate at 0-based ``step``: cosine from ``base_tau`` to 1 over ``total_steps``, or fixed.

    ``periodic``: PASSL's unclamped cosine past ``total_steps`` (D10): tau turns back towards ``base_tau``.
    """
    if method not in TAU_METHODS:
        raise ValueError(f"method must be one of {TAU_METHODS}, got {method!r}")
    if step < 0 or total_steps < 1:
        raise ValueError(f"need step >= 0 and total_steps >= 1; got step={step}, total_steps={total_steps}")
    if method == "fixed":
        return base_tau
    k = step if periodic else min(step, total_steps)
    return 1.0 - (1.0 - base_tau) * (math.cos(math.pi * k / total_steps) + 1.0) / 2.0


@dataclasses.dataclass(frozen=True)
class Plan:
    """Derived values of one pretraining run. ``total_steps`` is the loop's length; the lr follows a schedule of
    ``lr_steps`` steps and tau one of ``tau_steps`` (all equal unless ``loop_length: passl_epochs``, D10)."""

    world_size: int
    per_device_batch: int
    global_batch: int
    schedule_batch: int
    num_images: int
    num_classes: int
    steps_per_epoch: float
    total_steps: int
    lr_steps: int
    tau_steps: int
    warmup_steps: int
    peak_lr: float
    backbone_channels: int
    start_lr: float
    base_tau: float
    tau_method: str
    periodic: bool

    def lr(self, step: int) -> float:
        """Learning rate at 0-based ``step``."""
        return lr_at(step, peak_lr=self.peak_lr, warmup_steps=self.warmup_steps, total_steps=self.lr_steps,
                     start_lr=self.start_lr, periodic=self.periodic)

    def tau(self, step: int) -> float:
        """Target EMA rate at 0-based ``step``."""
        return tau_at(step, base_tau=self.base_tau, total_steps=self.tau_steps, method=self.tau_method,
                      periodic=self.periodic)

    def epoch(self, steps_done: int) -> float:
        """Epochs completed after ``steps_done`` steps."""
        return steps_done / self.steps_per_epoch

    def derived(self) -> dict[str, Any]:
        """The derived values, as recorded under ``derived`` in the run's config (the schedules' own parameters
        are config keys already)."""
        given = ("start_lr", "base_tau", "tau_method", "periodic")
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in given}
