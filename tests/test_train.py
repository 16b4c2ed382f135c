"""End-to-end pretraining on the tiny preset: run folder, schedules, exact resume after SIGKILL, failures."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import paddle
import pytest

from byol_lib.checkpoint import list_checkpoints
from byol_lib.config import load_config
from byol_lib.results import read_metrics
from byol_lib.train import NonFiniteLossError, pretrain

from .conftest import ROOT, TINY_CONFIG

TRAIN = [sys.executable, str(ROOT / "tools" / "train.py"), "-c", str(TINY_CONFIG)]


def _env() -> dict[str, str]:
    return {**os.environ, "BYOL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_tiny_run_writes_a_complete_run_folder(tmp_path: Path) -> None:
    cfg = load_config(TINY_CONFIG, [f"output_dir={tmp_path}"])
    run = pretrain(cfg, verbose=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 1 and summary["device"] == "cpu"
    assert summary["paddle_version"] == paddle.__version__
    resolved = (run / "config.yaml").read_text()
    assert "derived:" in resolved and "peak_lr" in resolved
    rows = read_metrics(run)
    total, warmup, peak = 2 * 128 // 32, 128 // 32, 0.3 * 32 / 256  # epochs x images // batch; base_lr x B/256
    assert [r["step"] for r in rows] == list(range(1, total + 1))
    for row in rows:  # the lr/tau used at 0-based step k = row["step"] - 1, against closed forms
        k = row["step"] - 1
        lr = peak * k / warmup if k < warmup else peak * 0.5 * (1 + math.cos(math.pi * (k - warmup) / (total - warmup)))
        tau = 1 - (1 - 0.99) * (math.cos(math.pi * k / total) + 1) / 2
        assert row["lr"] == pytest.approx(lr, abs=1e-12) and row["tau"] == pytest.approx(tau, abs=1e-12)
        assert 0.0 <= row["byol_loss"] <= 8.0 and 0.0 <= row["online_accuracy"] <= 1.0
    assert [step for step, _ in list_checkpoints(run / "checkpoints")] == [6, 8]  # every 2 steps, keep 2


def _final_weights(run: Path) -> dict[str, np.ndarray]:
    step, path = list_checkpoints(run / "checkpoints")[-1]
    return {k: np.asarray(v) for k, v in paddle.load(str(path))["model"].items()}


def _only_run(folder: Path) -> Path:
    runs = [p for p in folder.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_to_identical_weights(tmp_path: Path) -> None:
    args = ["-o", "epochs=10", "-o", "checkpoint.interval=1", "-o", "log_config.interval=5"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run([*TRAIN, *args, "-o", f"output_dir={straight}"], check=True, env=_env(), capture_output=True)

    cmd = [*TRAIN, *args, "-o", f"output_dir={killed}"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(killed.glob("*/checkpoints/step_00000012.pdckpt")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = _only_run(killed)
    killed_at = list_checkpoints(run / "checkpoints")[-1][0]
    assert 12 <= killed_at < 40, "the run was not interrupted mid-way"
    assert json.loads((run / "summary.json").read_text())["status"] == "running"

    rerun = subprocess.run(cmd, env=_env(), capture_output=True, text=True, check=True)
    assert f"resumed at step {killed_at}" in rerun.stdout
    assert _only_run(killed) == run
    expected, got = _final_weights(_only_run(straight)), _final_weights(run)
    assert expected.keys() == got.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # no duplicated rows after the resume


def test_non_finite_loss_stops_with_a_clear_error(tmp_path: Path) -> None:
    cfg = load_config(TINY_CONFIG, [f"output_dir={tmp_path}", "lr_scheduler.learning_rate=1.0e+30",
                                    "lr_scheduler.warmup_epochs=0", "optimizer.formula=passl"])
    with pytest.raises(NonFiniteLossError, match="loss is nan|weights became NaN or infinite") as err:
        pretrain(cfg, verbose=False)
    run = _only_run(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "NonFiniteLossError" in summary["error"]
    for _, path in list_checkpoints(run / "checkpoints"):  # whatever was saved is finite
        assert all(np.isfinite(np.asarray(v)).all() for v in paddle.load(str(path))["model"].values())
    assert "checkpoint" in str(err.value)


@pytest.mark.parametrize(("extra", "message"), [
    (["-o", "optimizer.lars_weight_decy=1e-6"], "did you mean 'optimizer.lars_weight_decay'"),
    (["-o", "lr_scheduler.base_lr=-1"], "'lr_scheduler.base_lr' = -1 must be >= 0"),
    (["--device", "gpu"], "device 'gpu' was requested but"),
])
def test_bad_input_fails_before_any_work_and_writes_nothing(tmp_path: Path, extra: list[str], message: str) -> None:
    out = subprocess.run([*TRAIN, "-o", f"output_dir={tmp_path / 'runs'}", *extra], env=_env(),
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_named_run_is_reused_when_finished_and_guarded_against_other_configs(tmp_path: Path) -> None:
    from byol_lib.config import ConfigError

    cfg = load_config(TINY_CONFIG, [f"output_dir={tmp_path}", "run_id=named"])
    run = pretrain(cfg, verbose=False)
    before = (run / "summary.json").read_text()
    assert pretrain(cfg, verbose=False) == run  # finished: nothing is trained or rewritten
    assert (run / "summary.json").read_text() == before
    with pytest.raises(ConfigError, match="different config"):
        pretrain(load_config(TINY_CONFIG, [f"output_dir={tmp_path}", "run_id=named", "seed=1"]), verbose=False)


@pytest.mark.slow
def test_knn_monitor_logs_during_pretraining(tmp_path: Path) -> None:
    cfg = load_config(TINY_CONFIG, [f"output_dir={tmp_path}", "knn_monitor.interval_epochs=1", "knn_monitor.k=5"])
    rows = read_metrics(pretrain(cfg, verbose=False))
    knn = [r for r in rows if "knn_top1" in r]
    assert [r["step"] for r in knn] == [4, 8] and all(0.0 <= r["knn_top1"] <= 1.0 for r in knn)


@pytest.mark.slow
def test_the_loop_moves_the_target_after_each_optimiser_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the real loop, every step is: LARS step, then the EMA towards the *updated* online weights (the JAX
    code's order), with the scheduled tau; the target's new weights are tau x old + (1 - tau) x updated online."""
    import byol_lib.train as train_module
    from byol_lib.ema import update_target, weights
    from byol_lib.optim import LARS

    calls: list[str] = []
    real_step = LARS.step

    def step(self: LARS, lr: float) -> None:
        calls.append("optimiser")
        real_step(self, lr)

    def ema(online: paddle.nn.Layer, target: paddle.nn.Layer, tau: float) -> None:
        calls.append("ema")
        before = [w.numpy().copy() for w in weights(target)]
        now = [w.numpy().copy() for w in weights(online)]
        update_target(online, target, tau)
        for old, new, after in zip(before, now, weights(target), strict=True):
            np.testing.assert_allclose(after.numpy(), tau * old + (1 - tau) * new, rtol=1e-5, atol=1e-7)

    monkeypatch.setattr(LARS, "step", step)
    monkeypatch.setattr(train_module, "update_target", ema)
    pretrain(load_config(TINY_CONFIG, [f"output_dir={tmp_path}"]), verbose=False)
    steps = [row["step"] for row in read_metrics(next(tmp_path.iterdir())) if "loss" in row]
    assert calls == ["optimiser", "ema"] * len(steps) and len(steps) == 8
