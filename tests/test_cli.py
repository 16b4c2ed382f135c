"""The ``byol`` command line: lazy imports, one spelling per flag (old ones noted), only the flags a command takes."""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys

import pytest

from byol_lib import cli

HEAVY = ("paddle", "pandas", "papermill", "nbformat", "nbconvert", "matplotlib")

_IMPORT_PROBE = f"""
import sys
from byol_lib import cli
parser = cli.byol_parser()
for name, sub in parser._subparsers._group_actions[0].choices.items():
    sub.format_help()
print(" ".join(sorted(m for m in {HEAVY!r} if m in sys.modules)) or "none")
"""


def test_the_command_line_and_every_help_load_no_heavy_module() -> None:
    done = subprocess.run([sys.executable, "-c", _IMPORT_PROBE], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["none"], done.stdout


_PADDLE_PROBE = """
import os, sys
import byol_lib
from byol_lib import runtime
assert "paddle" not in sys.modules
import paddle
print(os.environ.get("OMP_NUM_THREADS", "unset"), runtime.blas_threads())
"""


@pytest.mark.parametrize(("omp", "expected"), [(None, ["unset", "2"]), ("3", ["3", "3"])])
@pytest.mark.slow
def test_the_first_import_of_paddle_anywhere_configures_the_process(omp: str | None, expected: list[str]) -> None:
    """The import hook of ``byol_lib``: threads as ``runtime.configure()`` sets them, the user's OMP value kept."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "BYOL_NUM_THREADS")}
    env.update({"OMP_NUM_THREADS": omp} if omp else {"BYOL_NUM_THREADS": "2"})
    done = subprocess.run([sys.executable, "-c", _PADDLE_PROBE], env=env, capture_output=True, text=True, check=True)
    if done.stdout.split()[-1] == "None":
        pytest.skip("numpy is not linked against OpenBLAS")
    assert done.stdout.split() == expected
    assert "OMP_NUM_THREADS" not in done.stderr  # Paddle's import-time warning


def _options(command: str) -> set[str]:
    """The option strings ``byol <command> --help`` lists."""
    sub = cli.byol_parser()._subparsers._group_actions[0].choices[command]
    return {s for action in sub._actions if action.help != argparse.SUPPRESS for s in action.option_strings}


def test_each_command_lists_only_the_flags_it_takes() -> None:
    assert not {"--pretrained", "--load", "--evaluate-only"} & _options("pretrain")
    assert "--resume" not in _options("linear-eval") and "--pretrained" in _options("linear-eval")
    for command in cli.COMMANDS:
        assert not [s for s in _options(command) if s.startswith("--") and "_" in s], command
    with pytest.raises(SystemExit) as exited:
        cli.main(["pretrain", "-c", "configs/byol/tiny_cpu.yaml", "--pretrained", "W"])
    assert exited.value.code == 2


def test_launch_flags_and_seeds_are_the_same_in_every_command() -> None:
    launch = {"--nproc-per-node", "--devices", "--gpus"}
    for command in ("pretrain", "linear-eval", "reproduce", "ablate"):
        assert launch <= _options(command), command
    reproduce = cli.byol_parser().parse_args(["reproduce"])
    ablate = cli.byol_parser().parse_args(["ablate", "--grid", "g.yaml"])
    assert reproduce.seeds == ablate.seeds == [0]  # README: "--seeds 0 1 2 for several seeds"


@pytest.mark.parametrize(("command", "old", "new"), [
    (["pretrain", "-c", "c.yaml"], ["--nproc_per_node", "2"], ["--nproc-per-node", "2"]),
    (["linear-eval", "-c", "c.yaml"], ["--log_dir", "L"], ["--log-dir", "L"]),
    (["reproduce"], ["--nproc", "2"], ["--nproc-per-node", "2"]),
    (["ablate", "--grid", "g.yaml"], ["--nproc_per_node", "2"], ["--nproc-per-node", "2"]),
    (["extract", "ckpt", "--output", "w.pdparams"], ["--remove_prefix"], ["--remove-prefix"]),
    (["pretrain", "-c", "c.yaml"], ["--no-cuda"], ["--device", "cpu"]),  # a flag for a value: the note names both
])
def test_old_spellings_still_work_and_say_so_in_one_line(capsys: pytest.CaptureFixture[str], command: list[str],
                                                         old: list[str], new: list[str]) -> None:
    parse = cli.byol_parser().parse_args
    assert parse([*command, *new]) == parse([*command, *old])
    use = " ".join(new) if len(old) == 1 and len(new) == 2 else new[0]
    assert capsys.readouterr().err == f"note: {old[0]} is deprecated, use {use}\n"


def test_version_is_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"byol {importlib.metadata.version('byol-repro')}\n"
