"""Fault injection into the run lifecycle: torn files, a full disk, stale temp files, two identical runs at once,
SIGTERM/SIGINT, undecodable images in strict and skip mode, and notebook parameters that are not plain data."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import paddle
import pytest
from PIL import Image

from byol_lib import atomic, notebook, run_folder
from byol_lib.checkpoint import checksum_path, list_checkpoints
from byol_lib.cli import train_main
from byol_lib.config import load_config
from byol_lib.results import read_metrics, read_summary
from byol_lib.train import pretrain

from .conftest import ROOT, TINY_CONFIG

TRAIN = [sys.executable, str(ROOT / "tools" / "train.py"), "-c", str(TINY_CONFIG)]
LONG = ["-o", "epochs=10", "-o", "checkpoint.interval=1", "-o", "log_config.interval=5"]  # 40 steps


def _env() -> dict[str, str]:
    return {**os.environ, "BYOL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _weights(path: Path) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in paddle.load(str(path))["model"].items()}


def _assert_same_weights(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def _wait_for(pattern: str, folder: Path, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and not list(folder.glob(pattern)):
        time.sleep(0.01)
    assert list(folder.glob(pattern)), f"{pattern} never appeared under {folder}"


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run named ``run`` (8 steps, checkpoints after steps 6 and 8)."""
    out = tmp_path_factory.mktemp("finished")
    return pretrain(load_config(TINY_CONFIG, [f"output_dir={out}", "run_id=run"]), verbose=False)


def _copy(finished: Path, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A copy of the finished run under ``tmp_path`` and the config that resumes it."""
    run = shutil.copytree(finished, tmp_path / "run")
    return run, load_config(TINY_CONFIG, [f"output_dir={tmp_path}", "run_id=run"])


def _unfinish(run: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "running"}))


def test_atomic_write_that_fails_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    atomic.write_json(target, {"status": "running"})

    def full_disk(handle: Any) -> None:
        handle.write(b"{\"status\": ")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError, match="No space left"):
        atomic.write_atomic(target, full_disk)
    assert json.loads(target.read_text()) == {"status": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


@pytest.mark.slow
def test_torn_metrics_line_is_dropped_with_one_warning_and_the_run_resumes(
        finished: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run, cfg = _copy(finished, tmp_path)
    _unfinish(run)
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 9, "lo')  # a full disk cut the last line short
    with caplog.at_level(logging.WARNING):
        assert [row["step"] for row in read_metrics(run)] == list(range(1, 9))
    assert [r.getMessage() for r in caplog.records if "unreadable line" in r.getMessage()] == [
        f"{run / 'metrics.jsonl'}: dropped 1 unreadable line(s) (line 9; a write cut short)"]
    (run / "checkpoints" / "step_00000008.pdckpt").unlink()
    assert pretrain(cfg, verbose=False) == run
    assert [row["step"] for row in read_metrics(run)] == list(range(1, 9))
    assert read_summary(run)["status"] == "finished"


@pytest.mark.slow
def test_torn_summary_reads_as_interrupted_and_the_same_command_runs_again(
        finished: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    run, cfg = _copy(finished, tmp_path)
    text = (run / "summary.json").read_text()
    (run / "summary.json").write_text(text[:len(text) // 2])
    with caplog.at_level(logging.WARNING):
        assert read_summary(run)["status"] == "interrupted"
    assert "taking the run as interrupted" in caplog.text
    assert pretrain(cfg, verbose=False) == run
    assert read_summary(run)["status"] == "finished"


@pytest.mark.parametrize("damage", ["truncate", "flip a byte"])
@pytest.mark.slow
def test_damaged_newest_checkpoint_falls_back_to_the_older_one_and_says_so(
        finished: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str) -> None:
    run, cfg = _copy(finished, tmp_path)
    _unfinish(run)
    newest = run / "checkpoints" / "step_00000008.pdckpt"
    expected = _weights(newest)
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        data = data[:len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x01  # still unpickles: only the checksum sees it
    newest.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        pretrain(cfg, verbose=False)
    assert "passing over a checkpoint: " in caplog.text and "step_00000008.pdckpt" in caplog.text
    assert "resuming from the older checkpoint step_00000006.pdckpt" in caplog.text
    _assert_same_weights(_weights(newest), expected)  # steps 7 and 8 again, bit for bit
    assert [row["step"] for row in read_metrics(run)] == list(range(1, 9))


@pytest.mark.slow
def test_disk_full_while_checkpointing_is_one_error_naming_the_last_good_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real = atomic.write_atomic

    def fills_up(path: Path, data: Any) -> Path:
        if Path(path).name == "step_00000006.pdckpt":
            def partial(handle: Any) -> None:
                handle.write(data[:100])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(path, partial)
        return real(path, data)

    monkeypatch.setattr("byol_lib.checkpoint.write_atomic", fills_up)
    args = ["-c", str(TINY_CONFIG), "-o", f"output_dir={tmp_path}", "-o", "run_id=run"]
    assert train_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    run = tmp_path / "run"
    good = run / "checkpoints" / "step_00000004.pdckpt"
    assert len(err) == 1 and "No space left on device" in err[0] and f"last good checkpoint is {good}" in err[0]
    summary = read_summary(run)
    assert summary["status"] == "failed" and "CheckpointWriteError" in summary["error"]
    assert [step for step, _ in list_checkpoints(run / "checkpoints")] == [2, 4]
    assert not checksum_path(run / "checkpoints" / "step_00000006.pdckpt").exists()
    assert not [p for p in run.rglob("*") if atomic.TEMP_NAME.match(p.name)]

    monkeypatch.undo()
    assert train_main(args) == 0  # space again: resumes from step 4
    assert read_summary(run)["status"] == "finished"
    assert [row["step"] for row in read_metrics(run)] == list(range(1, 9))


@pytest.mark.slow
def test_stale_temp_files_are_removed_when_the_folder_is_next_held(finished: Path, tmp_path: Path) -> None:
    run, cfg = _copy(finished, tmp_path)
    stale = [run / ".summary.json.tmp-12345-0badcafe", run / ".summary.json.tmp",
             run / "checkpoints" / ".step_00000010.pdckpt.tmp-999"]
    for path in stale:
        path.write_bytes(b"half")
    assert pretrain(cfg, verbose=False) == run  # finished: nothing is trained, the leftovers go
    assert not any(path.exists() for path in stale)


def test_a_held_run_folder_refuses_a_second_holder_naming_the_pid(tmp_path: Path) -> None:
    with run_folder.hold(tmp_path / "run"):
        child = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                                "from byol_lib import run_folder\ntry:\n with run_folder.hold(Path(sys.argv[1])): "
                                "pass\nexcept run_folder.RunFolderBusy as err: print(err)", str(tmp_path / "run")],
                               capture_output=True, text=True, env={**_env(), "PYTHONPATH": str(ROOT)}, check=True)
    assert f"is in use by pid {os.getpid()}" in child.stdout
    with run_folder.hold(tmp_path / "run"):  # released: the next one may have it
        pass


@pytest.mark.slow
def test_two_identical_runs_started_together_one_refuses_and_rows_are_unique(tmp_path: Path) -> None:
    cmd = [*TRAIN, "-o", "epochs=6", "-o", f"output_dir={tmp_path}"]
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    (done, _), (refused, message) = sorted((proc.wait(timeout=300), proc.stderr.read()) for proc in procs)
    assert (done, refused) == (0, 2)
    assert message.count("\n") == 1 and "is in use by pid" in message and "--wait" in message
    runs = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(runs) == 1
    assert [row["step"] for row in read_metrics(runs[0])] == list(range(1, 25))


@pytest.mark.slow
def test_wait_starts_once_the_holder_lets_go(tmp_path: Path) -> None:
    cmd = [*TRAIN, "-o", f"output_dir={tmp_path}", "-o", "run_id=run", "--wait"]
    with run_folder.hold(tmp_path / "run"):
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert f"is in use by pid {os.getpid()}: waiting for it" in proc.stderr.readline()
        assert not (tmp_path / "run" / "summary.json").exists()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and read_summary(tmp_path / "run")["status"] == "finished"


@pytest.mark.slow
def test_sigterm_records_interrupted_exits_143_and_resumes_bit_identically(tmp_path: Path) -> None:
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    subprocess.run([*TRAIN, *LONG, "-o", f"output_dir={straight}"], check=True, env=_env(), capture_output=True)
    cmd = [*TRAIN, *LONG, "-o", f"output_dir={stopped}"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for("*/checkpoints/step_00000012.pdckpt", stopped)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert "Traceback" not in err and "interrupted by SIGTERM" in err and "re-run the same command" in err
    (run,) = [p for p in stopped.iterdir() if p.is_dir()]
    summary = read_summary(run)
    stopped_at = list_checkpoints(run / "checkpoints")[-1][0]
    assert summary["status"] == "interrupted" and summary["error"] == "interrupted by SIGTERM"
    assert 12 <= stopped_at < 40, "the run was not interrupted mid-way"

    rerun = subprocess.run(cmd, env=_env(), capture_output=True, text=True, check=True)
    assert f"resumed at step {stopped_at}" in rerun.stdout
    (straight_run,) = [p for p in straight.iterdir() if p.is_dir()]
    _assert_same_weights(_weights(list_checkpoints(run / "checkpoints")[-1][1]),
                         _weights(list_checkpoints(straight_run / "checkpoints")[-1][1]))
    assert [row["step"] for row in read_metrics(run)] == list(range(5, 41, 5))


@pytest.mark.slow
def test_sigint_records_interrupted_and_exits_130_without_a_traceback(tmp_path: Path) -> None:
    proc = subprocess.Popen([*TRAIN, *LONG, "-o", f"output_dir={tmp_path}"], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for("*/checkpoints/step_00000004.pdckpt", tmp_path)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err and "interrupted by SIGINT" in err
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert read_summary(run)["status"] == "interrupted"


def _image_folder(root: Path) -> Path:
    """Two classes of eight 24x24 PNGs; ``bee/3.png`` has a valid header but is cut off mid-data."""
    rng = np.random.default_rng(0)
    for name in ("ant", "bee"):
        (root / name).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    bad = root / "bee" / "3.png"
    bad.write_bytes(bad.read_bytes()[:300])
    return bad


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_truncated_image_in_strict_mode_stops_with_one_line_naming_it(tmp_path: Path, workers: int) -> None:
    bad = _image_folder(tmp_path / "images" / "train")
    overrides = [f"output_dir={tmp_path / 'runs'}", "dataloader.train.dataset.name=ImageNet",
                 f"dataloader.train.dataset.dataroot={tmp_path / 'images'}", "dataloader.train.dataset.num_images=0",
                 "dataloader.train.sampler.batch_size=8", "dataloader.train.dataset.bad_files=strict",
                 f"dataloader.train.num_workers={workers}"]
    out = subprocess.run([*TRAIN, *(a for o in overrides for a in ("-o", o))], env=_env(), capture_output=True,
                         text=True, timeout=240)  # a hang fails here
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot decode image file '{bad}'" in lines[0], out.stderr
    (run,) = (tmp_path / "runs").iterdir()
    summary = read_summary(run)
    assert summary["status"] == "failed" and str(bad) in summary["error"]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_truncated_image_in_linear_evaluation_stops_with_one_line_naming_it(tmp_path: Path, workers: int) -> None:
    """The feature loaders of linear evaluation (and kNN) report a bad file as the pretraining loader does: from
    the main process, one line, never a hang (it hung with loader workers before)."""
    bad = _image_folder(tmp_path / "images" / "train")
    _image_folder(tmp_path / "images" / "val")
    overrides = [f"output_dir={tmp_path / 'runs'}", "epochs=2", "linear_eval.random_init_baseline=False",
                 *(f"dataloader.{split}.{key}" for split in ("train", "val") for key in (
                     "dataset.name=ImageNet", f"dataset.dataroot={tmp_path / 'images' / split}",
                     "dataset.num_images=0", "dataset.bad_files=strict", f"num_workers={workers}"))]
    cmd = [sys.executable, str(ROOT / "tools" / "train.py"), "-c", str(ROOT / "configs/byol/tiny_linear.yaml"),
           "--pretrained", "random", *(a for o in overrides for a in ("-o", o))]
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)  # a hang fails here
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot decode image file '{bad}'" in lines[0], out.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert read_summary(run)["status"] == "failed" and str(bad) in read_summary(run)["error"]


@pytest.mark.slow
def test_skip_mode_counts_and_lists_the_skipped_files_in_the_summary(tmp_path: Path) -> None:
    bad = _image_folder(tmp_path / "images" / "train")
    cfg = load_config(TINY_CONFIG, [f"output_dir={tmp_path / 'runs'}", "dataloader.train.dataset.name=ImageNet",
                                    f"dataloader.train.dataset.dataroot={tmp_path / 'images'}",
                                    "dataloader.train.dataset.num_images=0", "dataloader.train.sampler.batch_size=8",
                                    "dataloader.train.num_workers=2"])
    summary = read_summary(pretrain(cfg, verbose=False))
    assert summary["status"] == "finished"
    assert summary["skipped_files"] == {"count": 1, "files": [str(bad)]}


NOTEBOOK = ROOT / "notebooks" / "10_pretrain.ipynb"


@pytest.mark.parametrize(("text", "message"), [
    ("epochs=!!binary MTIz", "YAML tags such as tag:yaml.org,2002:binary are refused"),
    ("overrides=!!set {a: null}", "YAML tags such as tag:yaml.org,2002:set are refused"),
    ("overrides=[!!python/name:os.system x]", "are refused"),
    ("epochs=[1, 2", "not a YAML value"),
])
def test_tagged_or_broken_notebook_parameters_are_refused(text: str, message: str) -> None:
    with pytest.raises(notebook.ParameterError, match=message):
        notebook.parse_parameter(text, notebook.declared_parameters(NOTEBOOK))


@pytest.mark.parametrize(("parameters", "message"), [
    ({"epochs": "two"}, "parameter epochs is declared int in 10_pretrain.ipynb, got str 'two'"),
    ({"epochs": True}, "parameter epochs is declared int"),
    ({"overrides": 3}, "parameter overrides is declared list"),
    ({"config": b"import os"}, "parameter config: a bytes is not plain data"),
    ({"overrides": [{1: "x"}]}, "parameter overrides: a int key is not plain data"),
])
def test_notebook_parameters_of_the_wrong_type_are_refused_before_a_kernel_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parameters: dict[str, Any], message: str) -> None:
    def no_kernel(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a kernel was started")

    monkeypatch.setattr(notebook.papermill, "execute_notebook", no_kernel)
    with pytest.raises(notebook.ParameterError, match=message):
        notebook.run_notebook(NOTEBOOK, parameters, results_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert notebook.parse_parameter("epochs=3", notebook.declared_parameters(NOTEBOOK)) == ("epochs", 3)


@pytest.mark.parametrize("when", ["KnnMonitor", "Progress"])  # before / after the "running" summary is written
@pytest.mark.slow
def test_a_signal_during_set_up_never_leaves_a_running_status(when: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM while the loop is being set up leaves no "running" status behind (before the summary is written: no
    summary; after: "interrupted"), and the same command then runs the whole schedule."""
    def signalled(*_: Any, **__: Any) -> None:
        raise run_folder.Interrupted(signal.SIGTERM)

    monkeypatch.setattr(f"byol_lib.train.{when}", signalled)
    cfg = load_config(TINY_CONFIG, [f"output_dir={tmp_path}", "run_id=run", "knn_monitor.interval_epochs=1",
                                    "knn_monitor.num_train=64", "knn_monitor.num_val=32"])
    with pytest.raises(run_folder.Interrupted):
        pretrain(cfg, verbose=False)
    assert read_summary(tmp_path / "run").get("status") == (None if when == "KnnMonitor" else "interrupted")
    monkeypatch.undo()
    pretrain(cfg, verbose=False)
    assert read_summary(tmp_path / "run")["status"] == "finished"
    assert [row["step"] for row in read_metrics(tmp_path / "run") if "loss" in row] == list(range(1, 9))
