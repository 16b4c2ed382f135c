"""What a pretraining run will do: its plan (batch sizes, step counts, warm-up, peak lr) and the schedules it
follows, the learning rate and the target EMA rate per step (paper §3.2, App. C).

``plan_for`` derives the frozen ``Plan`` from a validated config, the world size and the dataset; the training
step reads its lr and tau from it, and the run folder's ``config.yaml`` records it under ``derived``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

from byol_lib.config import Config, ConfigError, backbone_channels

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


def passl_loader_length(num_images: int, world_size: int, per_device: int, drop_last: bool) -> int:
    """Steps per epoch of PASSL's loader: each rank gets ceil(images / ranks) samples (padded), in batches."""
    per_rank = math.ceil(num_images / world_size)
    return per_rank // per_device if drop_last else math.ceil(per_rank / per_device)


def plan_for(cfg: Config, world_size: int, num_images: int, num_classes: int) -> Plan:
    """The run's plan: global batch, per-device batch, lr, steps, warm-up, classes. Checks consistency.

    ``total_steps`` is the length of the training loop; the lr follows a schedule of ``lr_steps`` and tau one of
    ``tau_steps``. All three are ``epochs x images // global batch`` except with ``loop_length: passl_epochs``
    (D10), which is PASSL's arithmetic at any world size: each process takes ``sampler.batch_size`` images a step
    (``global_batch_size`` does not change it), the loop runs ``epochs x len(PASSL's per-rank loader)`` steps, the
    lr follows ``T_max`` and tau ``epochs x images // global_batch_size`` (the schedule batch: the configured
    ``global_batch_size``, else the real one; the default peak lr and warm-up use it too), as in PASSL, and both
    schedules are periodic past their end.
    """
    sampler = cfg["dataloader"]["train"]["sampler"]
    configured = cfg["global_batch_size"]
    if cfg["loop_length"] == "passl_epochs":  # D10: PASSL's per-process batch is the sampler's
        per_device = sampler["batch_size"]
        global_batch = per_device * world_size
    elif configured is not None:
        if configured % world_size:
            raise ConfigError(f"key 'global_batch_size' = {configured} is not divisible by the {world_size} processes")
        per_device, global_batch = configured // world_size, configured
    else:
        per_device = sampler["batch_size"]
        global_batch = per_device * world_size
    schedule_batch = configured or global_batch
    total_images = cfg["total_images"] or num_images
    if total_images < global_batch:
        raise ConfigError(
            f"the dataset has {total_images} images, fewer than one global batch of {global_batch}; "
            "lower dataloader.train.sampler.batch_size"
        )
    steps_per_epoch = total_images / global_batch
    total_steps = cfg["epochs"] * total_images // schedule_batch
    sched = cfg["lr_scheduler"]
    peak_lr = sched["learning_rate"]
    if peak_lr is None:
        peak_lr = sched["base_lr"] * schedule_batch / 256
    if sched["end_lr"] is not None and not math.isclose(sched["end_lr"], peak_lr, rel_tol=1e-9):
        raise ConfigError(
            f"key 'lr_scheduler.end_lr' = {sched['end_lr']} differs from the peak learning rate {peak_lr}; "
            "PASSL's warm-up target and cosine peak must be equal: drop end_lr or set learning_rate"
        )
    warmup = sched["warmup_steps"]
    if warmup is None:
        warmup = int(sched["warmup_epochs"] * total_images // schedule_batch)
    lr_steps, loop_steps = total_steps, total_steps
    if cfg["loop_length"] == "passl_epochs":  # D10: PASSL's loop length, the schedules' own horizon
        steps_per_epoch = passl_loader_length(total_images, world_size, per_device, sampler["drop_last"])
        loop_steps = cfg["epochs"] * steps_per_epoch
        lr_steps = sched["T_max"] or total_steps
    elif sched["T_max"] is not None and sched["T_max"] != total_steps:
        raise ConfigError(
            f"key 'lr_scheduler.T_max' = {sched['T_max']} disagrees with the run's {total_steps} steps "
            f"(epochs x images // global batch = {cfg['epochs']} x {total_images} // {schedule_batch}); "
            "the schedule always follows the real number of steps here: drop T_max (or set "
            "loop_length: passl_epochs for PASSL's mismatch, D10)"
        )
    if warmup > lr_steps:
        key = "warmup_steps" if sched["warmup_steps"] is not None else "warmup_epochs"
        raise ConfigError(f"key 'lr_scheduler.{key}' = {sched[key]} gives a warm-up of {warmup} steps, longer than "
                          f"the schedule ({lr_steps} steps); lower it")
    if per_device % cfg["accum_steps"]:
        raise ConfigError(f"key 'accum_steps' = {cfg['accum_steps']} does not divide the per-process batch of "
                          f"{per_device}")
    in_channels = backbone_channels(cfg)
    neck, predictor = cfg["model"]["neck"], cfg["model"]["predictor"]
    for key, given, expected in (
        ("model.embedding_dim", cfg["model"]["embedding_dim"], in_channels),
        ("model.neck.in_channels", neck["in_channels"], in_channels),
        ("model.predictor.in_channels", predictor["in_channels"], neck["out_channels"]),
    ):
        if given is not None and given != expected:
            raise ConfigError(f"key '{key}' = {given} but the network gives {expected} channels there")
    if cfg["model"]["num_classes"] is not None:
        num_classes = cfg["model"]["num_classes"]
    return Plan(
        world_size=world_size, per_device_batch=per_device, global_batch=global_batch,
        schedule_batch=schedule_batch, num_images=total_images, num_classes=num_classes,
        steps_per_epoch=steps_per_epoch, total_steps=loop_steps, lr_steps=lr_steps, tau_steps=total_steps,
        warmup_steps=warmup, peak_lr=peak_lr, backbone_channels=in_channels, start_lr=sched["start_lr"],
        base_tau=cfg["model"]["target_decay_rate"], tau_method=cfg["model"]["target_decay_method"],
        periodic=cfg["loop_length"] == "passl_epochs",
    )


def resolve(cfg: Config, world_size: int, num_images: int, num_classes: int) -> Config:
    """A copy of ``cfg`` with its plan's values under ``derived`` (what a run folder's ``config.yaml`` holds)."""
    return {**copy.deepcopy(cfg), "derived": plan_for(cfg, world_size, num_images, num_classes).derived()}
