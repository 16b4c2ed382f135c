"""The console's formats as pure functions against hand-computed lines, and its pacing with a fake clock."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from byol_lib import ablation, console
from byol_lib.linear import PROGRESS_LINES, EpochProgress, epoch_line, result_line
from byol_lib.train import Progress, step_line

ROW = {"loss": 6.63701, "online_accuracy": 0.15625, "lr": 0.0375, "images_per_s": 81.4}


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("seconds", "text"), [(None, "?"), (float("nan"), "?"), (0.0, "0s"), (59.4, "59s"),
                                               (59.6, "1m00s"), (185.0, "3m05s"), (3599.0, "59m59s"),
                                               (7620.0, "2h07m"), (-3.0, "0s")])
def test_duration(seconds: float | None, text: str) -> None:
    assert console.duration(seconds) == text


def test_eta_is_the_mean_time_per_unit_times_the_units_left() -> None:
    assert console.eta(30.0, 3, 10) == pytest.approx(70.0)
    assert console.eta(30.0, 10, 10) == 0.0
    assert console.eta(0.0, 0, 10) is None


def test_progress_line() -> None:
    # 45 s / 12 steps = 3.75 s a step, 328 left: 1230 s
    assert console.progress_line("step", 12, 340, 45.0, "loss 1") == "step  12/340  45s elapsed, ETA 20m30s  loss 1"
    # resumed at step 100: 50 s for 10 steps, 90 left: 450 s
    assert console.progress_line("step", 110, 200, 50.0, skipped=100) == "step 110/200  50s elapsed, ETA 7m30s"
    assert console.progress_line("step", 0, 5, 0.0) == "step 0/5  0s elapsed, ETA ?"


def test_step_lines_are_short() -> None:
    assert step_line(1, 8, 0.4, ROW) == "step 1/8  0s elapsed, ETA 3s  loss 6.6370  acc 0.156  lr 0.0375  81 img/s"
    long = step_line(123456, 375300, 20 * 3600.0, {**ROW, "loss": -12.345678, "images_per_s": 12345.6, "lr": 4.8e-5})
    # 72,000 s / 123,456 steps x 251,844 left = 146,877 s: 40 h and 47.9 min, shown to the whole minute below
    assert long.startswith("step 123456/375300  20h00m elapsed, ETA 40h47m  loss -12.3457")
    assert len(long) <= 110


def test_pacer_first_unit_every_interval_last_and_a_heartbeat() -> None:
    """Steps of 7 s with a log interval of 50: step 1 (t = 7 s), then a line once 30 s passed since the last one
    (steps 6, 11, 16, ...: 35 s apart), step 50 (a multiple), and the last step."""
    clock = FakeClock()
    pacer = console.Pacer(100, 50, clock=clock)
    printed = []
    for step in range(1, 101):
        clock.now += 7.0
        if pacer.due(step):
            printed.append(step)
    assert printed[:4] == [1, 6, 11, 16] and 50 in printed and printed[-1] == 100
    assert all(b - a <= 5 for a, b in zip(printed, printed[1:], strict=False))
    quiet = console.Pacer(10, 4, heartbeat=None, clock=clock)
    assert [n for n in range(1, 11) if quiet.due(n)] == [1, 4, 8, 10]
    resumed = console.Pacer(100, 50, first=41, clock=clock)
    assert resumed.due(41) and not resumed.due(42)


def test_pretraining_prints_a_first_line_within_a_minute_whatever_the_log_interval(
        capsys: pytest.CaptureFixture[str]) -> None:
    """17 steps of 20 s, log interval 50 (the CIFAR-10 run that was silent for ten minutes): a line after step 1
    (20 s in), then every 40 s (two steps), and the last step."""
    clock = FakeClock()
    progress = Progress(17, 0, 50, enabled=True, clock=clock)
    for step in range(1, 18):
        clock.now += 20.0
        progress.update(step, {**ROW, "step": step}, logged=step == 17)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "step  1/17  20s elapsed, ETA 5m20s  loss 6.6370  acc 0.156  lr 0.0375  81 img/s"
    assert [line.split()[1] for line in lines] == ["1/17", "3/17", "5/17", "7/17", "9/17", "11/17", "13/17", "15/17",
                                                   "17/17"]
    assert lines[-1].startswith("step 17/17  5m40s elapsed, ETA 0s")


def test_a_resumed_run_counts_its_eta_from_this_session(capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock()
    progress = Progress(100, 60, 10, enabled=True, clock=clock)
    clock.now += 4.0
    progress.update(61, ROW, logged=False)
    assert capsys.readouterr().out.startswith("step  61/100  4s elapsed, ETA 2m36s")  # 4 s a step, 39 left


def holdout_entry(epoch: int, seconds: float = 0.5) -> dict[str, Any]:
    return {"epoch": epoch, "lr": {6.4: 0.1, 3.2: 0.05}, "train_loss": {6.4: 0.9, 3.2: 1.1},
            "holdout_top1": {6.4: 0.612, 3.2: 0.6}, "seconds": seconds}


def test_epoch_line() -> None:
    # 40 s / 80 epochs, 560 left: 280 s
    assert epoch_line("linear", holdout_entry(80), 640, 40.0) == (
        "linear epoch  80/640  40s elapsed, ETA 4m40s  best held-out top-1 61.2% (lr 6.4)")
    passl = {"epoch": 3, "lr": {1.6: 0.1}, "train_loss": {1.6: 0.7}, "test_top1": 0.5512, "test_top5": 0.9}
    assert epoch_line("linear", passl, 100, 6.0) == "linear epoch   3/100  6s elapsed, ETA 3m14s  test top-1 55.1%"
    simple = {"epoch": 1, "lr": {0.4: 0.1}, "train_loss": {0.4: 1.23456}}
    assert epoch_line("random init", simple, 1, 2.0) == (
        "random init epoch 1/1  2s elapsed, ETA 0s  train loss 1.2346 (lr 0.4)")


def test_linear_evaluation_prints_a_bounded_number_of_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """640 epochs of 0.25 s: epochs 1, 80, 160, ..., 640 (9 lines), and again for a second training of heads."""
    clock = FakeClock()
    progress = EpochProgress("linear", 640, clock=clock)
    for _ in range(2):  # the grid, then an extension of it: the clock restarts with its first epoch
        for epoch in range(1, 641):
            clock.now += 0.25
            progress(holdout_entry(epoch, seconds=0.25))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * (PROGRESS_LINES + 1)
    assert [line.split()[2] for line in lines[:9]] == [f"{e}/640" for e in (1, 80, 160, 240, 320, 400, 480, 560, 640)]
    assert lines[9].startswith("linear epoch   1/640  0s elapsed, ETA 2m40s")  # 0.25 s x 639
    assert lines[8].startswith("linear epoch 640/640  2m40s elapsed, ETA 0s")


def test_result_line() -> None:
    figures = {"top1": 0.71234, "top5": 0.98, "chosen_lr": 6.4, "knn_top1_k20": 0.653, "knn_top1_k200": 0.66,
               "random_init": {"top1": 0.4012, "knn_top1_k20": 0.302, "knn_top1_k200": 0.31}}
    assert result_line(figures) == "top-1 71.23% (lr 6.4); kNN 65.30% (k=20); random init: top-1 40.12%, kNN 30.20%"
    assert result_line({"top1": 0.5, "top5": 0.9}) == "top-1 50.00%"


def test_job_line_gives_the_batch_eta() -> None:
    job = SimpleNamespace(variant=SimpleNamespace(name="no_blur"), seed=1)
    done = ablation.Outcome(job, "finished", None, 123.0)  # type: ignore[arg-type]
    # 370 s for 3 jobs, 21 left: 2590 s
    assert ablation.job_line(done, 3, 24, 370.0) == (
        "== job  3/24  6m10s elapsed, ETA 43m10s  |  no_blur s1: finished in 2m03s")
    failed = ablation.Outcome(job, "failed", "RuntimeError: boom", 5.0)  # type: ignore[arg-type]
    assert ablation.job_line(failed, 24, 24, 600.0) == (
        "== job 24/24  10m00s elapsed, ETA 0s  |  no_blur s1: failed in 5s  RuntimeError: boom")


MAIN = {"top1": 0.71234, "knn_top1_k20": 0.653, "knn_top1_k200": 0.66,
        "random_init": {"top1": 0.4012, "knn_top1_k20": 0.302, "knn_top1_k200": 0.31}}
RECORDS = [  # fields of comparisons.json records
    {"variant": "crop_only", "n": 3, "delta": -21.43, "halfwidth": 5.27, "paper_delta": -35.0, "mde": 9.1,
     "resolved": True},
    {"variant": "no_blur", "n": 3, "delta": 0.4, "halfwidth": 6.01, "paper_delta": -1.2, "mde": 9.9,
     "resolved": False},
    {"variant": "passl_head_with_ema", "n": 1, "delta": 2.0, "halfwidth": None, "paper_delta": None, "mde": None,
     "resolved": False},
    {"variant": "no_flip", "n": 0, "delta": None, "halfwidth": None, "paper_delta": -0.4, "mde": None,
     "resolved": False},
]


def test_summary_table() -> None:
    lines = console.summary_table([("default-linear-s0 (BYOL, 8 epochs)", MAIN)], RECORDS, "default-ablation")
    assert lines == [
        "top-1                                   linear       kNN (k=20)",
        "default-linear-s0 (BYOL, 8 epochs)      71.23%    65.30%",
        "  random-init encoder                   40.12%    30.20%",
        "default-ablation: change vs baseline, linear top-1 points (paired 95% interval)",
        "variant                  ours             n   paper    MDE  resolved",
        "crop_only                 -21.4 ± 5.3     3   -35.0    9.1  yes",
        "no_blur                    +0.4 ± 6.0     3    -1.2    9.9  no",
        "passl_head_with_ema        +2.0           1       -      -  no interval (<2 seeds)",
        "no_flip                       -           0    -0.4      -  no interval (<2 seeds)",
    ]
    assert console.summary_table([], [], "") == []
    assert console.summary_table([("run", {"top1": 0.5})], []) == [
        "top-1                                   linear       kNN", f"{'run':<36}    50.00%         -"]
