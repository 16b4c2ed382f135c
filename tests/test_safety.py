"""Fault injection: weight files that try to run code, files other tools must read, and inputs that must fail
with one line (exit 2) and write nothing."""

from __future__ import annotations

import collections
import pickle
import pickletools
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from byol_lib.checkpoint import list_checkpoints, save_checkpoint
from byol_lib.cli import main
from byol_lib.config import ConfigError, load_config
from byol_lib.export import convert_file, extract_file
from byol_lib.model import ResNet, byol_from_config
from byol_lib.optim import LARS
from byol_lib.plan import resolve
from byol_lib.results import read_metrics, read_summary
from byol_lib.run_folder import LOCK
from byol_lib.safe_pickle import WeightFileError, load_weights
from byol_lib.train import pretrain

from .conftest import ROOT, TINY_CONFIG

TINY_LINEAR = ROOT / "configs" / "byol" / "tiny_linear.yaml"
ONE_EPOCH = ["-o", "epochs=1"]  # 4 steps, checkpoints after steps 2 and 4


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file appears if the loader runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


@pytest.fixture()
def evil(tmp_path: Path) -> Path:
    """A checkpoint-shaped pickle whose model entry runs code when unpickled."""
    path = tmp_path / "evil" / "step_00000002.pdckpt"
    path.parent.mkdir()
    with open(path, "wb") as handle:
        pickle.dump({"step": 2, "model": {"conv1.weight": _Payload(tmp_path / "MARKER")}, "optimizer": {},
                     "extra": {}}, handle)
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch tiny pretraining run (checkpoints after steps 2 and 4)."""
    return pretrain(load_config(TINY_CONFIG, [f"output_dir={tmp_path_factory.mktemp('runs')}", "epochs=1"]),
                    verbose=False)


def one_error_line(capsys: pytest.CaptureFixture[str], code: int) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    return lines[0]


def pretrain_args(output_dir: Path, *more: str) -> list[str]:
    return ["pretrain", "-c", str(TINY_CONFIG), "-o", f"output_dir={output_dir}", *ONE_EPOCH, *more]


# ---------------------------------------------------------------------------------------------
# Item 1: no load path runs code


def _tool(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.parametrize("script", ["tools/extract_weight.py", "tools/passl2ppclas/convert.py"])
@pytest.mark.slow
def test_tools_refuse_a_pickle_that_runs_code(tmp_path: Path, evil: Path, script: str) -> None:
    out = tmp_path / "out" / "w.pdparams"
    args = [str(evil)] if script.endswith("extract_weight.py") else ["--checkpoint", str(evil)]
    done = _tool(script, *args, "--output", str(out))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert str(evil) in lines[0] and "refused to load io.open" in lines[0]
    assert not (tmp_path / "MARKER").exists() and not out.parent.exists()


@pytest.mark.parametrize("path", ["extract", "pretrained", "load", "resume", "auto-resume"])
def test_cli_paths_refuse_a_pickle_that_runs_code(tmp_path: Path, evil: Path, capsys: pytest.CaptureFixture[str],
                                                  path: str) -> None:
    out = tmp_path / "out"
    linear = ["linear-eval", "-c", str(TINY_LINEAR), "-o", f"output_dir={out}"]
    if path == "auto-resume":  # dropped into an unfinished run's checkpoints/, then the same command again
        (out / "run" / "checkpoints").mkdir(parents=True)
        shutil.copy(evil, out / "run" / "checkpoints" / evil.name)
    argv = {"extract": ["extract", str(evil), "--output", str(out / "w.pdparams")],
            "pretrained": [*linear, "--pretrained", str(evil)],
            "load": [*linear, "--load", str(evil), "--evaluate-only"],
            "resume": pretrain_args(out, "--resume", str(evil)),
            "auto-resume": pretrain_args(out, "-o", "run_id=run")}[path]
    line = one_error_line(capsys, main(argv))
    assert "refused to load io.open" in line and (evil.name if path == "auto-resume" else str(evil)) in line
    assert not (tmp_path / "MARKER").exists()
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name != LOCK) if out.exists() else []
    assert written == (["run", "run/checkpoints", f"run/checkpoints/{evil.name}"] if path == "auto-resume" else [])


def test_loader_reads_what_paddle_save_writes_as_paddle_load_does(tmp_path: Path) -> None:
    """A Layer state dict, an optimizer state, nested tensors, numpy scalars and an OrderedDict, as Paddle 3.3
    writes them; a PASSL-style plain pickle."""
    paddle.seed(0)
    net = ResNet(18, "cifar", width=4)
    opt = paddle.optimizer.Momentum(parameters=net.parameters(), learning_rate=0.1)
    net(paddle.randn([2, 3, 8, 8])).mean().backward()
    opt.step()
    objects = {"state_dict.pdparams": net.state_dict(), "optimizer.pdopt": opt.state_dict(),
               "nested.pd": {"a": {"b": paddle.ones([2])}, "s": np.float32(1.5), "o": collections.OrderedDict(x=[1])}}
    for name, obj in objects.items():
        paddle.save(obj, str(tmp_path / name))
    with open(tmp_path / "passl.pd", "wb") as handle:
        pickle.dump({"epoch": 3, "state_dict": {k: v.numpy() for k, v in net.state_dict().items()}}, handle)
    for name in [*objects, "passl.pd"]:
        _assert_same(load_weights(tmp_path / name), paddle.load(str(tmp_path / name), return_numpy=True))


def _assert_same(got: object, want: object) -> None:
    assert type(got) is type(want), (type(got), type(want))
    if isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            _assert_same(got[key], want[key])
    elif isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    else:
        assert got == want


@pytest.mark.parametrize("payload", [np.array([1, "x"], dtype=object), ResNet])
def test_loader_refuses_objects_that_are_not_plain_data(tmp_path: Path, payload: object) -> None:
    path = tmp_path / "w.pdparams"
    path.write_bytes(pickle.dumps({"w": payload}))
    with pytest.raises(WeightFileError, match="refused") as caught:
        load_weights(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


# ---------------------------------------------------------------------------------------------
# Item 8: files for PaddleClas load under numpy 1.x (no numpy._core reference)


def _global_references(data: bytes) -> list[str]:
    """Every global a pickle references; STACK_GLOBAL (protocol 4) takes its names from the stack, so none here."""
    ops = list(pickletools.genops(data))
    assert not [op for op, _, _ in ops if op.name == "STACK_GLOBAL"]
    return [arg.replace(" ", ".") for op, arg, _ in ops if op.name == "GLOBAL"]


def test_converted_and_extracted_files_reference_no_numpy_core_of_numpy2(tmp_path: Path) -> None:
    paddle.seed(1)
    source = {k: v.numpy() for k, v in ResNet(18, "imagenet", width=8).state_dict().items()}
    with open(tmp_path / "passl.pd", "wb") as handle:  # written under numpy 2: references numpy._core
        pickle.dump({"epoch": 1, "state_dict": {f"towers.0.0.{k}": v for k, v in source.items()}}, handle)
    converted, extracted = tmp_path / "res18_ppclas.pdparams", tmp_path / "backbone.pdparams"
    want = convert_file(tmp_path / "passl.pd", converted, "res18", width=8)
    extract_file(tmp_path / "passl.pd", extracted)
    for path, state in ((converted, want), (extracted, source)):
        refs = _global_references(path.read_bytes())
        assert "numpy.core.multiarray._reconstruct" in refs and not [r for r in refs if "numpy._core" in r]
        assert set(refs) <= {"numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype"}
        for loaded in (paddle.load(str(path), return_numpy=True), load_weights(path)):
            _assert_same(loaded, state)
        tensors = paddle.load(str(path))
        assert all(np.array_equal(tensors[k].numpy(), v) for k, v in state.items())


# ---------------------------------------------------------------------------------------------
# Items 5, 6, 10: where --resume writes, and one-line errors that write nothing


@pytest.mark.slow
def test_resume_from_a_run_folder_of_ours_continues_in_it(tmp_path: Path, tiny_run: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    step2 = dict(list_checkpoints(tiny_run / "checkpoints"))[2]
    assert main(pretrain_args(tmp_path / "elsewhere", "--resume", str(step2))) == 0
    assert not (tmp_path / "elsewhere").exists()
    assert read_summary(tiny_run)["status"] == "finished"
    assert [row["step"] for row in read_metrics(tiny_run)] == [1, 2, 3, 4]


@pytest.mark.slow
def test_resume_from_a_loose_file_writes_under_output_dir(tmp_path: Path, tiny_run: Path) -> None:
    loose = tmp_path / "loose" / "x.pdckpt"
    loose.parent.mkdir()
    shutil.copy(dict(list_checkpoints(tiny_run / "checkpoints"))[2], loose)
    assert main(pretrain_args(tmp_path / "out", "--resume", str(loose))) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loose", "out"]
    assert [p.name for p in loose.parent.iterdir()] == ["x.pdckpt"]
    (run,) = (tmp_path / "out").iterdir()
    assert read_summary(run)["status"] == "finished" and [r["step"] for r in read_metrics(run)] == [3, 4]


def _wrong_width_checkpoint(folder: Path) -> Path:
    cfg = resolve(load_config(TINY_CONFIG, ["model.backbone.width=16"]), 1, 128, 10)
    model = byol_from_config(cfg["model"], 10)
    return save_checkpoint(folder, 2, model, LARS(model.online_parameters()), {}, keep=1)


@pytest.mark.parametrize(("case", "needle"), [
    ("truncated", "not a Paddle/pickle weight file"), ("random", "not a Paddle/pickle weight file"),
    ("empty", "not a Paddle/pickle weight file"), ("wrong_width", "does not fit this model"),
    ("not_a_checkpoint", "not a byol-repro checkpoint"),
])
@pytest.mark.slow
def test_bad_resume_files_give_one_line_and_write_nothing(tmp_path: Path, tiny_run: Path,
                                                          capsys: pytest.CaptureFixture[str], case: str,
                                                          needle: str) -> None:
    bad = tmp_path / "bad" / "step_00000002.pdckpt"
    bad.parent.mkdir()
    good = dict(list_checkpoints(tiny_run / "checkpoints"))[2].read_bytes()
    if case == "wrong_width":
        bad = _wrong_width_checkpoint(bad.parent)
    else:
        bad.write_bytes({"truncated": good[: len(good) // 2], "random": np.random.default_rng(0).bytes(4096),
                         "empty": b"", "not_a_checkpoint": pickle.dumps({"epoch": 1})}[case])
    line = one_error_line(capsys, main(pretrain_args(tmp_path / "out", "--resume", str(bad))))
    assert str(bad) in line and needle in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("override", "needle"), [
    ("epochs.sub=3", "key 'epochs' is a single value, not a mapping"),
    ("seed=-1", "key 'seed' = -1 must be in [0, 2**32)"),
    ("lr_scheduler.base_lr=.inf", "key 'lr_scheduler.base_lr' = inf must be a finite number"),
    ("lr_scheduler.base_lr=.nan", "key 'lr_scheduler.base_lr' = nan must be a finite number"),
    ("run_id=/tmp/escape", "key 'run_id' = '/tmp/escape' must be a plain folder name"),
    ("run_id=..", "key 'run_id' = '..' must be a plain folder name"),
    ("run_id=a/b", "key 'run_id' = 'a/b' must be a plain folder name"),
    ("lr_scheduler.warmup_epochs=100", "key 'lr_scheduler.warmup_epochs' = 100 gives a warm-up of 400 steps"),
    ("lr_scheduler.warmup_steps=5", "key 'lr_scheduler.warmup_steps' = 5 gives a warm-up of 5 steps"),
])
def test_bad_values_give_one_line_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    override: str, needle: str) -> None:
    line = one_error_line(capsys, main(pretrain_args(tmp_path / "out", "-o", override)))
    assert needle in line
    assert not (tmp_path / "out").exists()


def test_linear_configs_check_seed_and_run_id_too() -> None:
    for override in ("seed=-1", "run_id=../up", "linear_eval.knn_temperature=.inf"):
        with pytest.raises(ConfigError, match="must be"):
            load_config(TINY_LINEAR, [override])
