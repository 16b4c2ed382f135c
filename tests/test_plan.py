"""lr_at / tau_at against closed forms written independently (cos^2 half-angle form, numpy interpolation)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from byol_lib.plan import lr_at, tau_at

# JAX 300-epoch preset at batch 4096 (the JAX code's configs/byol.py): base 0.3 * 4096 / 256 = 4.8.
PEAK, WARMUP, TOTAL = 4.8, 3127, 93835
DECAY = TOTAL - WARMUP


def closed_lr(step: int, peak: float, warmup: int, total: int, start: float = 0.0) -> float:
    """Warm-up by linear interpolation, cosine as peak * cos^2(pi * t / 2T), zero from ``total`` on."""
    if step >= total:
        return 0.0
    if step < warmup:
        return float(np.interp(step, [0, warmup], [start, peak]))
    return peak * math.cos(math.pi * (step - warmup) / (2 * (total - warmup))) ** 2


def closed_tau(step: int, base: float, total: int) -> float:
    """1 - (1 - base) * cos^2(pi * min(k, K) / 2K)."""
    return 1.0 - (1.0 - base) * math.cos(math.pi * min(step, total) / (2 * total)) ** 2


def approx(value: float) -> object:
    return pytest.approx(value, rel=1e-12, abs=1e-15)


def lr(step: int, start: float = 0.0) -> float:
    return lr_at(step, peak_lr=PEAK, warmup_steps=WARMUP, total_steps=TOTAL, start_lr=start)


@pytest.mark.parametrize(
    "step",
    [0, 1, WARMUP // 2, WARMUP - 1, WARMUP, WARMUP + 1, WARMUP + DECAY // 2, WARMUP + DECAY // 3, TOTAL - 1],
)
def test_lr_matches_closed_form(step: int) -> None:
    assert lr(step) == approx(closed_lr(step, PEAK, WARMUP, TOTAL))


def test_lr_landmarks() -> None:
    assert lr(0) == 0.0
    assert lr(WARMUP // 2) == approx(PEAK * (WARMUP // 2) / WARMUP)
    assert lr(WARMUP) == approx(PEAK)
    assert lr(WARMUP + DECAY // 2) == approx(PEAK / 2)
    assert 0.0 < lr(TOTAL - 1) < 1e-5


@pytest.mark.parametrize("step", [TOTAL, TOTAL + 1, TOTAL + DECAY, 10 * TOTAL])
def test_lr_is_zero_past_the_end(step: int) -> None:
    assert lr(step) == 0.0


def test_lr_never_rises_after_warmup() -> None:
    values = [lr(s) for s in range(WARMUP, 3 * TOTAL, 997)]
    assert all(b <= a for a, b in zip(values, values[1:], strict=False))


@pytest.mark.parametrize("step", [0, 1, WARMUP // 2, WARMUP - 1, WARMUP, TOTAL - 1])
def test_lr_start_lr(step: int) -> None:
    start = 1e-4  # PASSL's LinearWarmup start_lr (deviation D9)
    assert lr(step, start) == approx(closed_lr(step, PEAK, WARMUP, TOTAL, start))
    assert lr(0, start) == approx(start)


def test_lr_edge_cases() -> None:
    assert lr_at(0, peak_lr=2.0, warmup_steps=0, total_steps=1) == approx(2.0)
    assert lr_at(1, peak_lr=2.0, warmup_steps=0, total_steps=1) == 0.0
    assert lr_at(0, peak_lr=2.0, warmup_steps=1, total_steps=1, start_lr=0.5) == approx(0.5)
    assert lr_at(1, peak_lr=2.0, warmup_steps=1, total_steps=1, start_lr=0.5) == 0.0
    assert lr_at(9, peak_lr=2.0, warmup_steps=10, total_steps=10) == approx(1.8)
    assert lr_at(10, peak_lr=2.0, warmup_steps=10, total_steps=10) == 0.0
    for step in range(12):
        assert lr_at(step, peak_lr=1.0, warmup_steps=0, total_steps=10) == approx(closed_lr(step, 1.0, 0, 10))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"step": -1, "warmup_steps": 0, "total_steps": 10},
        {"step": 0, "warmup_steps": 11, "total_steps": 10},
        {"step": 0, "warmup_steps": 0, "total_steps": 0},
        {"step": 0, "warmup_steps": -1, "total_steps": 10},
    ],
)
def test_lr_rejects_bad_arguments(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        lr_at(peak_lr=1.0, **kwargs)


@pytest.mark.parametrize("base", [0.99, 0.996, 0.9])
@pytest.mark.parametrize("step", [0, 1, TOTAL // 4, TOTAL // 2, TOTAL - 1, TOTAL, TOTAL + 5, 2 * TOTAL])
def test_tau_matches_closed_form(base: float, step: int) -> None:
    assert tau_at(step, base_tau=base, total_steps=TOTAL) == approx(closed_tau(step, base, TOTAL))


def test_tau_landmarks() -> None:
    assert tau_at(0, base_tau=0.99, total_steps=TOTAL) == approx(0.99)
    assert tau_at(TOTAL // 2 * 2, base_tau=0.99, total_steps=TOTAL // 2 * 2) == 1.0
    assert tau_at(TOTAL // 2, base_tau=0.99, total_steps=TOTAL // 2 * 2) == approx(0.995)
    assert tau_at(TOTAL, base_tau=0.99, total_steps=TOTAL) == 1.0
    assert tau_at(5 * TOTAL, base_tau=0.99, total_steps=TOTAL) == 1.0
    values = [tau_at(s, base_tau=0.99, total_steps=TOTAL) for s in range(0, 2 * TOTAL, 991)]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))


def test_tau_fixed() -> None:
    for step in (0, 1, TOTAL // 2, TOTAL, 3 * TOTAL):
        assert tau_at(step, base_tau=0.996, total_steps=TOTAL, method="fixed") == 0.996


def test_tau_edge_cases() -> None:
    assert tau_at(0, base_tau=0.9, total_steps=1) == approx(0.9)
    assert tau_at(1, base_tau=0.9, total_steps=1) == 1.0
    assert tau_at(7, base_tau=0.9, total_steps=1) == 1.0
    with pytest.raises(ValueError):
        tau_at(0, base_tau=0.9, total_steps=10, method="linear")
    with pytest.raises(ValueError):
        tau_at(0, base_tau=0.9, total_steps=0)
    with pytest.raises(ValueError):
        tau_at(-1, base_tau=0.9, total_steps=10)
