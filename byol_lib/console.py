"""What the console shows: elapsed time and ETA, paced progress lines, and the reproduction's closing summary table.

Every long loop (pretraining steps, linear-evaluation epochs, ablation jobs) prints ``<unit> n/N``, the elapsed
time and an ETA from the mean time per unit so far. ``Pacer`` decides when: the first unit, every ``every`` units,
the last, and (with a heartbeat) whenever that many seconds passed since the last line, so a long log interval
never leaves the console silent. ``summary_table`` is what ``./run_all.sh`` ends with.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

HEARTBEAT_S = 30.0  # a progress line at least this often, whatever the log interval
_KNN_PREFIX = "knn_top1_k"


def duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``2h07m``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def eta(elapsed: float, done: int, total: int) -> float | None:
    """Seconds left at the mean time per unit so far (None before the first unit)."""
    return None if done <= 0 else elapsed / done * max(total - done, 0)


def progress_line(unit: str, done: int, total: int, elapsed: float, details: str = "", *, skipped: int = 0) -> str:
    """``<unit> n/N  <elapsed> elapsed, ETA <left>  <details>``; ``skipped`` units (done before a resume) are not
    part of the elapsed time, so they do not count in the mean."""
    left = eta(elapsed, done - skipped, total - skipped)
    line = f"{unit} {done:>{len(str(total))}d}/{total}  {duration(elapsed)} elapsed, ETA {duration(left)}"
    return f"{line}  {details}" if details else line


class Pacer:
    """When a loop prints: its first unit, every ``every``-th, its last, and whenever ``heartbeat`` seconds (None:
    never) passed since the previous line."""

    def __init__(self, total: int, every: int, *, first: int = 1, heartbeat: float | None = HEARTBEAT_S,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.total, self.every, self.first, self.heartbeat, self.clock = total, max(1, every), first, heartbeat, clock
        self.last = clock()

    def due(self, done: int) -> bool:
        """Whether unit ``done`` (1-based) gets a line; a True resets the heartbeat."""
        now = self.clock()
        beat = self.heartbeat is not None and now - self.last >= self.heartbeat
        if done == self.first or done % self.every == 0 or done >= self.total or beat:
            self.last = now
            return True
        return False


def percent(fraction: float | None, digits: int = 2) -> str:
    """A 0-1 fraction as ``71.23%``; ``-`` when missing."""
    return "-" if fraction is None or not math.isfinite(fraction) else f"{100 * fraction:.{digits}f}%"


def knn_k(figures: Mapping[str, Any]) -> int | None:
    """The smallest k of a linear run's kNN figures (``knn_top1_k<k>``), None without any."""
    ks = [int(key[len(_KNN_PREFIX):]) for key in figures if key.startswith(_KNN_PREFIX)]
    return min(ks) if ks else None


def _signed(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None or not math.isfinite(value) else f"{value:>+{width}.1f}"


def _interval(record: Mapping[str, Any]) -> str:
    """``-21.4 ± 5.3`` (the mean paired change and its half-width), 14 wide."""
    delta, half = record.get("delta"), record.get("halfwidth")
    text = _signed(delta, 6) + ("" if half is None else f" ± {half:.1f}")
    return f"{text:<14}"


def _resolved(record: Mapping[str, Any]) -> str:
    if record.get("n", 0) < 2:
        return "no interval (<2 seeds)"
    return "yes" if record.get("resolved") else "no"


def summary_table(main_runs: Sequence[tuple[str, Mapping[str, Any]]], comparisons: Sequence[Mapping[str, Any]],
                  study: str = "") -> list[str]:
    """The closing summary: each main linear run (``(label, summary.json)``) and its random-init encoder (linear
    and kNN top-1, %), then each ablation variant's paired change against the baseline (points, 95% interval, from
    ``comparisons.json`` records) next to the paper's change, its minimum detectable effect and whether the
    interval excludes 0."""
    lines: list[str] = []
    if main_runs:
        k = knn_k(main_runs[0][1])
        lines += [f"{'top-1':<36} {'linear':>9} {'kNN':>9}" + (f" (k={k})" if k else "")]
        for label, run in main_runs:
            lines.append(f"{label:<36} {percent(run.get('top1')):>9} {percent(run.get(f'{_KNN_PREFIX}{k}')):>9}")
            random = run.get("random_init")
            if isinstance(random, Mapping):
                lines.append(f"{'  random-init encoder':<36} {percent(random.get('top1')):>9} "
                             f"{percent(random.get(f'{_KNN_PREFIX}{k}')):>9}")
    if comparisons:
        lines += [f"{study or 'ablation'}: change vs baseline, linear top-1 points (paired 95% interval)",
                  f"{'variant':<24} {'ours':<14}  {'n':>2}  {'paper':>6}  {'MDE':>5}  resolved"]
        for record in comparisons:
            mde = record.get("mde")
            lines.append(f"{record['variant'][:24]:<24} {_interval(record)}  {record.get('n', 0):>2}  "
                         f"{_signed(record.get('paper_delta'), 6)}  "
                         f"{'-' if mde is None else f'{mde:.1f}':>5}  {_resolved(record)}")
    return lines
