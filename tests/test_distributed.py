"""Real multi-process runs on CPU (gloo): 2 processes on one node, and 2 nodes rendezvousing on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from byol_lib.checkpoint import list_checkpoints
from byol_lib.distributed import launch_command, run_launch, select_device

from .conftest import ROOT, TINY_CONFIG

TRAIN = ROOT / "tools" / "train.py"
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _summary(output_dir: Path) -> dict:
    runs = [p for p in output_dir.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return json.loads((runs[0] / "summary.json").read_text()) | {"_dir": str(runs[0])}


def test_dataparallel_gradients_are_the_mean_over_ranks(tmp_path: Path) -> None:
    cmd = launch_command(ROOT / "tests" / "ddp_grad_worker.py", [str(tmp_path)], nproc_per_node=2,
                         log_dir=tmp_path / "log")
    result = run_launch(cmd, tmp_path / "log", stream=False)
    assert result.returncode == 0, result.failure_tail
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["world"] == 2
        assert report["local_differs_from_mean"]  # the ranks really had different batches
        assert report["max_error"] < 1e-5


def test_two_processes_train_and_only_rank0_writes(tmp_path: Path) -> None:
    cmd = launch_command(TRAIN, ["-c", str(TINY_CONFIG), "-o", f"output_dir={tmp_path / 'runs'}"],
                         nproc_per_node=2, log_dir=tmp_path / "log")
    result = run_launch(cmd, tmp_path / "log", stream=False)
    assert result.returncode == 0, result.failure_tail
    summary = _summary(tmp_path / "runs")
    assert summary["status"] == "finished" and summary["world_size"] == 2
    assert summary["global_batch"] == 64 and summary["total_steps"] == 2 * 128 // 64
    assert summary["replicas_identical"]  # both ranks applied the same averaged gradients
    run = Path(summary["_dir"])
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2, 4]
    assert not list(run.rglob("*.tmp*"))
    worker1 = (tmp_path / "log" / "workerlog.1").read_text()
    assert "finished:" not in worker1 and "Traceback" not in worker1  # rank 1 reports and writes nothing


def test_failed_worker_fails_the_launch_with_its_log(tmp_path: Path) -> None:
    cmd = launch_command(TRAIN, ["-c", str(TINY_CONFIG), "-o", f"output_dir={tmp_path / 'runs'}",
                                 "-o", "lr_scheduler.learning_rate=1.0e+30", "-o", "optimizer.formula=passl"],
                         nproc_per_node=2, log_dir=tmp_path / "log")
    result = run_launch(cmd, tmp_path / "log", stream=False)
    assert result.returncode != 0
    assert "lower the learning rate" in result.failure_tail and "workerlog" in result.failure_tail


def test_two_nodes_rendezvous_on_loopback(tmp_path: Path) -> None:
    master = f"127.0.0.1:{_free_port()}"
    procs = []
    for node in (0, 1):
        cmd = launch_command(TRAIN, ["-c", str(TINY_CONFIG), "-o", f"output_dir={tmp_path / 'runs'}"],
                             nproc_per_node=1, nnodes=2, master=master, log_dir=tmp_path / f"log{node}")
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    summary = _summary(tmp_path / "runs")
    assert summary["status"] == "finished" and summary["world_size"] == 2 and summary["replicas_identical"]


def test_cpu_build_selects_cpu() -> None:
    assert select_device("auto") == "cpu"
    assert select_device("cpu") == "cpu"


def test_linear_eval_runs_under_the_launcher(tmp_path: Path) -> None:
    from byol_lib.cli import main
    from byol_lib.config import load_config
    from byol_lib.train import pretrain

    run = pretrain(load_config(TINY_CONFIG, [f"output_dir={tmp_path / 'pre'}"]), verbose=False)
    checkpoint = list_checkpoints(run / "checkpoints")[-1][1]
    code = main(["linear-eval", "-c", str(ROOT / "configs" / "byol" / "tiny_linear.yaml"), "--pretrained",
                 str(checkpoint), "--nproc_per_node", "2", "--log_dir", str(tmp_path / "log"),
                 "-o", f"output_dir={tmp_path / 'runs'}", "-o", "linear_eval.random_init_baseline=False"])
    assert code == 0
    summary = _summary(tmp_path / "runs")
    assert summary["status"] == "finished" and summary["world_size"] == 2 and 0.0 <= summary["top1"] <= 1.0


def test_the_passl_file_notice_is_printed_once_under_a_launch(tmp_path: Path) -> None:
    """Both workers stop at the missing ImageNet folder; only rank 0 says the file is PASSL's own."""
    passl_file = ROOT / "tests" / "fixtures" / "passl" / "byol_r50_IM.yaml"
    cmd = launch_command(TRAIN, ["-c", str(passl_file)], nproc_per_node=2, log_dir=tmp_path / "log")
    result = run_launch(cmd, tmp_path / "log", stream=False)
    assert result.returncode != 0
    logs = [(tmp_path / "log" / f"workerlog.{rank}").read_text() for rank in (0, 1)]
    assert all("'dataloader.train.dataset.dataroot' = 'data/ILSVRC2012/train' does not exist" in log for log in logs)
    assert [log.count("PASSL's own file") for log in logs] == [1, 0]
