"""Every place where byol_lib behaves differently on a GPU, selected and run on the CPU.

``BRANCHES`` lists the known device-dependent places (file and enclosing function) with the tests that run them;
``test_every_device_branch_is_listed_and_tested`` scans byol_lib's syntax tree for device words (names such as
``on_gpu``, ``is_compiled_with_cuda``, ``place``, ``SyncBatchNorm``; strings such as ``"gpu"``, ``--gpus``,
``--devices``, ``--nnodes``, ``--master``) and fails when a place appears that is not listed, or a listed one is
gone. What only a GPU shows (SyncBatchNorm's forward, NCCL, AMP kernels, memory) is run by ``bench/gpu_check.py``
on a GPU host and listed in README.md (GPU section).
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import paddle
import paddle.nn as nn
import pytest

from byol_lib import ablation, cli, distributed, fast, launch
from byol_lib.config import load_config
from byol_lib.data.augment import device_augment, device_params_length
from byol_lib.distributed import Context, DeviceError, select_device
from byol_lib.ema import weights
from byol_lib.model import BYOL, byol_from_config
from byol_lib.optim import LARS
from byol_lib.train import build_optimizer, synchronize_batch_norm, workers_sharing_cores

from .conftest import ROOT, TINY_CONFIG

_SELF = "tests/test_device_branches.py"

# (file, enclosing function or class) -> the tests that run its device-dependent behaviour on the CPU
BRANCHES: dict[tuple[str, str], tuple[str, ...]] = {
    ("byol_lib/distributed.py", "select_device"): (f"{_SELF}::test_device_selection_on_a_cuda_build",),
    ("byol_lib/distributed.py", "Context.on_gpu"): (f"{_SELF}::test_device_selection_on_a_cuda_build",),
    ("byol_lib/distributed.py", "init"): (f"{_SELF}::test_init_places_new_tensors_on_the_selected_device",),
    ("byol_lib/train.py", "synchronize_batch_norm"): (
        f"{_SELF}::test_sync_batch_norm_conversion_follows_the_device_world_size_and_d4",
        f"{_SELF}::test_sync_batch_norm_keeps_names_values_lars_exclusion_and_ema_weights",
        f"{_SELF}::test_sync_batch_norm_forward_needs_a_gpu"),
    ("byol_lib/train.py", "workers_sharing_cores"): (f"{_SELF}::test_loader_workers_take_cpu_threads_only_on_cpu",),
    ("byol_lib/data/augment.py", "device_augment"): (f"{_SELF}::test_fixed_shape_augmentation_equals_the_cpu_path",),
    ("byol_lib/fast.py", "use_onednn"): (f"{_SELF}::test_accelerator_tensors_never_take_the_onednn_kernels",),
    ("byol_lib/optim.py", "LARS.set_state_dict"): (f"{_SELF}::test_restored_lars_state_sits_where_its_parameter_is",),
    ("byol_lib/launch.py", "launch_command"): (f"{_SELF}::test_launch_command_parses_with_paddles_launcher",),
    ("byol_lib/cli.py", "add_launch_arguments"): (f"{_SELF}::test_cli_gpu_flags_reach_paddles_launcher",),
    ("byol_lib/cli.py", "add_config_arguments"): (f"{_SELF}::test_device_flags_become_the_device_override",),
    ("byol_lib/cli.py", "overrides_from_args"): (f"{_SELF}::test_device_flags_become_the_device_override",),
    ("byol_lib/ablation.py", "Launch"): ("tests/test_ablation.py::test_emitted_commands_and_slurm_script",),
    ("byol_lib/ablation.py", "Launch.args"): ("tests/test_ablation.py::test_emitted_commands_and_slurm_script",),
    ("byol_lib/ablation.py", "slurm_script"): ("tests/test_ablation.py::test_emitted_commands_and_slurm_script",),
    ("byol_lib/ablation.py", "Launch.distributed"): (f"{_SELF}::test_ablation_jobs_on_gpus_reach_paddles_launcher",),
    ("byol_lib/ablation.py", "_pretrain"): (f"{_SELF}::test_ablation_jobs_on_gpus_reach_paddles_launcher",),
    ("byol_lib/pipeline.py", "reproduce"): (f"{_SELF}::test_reproduce_on_gpus_reaches_paddles_launcher",
                                            "tests/test_pipeline.py::test_profiles_need_their_data_and_devices"),
    ("byol_lib/choices.py", "Profile"): ("tests/test_pipeline.py::test_profiles_need_their_data_and_devices",),
    ("byol_lib/choices.py", "<module>"): ("tests/test_pipeline.py::test_profiles_need_their_data_and_devices",
                                         f"{_SELF}::test_device_flags_become_the_device_override"),
    ("byol_lib/results.py", "environment"): (f"{_SELF}::test_the_environment_records_the_cuda_build",),
    ("byol_lib/amp.py", "precision"): ("tests/test_amp.py::test_amp_is_refused_on_the_cpu_with_the_reason",
                                       "tests/test_amp.py::test_only_float16_has_a_loss_scaler"),
}

_DEVICE_NAME = re.compile(r"(^|_)(gpus?|cuda|place)($|_)|SyncBatchNorm|sync_?batch_?norm|is_compiled_with_cuda"
                          r"|is_cpu_place|set_device|device_count|CUDAPlace")
_DEVICE_STRING = re.compile(r"\bgpus?\b|--devices|--nnodes|--master|--nproc_per_node|FLAGS_selected_gpus")


def _device_sites(source: str) -> set[str]:
    """Enclosing function/class names (dotted, ``<module>`` at top level) of the device words in ``source``."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    sites: set[str] = set()

    def visit(node: ast.AST, scope: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            scope = f"{scope}.{node.name}" if scope else node.name
        word = (node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute)
                else node.arg if isinstance(node, ast.keyword | ast.arg) else None)
        if (word and _DEVICE_NAME.search(word)) or (
                isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                and _DEVICE_STRING.search(node.value)):
            sites.add(scope or "<module>")
        for child in ast.iter_child_nodes(node):
            visit(child, scope)

    visit(tree, "")
    return sites


def _test_exists(ref: str) -> bool:
    path, name = ref.split("::")
    tree = ast.parse((ROOT / path).read_text())
    return any(isinstance(node, ast.FunctionDef) and node.name == name for node in tree.body)


def test_every_device_branch_is_listed_and_tested() -> None:
    found = {(str(path.relative_to(ROOT)), site) for path in sorted((ROOT / "byol_lib").rglob("*.py"))
             for site in _device_sites(path.read_text())}
    assert sorted(found - set(BRANCHES)) == [], "new device-dependent code: add a CPU test and list it in BRANCHES"
    assert sorted(set(BRANCHES) - found) == [], "listed device branches that are gone: remove them from BRANCHES"
    missing = [ref for refs in BRANCHES.values() for ref in refs if not _test_exists(ref)]
    assert missing == []


def test_the_scanner_finds_device_words_in_code_and_not_in_docstrings() -> None:
    source = ('"""Runs on the gpu."""\ndef f(ctx):\n    """--gpus in a docstring."""\n    return ctx.on_gpu\n'
              'def g(x):\n    return x.replace("a", "b")\nclass C:\n    def h(self):\n        return ["--nnodes", 2]\n')
    assert _device_sites(source) == {"f", "C.h"}


# ----------------------------------------------------------------------------- devices and placement


def test_device_selection_on_a_cuda_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA build is simulated (the two queries select_device asks); the launcher's FLAGS_selected_gpus wins."""
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
    monkeypatch.setattr(paddle.device.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("FLAGS_selected_gpus", "3,4")
    assert (select_device("auto"), select_device("gpu"), select_device("cpu")) == ("gpu:3", "gpu:3", "cpu")
    assert Context(0, 2, select_device("auto")).on_gpu and not Context(0, 2, "cpu").on_gpu
    monkeypatch.delenv("FLAGS_selected_gpus")
    assert select_device("gpu") == "gpu:0"
    monkeypatch.setattr(paddle.device.cuda, "device_count", lambda: 0)
    assert select_device("auto") == "cpu"
    with pytest.raises(DeviceError, match="no CUDA device is visible"):
        select_device("gpu")
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA support"):
        select_device("gpu")


def test_init_places_new_tensors_on_the_selected_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PADDLE_TRAINERS_NUM", raising=False)
    ctx = distributed.init("auto")
    assert ctx == Context(0, 1, "cpu") and paddle.get_device() == "cpu"
    assert paddle.zeros([2]).place.is_cpu_place()


def test_restored_lars_state_sits_where_its_parameter_is() -> None:
    layer = nn.Linear(3, 2)
    optimizer = LARS(layer.parameters())
    optimizer.set_state_dict({p.name: np.full(p.shape, 0.5, dtype=np.float32) for p in layer.parameters()})
    for param in layer.parameters():
        buffer = optimizer._buffers[param.name]
        assert str(buffer.place) == str(param.place) and buffer.dtype == param.dtype


def test_accelerator_tensors_never_take_the_onednn_kernels() -> None:
    """fast.use_onednn reads a batch's dtype and place; a stand-in with a non-CPU place is refused even when the
    oneDNN kernels are forced, while the same CPU batch takes them."""
    accelerator = SimpleNamespace(dtype=paddle.float32, shape=[128, 3, 32, 32],
                                  place=SimpleNamespace(is_cpu_place=lambda: False))
    assert fast.use_onednn(paddle.zeros([128, 3, 32, 32]), "onednn")
    assert not fast.use_onednn(accelerator, "onednn")  # type: ignore[arg-type]


def test_loader_workers_take_cpu_threads_only_on_cpu() -> None:
    cfg = load_config(TINY_CONFIG, ["dataloader.train.num_workers=3"])
    assert workers_sharing_cores(cfg, Context(0, 1, "cpu")) == 3
    assert workers_sharing_cores(cfg, Context(0, 8, "gpu:5")) == 0


def test_the_environment_records_the_cuda_build(monkeypatch: pytest.MonkeyPatch) -> None:
    from byol_lib import results

    assert results.environment()["paddle_cuda"] is False
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
    assert results.environment()["paddle_cuda"] is True


# ----------------------------------------------------------------------------- the augmentation's fixed-shape path


def test_fixed_shape_augmentation_equals_the_cpu_path() -> None:
    """The accelerators' path (every op on the whole batch, results selected per image) against the CPU path
    (only the chosen images), on a batch where each device op is on for some images and off for others."""
    aug = load_config(TINY_CONFIG)["augmentation"]
    n, size, length = 12, aug["image_size"], device_params_length(aug)
    rng = np.random.default_rng(0)
    x = paddle.to_tensor(rng.random((n, 3, size, size), dtype=np.float32))
    params = rng.random((n, length)).astype(np.float32)
    params[:, 0] = np.arange(n) % 2  # the first flags (blur, solarise) on for some images only
    params[:, 1] = np.arange(n) % 3 == 0
    cpu = device_augment(x, paddle.to_tensor(params), aug, fixed_shape=False).numpy()
    fixed = device_augment(x, paddle.to_tensor(params), aug, fixed_shape=True).numpy()
    np.testing.assert_allclose(fixed, cpu, rtol=0, atol=1e-5)
    assert np.abs(cpu - device_augment(x, paddle.to_tensor(params * 0), aug, fixed_shape=False).numpy()).max() > 0.1


# ----------------------------------------------------------------------------- SyncBatchNorm


def _model(*overrides: str) -> tuple[BYOL, dict]:
    cfg = load_config(TINY_CONFIG, list(overrides))
    paddle.seed(0)
    return byol_from_config(cfg["model"], 10), cfg


def _norms(layer: nn.Layer) -> Iterator[tuple[str, nn.Layer]]:
    return ((name, sub) for name, sub in layer.named_sublayers()
            if isinstance(sub, nn.layer.norm._BatchNormBase))


@pytest.mark.parametrize(("device", "world", "use_sync", "sync_predictor", "expect_encoders", "expect_predictor"), [
    ("gpu:0", 2, True, True, True, True),
    ("gpu:0", 2, True, False, True, False),  # D4: PASSL's predictor BN stays per device
    ("gpu:0", 2, False, True, False, False),
    ("gpu:0", 1, True, True, False, False),
    ("cpu", 2, True, True, False, False),  # gloo: BN statistics stay per process
])
def test_sync_batch_norm_conversion_follows_the_device_world_size_and_d4(
        device: str, world: int, use_sync: bool, sync_predictor: bool, expect_encoders: bool,
        expect_predictor: bool) -> None:
    model, cfg = _model(f"model.use_synch_bn={use_sync}", f"model.sync_predictor_bn={sync_predictor}")
    counts = {part: sum(1 for _ in _norms(getattr(model, part))) for part in ("online", "target", "predictor")}
    synchronize_batch_norm(model, cfg, Context(0, world, device))
    for part, expected in (("online", expect_encoders), ("target", expect_encoders),
                           ("predictor", expect_predictor)):
        kinds = [type(sub) for _, sub in _norms(getattr(model, part))]
        assert len(kinds) == counts[part] > 0
        assert set(kinds) == {nn.SyncBatchNorm} if expected else nn.SyncBatchNorm not in kinds


def test_sync_batch_norm_keeps_names_values_lars_exclusion_and_ema_weights() -> None:
    """What a GPU run does next with the converted model, checked structurally: the same state-dict keys and
    values (checkpoints move between GPU and CPU runs), every BN scale/offset still excluded from LARS's weight
    decay and trust ratio by name, and the EMA's weights still pair online with target without BN statistics."""
    plain, cfg = _model()
    synced, _ = _model()
    synchronize_batch_norm(synced, cfg, Context(0, 2, "gpu:0"))
    before, after = plain.state_dict(), synced.state_dict()
    assert list(before) == list(after)
    for key in before:
        np.testing.assert_array_equal(before[key].numpy(), after[key].numpy())
    optimizer = build_optimizer(synced, cfg)
    for _, norm in _norms(synced):
        for param in (norm.weight, norm.bias):
            if any(param is p for p in optimizer.params):
                assert optimizer.excluded[param.name], param.name
    assert [p.shape for p in weights(synced.online)] == [p.shape for p in weights(plain.online)]
    assert [p.shape for p in weights(synced.target)] == [p.shape for p in weights(synced.online)]


def test_sync_batch_norm_forward_needs_a_gpu() -> None:
    """Paddle's CPU build has no sync_batch_norm kernel; bench/gpu_check.py runs it on a GPU host (statistics equal
    across ranks). If a CPU build gains the kernel, this fails: then test the forward here against BatchNorm."""
    layer = nn.SyncBatchNorm(4)
    with pytest.raises(RuntimeError, match="sync_batch_norm"):
        layer(paddle.randn([4, 4, 3, 3]))


# ----------------------------------------------------------------------------- launches


def _paddle_launch_args(cmd: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[object, list[str]]:
    """``cmd`` parsed by Paddle's own launcher (paddle.distributed.launch.context.args_envs.parse_args)."""
    from paddle.distributed.launch.context.args_envs import parse_args

    assert cmd[:3] == [sys.executable, "-m", "paddle.distributed.launch"]
    monkeypatch.delenv("PADDLE_TRAINER_ID", raising=False)
    monkeypatch.setattr(sys, "argv", ["paddle.distributed.launch", *cmd[3:]])
    args, unknown = parse_args()
    return args, unknown


def test_launch_command_parses_with_paddles_launcher(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cmd = launch.launch_command("train.py", ["-c", "x.yaml", "--devices", "9"], devices="0,1,2,3", nnodes=2,
                                master="10.1.2.3:8090", node_rank=1, log_dir=tmp_path)
    args, unknown = _paddle_launch_args(cmd, monkeypatch)
    assert unknown == []
    assert (args.devices, args.nnodes, args.master, args.rank, args.log_dir, args.max_restart) == (
        "0,1,2,3", "2", "10.1.2.3:8090", 1, str(tmp_path), 0)
    assert (args.training_script, args.training_script_args) == ("train.py", ["-c", "x.yaml", "--devices", "9"])
    cpu, unknown = _paddle_launch_args(launch.launch_command("t.py", [], nproc_per_node=2), monkeypatch)
    assert (cpu.nproc_per_node, cpu.devices, cpu.nnodes, cpu.master, unknown) == (2, None, "1", None, [])


class _Stopped(Exception):
    """Raised by a recorded launch to stop the caller there."""


def _dry_launches(monkeypatch: pytest.MonkeyPatch, stop: bool = False) -> list[list[str]]:
    """Launch commands are recorded instead of run: each 'job' succeeds, or (``stop``) stops its caller."""
    commands: list[list[str]] = []

    def record(cmd: list[str], log_dir: Path, **_: object) -> launch.LaunchResult:
        commands.append(list(cmd))
        if stop:
            raise _Stopped
        return launch.LaunchResult(0, Path(log_dir))

    monkeypatch.setattr(launch, "run_launch", record)
    return commands


def test_cli_gpu_flags_reach_paddles_launcher(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    commands = _dry_launches(monkeypatch)
    assert cli.main(["pretrain", "-c", str(TINY_CONFIG), "--gpus", "0,1", "--nnodes", "2", "--master",
                     "node0:6170", "--log-dir", str(tmp_path), "-o", "epochs=1"]) == 0
    (cmd,) = commands
    args, unknown = _paddle_launch_args(cmd, monkeypatch)
    assert unknown == [] and (args.devices, args.nnodes, args.master) == ("0,1", "2", "node0:6170")
    assert Path(args.training_script).name == "cli.py"
    assert args.training_script_args == ["pretrain", "-c", str(TINY_CONFIG), "-o", "epochs=1"]


@pytest.mark.parametrize("passl", [True, False], ids=["tools/train.py", "byol"])
@pytest.mark.parametrize(("flags", "device"), [
    (["--device", "gpu"], "gpu"), (["--no-cuda"], "cpu"), (["--device", "gpu", "--no-cuda"], "cpu"), ([], None)])
def test_device_flags_become_the_device_override(flags: list[str], device: str | None, passl: bool) -> None:
    parser = argparse.ArgumentParser()
    cli.add_config_arguments(parser, pretrain=True, linear=False, passl=passl)
    args = parser.parse_args(["-c", "x.yaml", "-o", "epochs=1", *flags])  # byol: --no-cuda means --device cpu
    assert cli.overrides_from_args(args) == ["epochs=1", *([f"device={device}"] if device else [])]
    if device:  # a GPU config loads on a CPU build; the device is checked when the run starts
        assert load_config(TINY_CONFIG, cli.overrides_from_args(args))["device"] == device


def test_ablation_jobs_on_gpus_reach_paddles_launcher(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    commands = _dry_launches(monkeypatch)
    settings = ablation.Settings(results_dir=tmp_path, launch=ablation.Launch(gpus="0,1"))
    assert settings.launch.distributed and not ablation.Launch().distributed
    job = ablation.plan([ROOT / "configs/ablations/tau.yaml"], settings, ["tau_1"])[0]
    ablation._pretrain(job, settings, ["epochs=1"])
    (cmd,) = commands
    args, unknown = _paddle_launch_args(cmd, monkeypatch)
    assert unknown == [] and args.devices == "0,1"
    assert args.training_script_args[:3] == ["pretrain", "-c", str(job.pretrain_config)]


def test_reproduce_on_gpus_reaches_paddles_launcher(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    commands = _dry_launches(monkeypatch, stop=True)
    with pytest.raises(_Stopped):
        cli.main(["reproduce", "--gpus", "0,1", "--output-dir", str(tmp_path), "--report", ""])
    (cmd,) = commands
    args, unknown = _paddle_launch_args(cmd, monkeypatch)
    assert unknown == [] and args.devices == "0,1" and args.training_script_args[0] == "pretrain"
    assert "run_id=default-pretrain-s0" in args.training_script_args


# ----------------------------------------------------------------------------- the acceptance script


@pytest.mark.slow
def test_gpu_check_passes_in_cpu_mode() -> None:
    """bench/gpu_check.py --tiny on the CPU: float32 step, a two-process gloo launch with identical replicas and
    per-process BN statistics that differ, the loader row; AMP and GPU memory marked as not measurable here."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--tiny", "--cpu"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    seconds = time.perf_counter() - started
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    table = lines[1:lines.index("")]
    status = dict(re.split(r"\s{2,}", line)[:2] for line in table)
    assert status == {"device": "pass", "one-device step, float32": "pass", "one-device step, AMP bfloat16": "n/a",
                      "one-device step, AMP float16": "n/a", "peak GPU memory": "n/a",
                      "two-process launch: replicas identical": "pass", "BatchNorm statistics across ranks": "pass",
                      "loader vs step": "info"}
    assert lines[lines.index("") + 1] == "PASS" and seconds < 60
