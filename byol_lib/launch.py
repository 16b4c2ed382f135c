"""Building and running ``python -m paddle.distributed.launch`` jobs (the parent side of a launch).

The processes it starts use ``byol_lib.distributed`` for their device, process group and collectives.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from byol_lib import runtime
from byol_lib.choices import LAUNCH_LOG_DIR

_LAUNCH_NOISE = ("LAUNCH INFO", "Modified FLAGS detected", "FLAGS(name=", "=======================")
_LAUNCH_NOISE_ANYWHERE = ("HTTP Request:",)


def launch_command(script: str | Path, script_args: Sequence[str], *, nproc_per_node: int | None = None,
                   devices: str | None = None, nnodes: int = 1, master: str | None = None,
                   node_rank: int | None = None, log_dir: str | Path = LAUNCH_LOG_DIR) -> list[str]:
    """The ``python -m paddle.distributed.launch`` command line for a job."""
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--log_dir", str(log_dir), "--max_restart", "0"]
    if devices:
        cmd += ["--devices", devices]
    if nproc_per_node:
        cmd += ["--nproc_per_node", str(nproc_per_node)]
    if nnodes > 1:
        cmd += ["--nnodes", str(nnodes)]
    if master:
        cmd += ["--master", master]
    if node_rank is not None:
        cmd += ["--rank", str(node_rank)]
    return [*cmd, str(script), *script_args]


@dataclass
class LaunchResult:
    returncode: int
    log_dir: Path
    failure_tail: str = ""


def worker_logs(log_dir: Path) -> list[Path]:
    return sorted(log_dir.glob("workerlog.*"), key=lambda p: int(p.suffix[1:]) if p.suffix[1:].isdigit() else -1)


def _tail(path: Path, lines: int) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_launch(cmd: Sequence[str], log_dir: str | Path, *, stream: bool = True, tail_lines: int = 40,
               cwd: str | Path | None = None) -> LaunchResult:
    """Run a launch command, echo rank 0's output without launcher noise, and report a failed worker's log."""
    log_dir = Path(log_dir)
    env = runtime.quiet_env()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=cwd)
    assert proc.stdout is not None
    for line in proc.stdout:
        noise = line.startswith(_LAUNCH_NOISE) or any(n in line for n in _LAUNCH_NOISE_ANYWHERE)
        if stream and not noise:
            print(line, end="", flush=True)
    returncode = proc.wait()
    result = LaunchResult(returncode, log_dir)
    if returncode != 0:
        for log in worker_logs(log_dir):
            text = log.read_text(errors="replace")
            if "Traceback" in text or "Error" in text:
                result.failure_tail = f"--- {log} ---\n{_tail(log, tail_lines)}"
                break
        else:
            logs = worker_logs(log_dir)
            if logs:
                result.failure_tail = f"--- {logs[-1]} ---\n{_tail(logs[-1], tail_lines)}"
    return result


def launch_cli(cli_args: Sequence[str], *, nproc_per_node: int | None = None, devices: str | None = None,
               nnodes: int = 1, master: str | None = None, log_dir: str | Path = LAUNCH_LOG_DIR,
               stream: bool = True) -> LaunchResult:
    """Run ``byol <cli_args>`` in every worker of a ``paddle.distributed.launch`` job."""
    script = Path(__file__).resolve().parent / "cli.py"
    cmd = launch_command(script, list(cli_args), nproc_per_node=nproc_per_node, devices=devices, nnodes=nnodes,
                         master=master, log_dir=log_dir)
    return run_launch(cmd, log_dir, stream=stream)


def launch_pretrain(config: str | Path, overrides: Sequence[str] = (), **launch: Any) -> LaunchResult:
    """Pretrain ``config`` under ``paddle.distributed.launch`` (the notebooks' path); ``launch`` as in launch_cli."""
    return launch_cli(["pretrain", "-c", str(config), *[a for o in overrides for a in ("-o", o)]], **launch)


def run_pretraining(config: str | Path, overrides: Sequence[str], nproc_per_node: int | None, devices: str | None,
                    log_dir: Path) -> dict[str, Any]:
    """Pretrain in this process, or under ``paddle.distributed.launch`` when processes or devices are given;
    return the (validated) config. A failed launch raises with its failing worker's log tail."""
    from byol_lib.config import load_config
    from byol_lib.train import pretrain

    cfg = load_config(config, list(overrides))
    if not (nproc_per_node or devices):
        pretrain(cfg)
        return cfg
    result = launch_pretrain(config, overrides, nproc_per_node=nproc_per_node, devices=devices, log_dir=log_dir)
    if result.returncode != 0:
        raise RuntimeError(f"pretraining failed (exit code {result.returncode})\n{result.failure_tail}")
    return cfg
