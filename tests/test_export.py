"""Weight export: extraction from PASSL's and this project's checkpoints, PaddleClas conversion, bad input.

Expected names and shapes are built here from the published rules (PASSL's extract_weight.py and passl2ppclas key
list), not by the code under test.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from byol_lib.checkpoint import save_checkpoint
from byol_lib.cli import convert_main, extract_main
from byol_lib.config import load_config
from byol_lib.export import paddleclas_keys, to_paddleclas
from byol_lib.model import BYOL, ResNet, byol_from_config
from byol_lib.optim import LARS
from byol_lib.plan import resolve

from .conftest import ROOT, TINY_CONFIG

STAGES = {"res18": (2, 2, 2, 2), "res34": (3, 4, 6, 3), "res50": (3, 4, 6, 3)}  # He et al. 2016, Table 1
DEPTH = {"res18": 18, "res34": 34, "res50": 50}
BN = ("weight", "bias", "_mean", "_variance")


def rule(arch: str, width: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """(paddle.vision name, PaddleClas name, shape) in the order of PASSL's ppclas_res50_keys.txt."""
    bottleneck = arch == "res50"
    rows = [("conv1.weight", "stem.0.conv.weight", (width, 3, 7, 7))]
    rows += [(f"bn1.{t}", f"stem.0.bn.{t}", (width,)) for t in BN]
    offsets = np.cumsum((0, *STAGES[arch][:-1]))
    previous_out = width
    for s, blocks in enumerate(STAGES[arch], start=1):
        planes = width * 2 ** (s - 1)
        out = planes * 4 if bottleneck else planes
        for b in range(blocks):
            g = int(offsets[s - 1]) + b
            cin = previous_out if b == 0 else out
            if bottleneck:
                convs = [(planes, cin, 1), (planes, planes, 3), (out, planes, 1)]
            else:
                convs = [(planes, cin, 3), (out, planes, 3)]
            for k, (co, ci, ks) in enumerate(convs, start=1):
                rows.append((f"layer{s}.{b}.conv{k}.weight", f"blocks.{g}.conv{k - 1}.conv.weight", (co, ci, ks, ks)))
                rows += [(f"layer{s}.{b}.bn{k}.{t}", f"blocks.{g}.conv{k - 1}.bn.{t}", (co,)) for t in BN]
            if b == 0 and (bottleneck or s > 1):
                rows.append((f"layer{s}.0.downsample.0.weight", f"blocks.{g}.short.conv.weight", (out, cin, 1, 1)))
                rows += [(f"layer{s}.0.downsample.1.{t}", f"blocks.{g}.short.bn.{t}", (out,)) for t in BN]
        previous_out = out
    return rows


def random_backbone(depth: int, seed: int, width: int = 8) -> dict[str, np.ndarray]:
    """A real ``ResNet`` state dict with random weights and BN statistics (positive variances)."""
    rng = np.random.default_rng(seed)
    names = ResNet(depth, "imagenet", width=width).state_dict()
    return {k: (np.abs(a) + 0.5 if k.endswith("_variance") else a).astype("float32")
            for k, v in names.items() for a in [rng.standard_normal(v.shape)]}


def write_passl(path: Path, online: dict[str, np.ndarray], state: dict | None = None) -> Path:
    """A PASSL checkpoint (CheckpointHook format): plain pickle, decoys around the online encoder ``towers.0.0``."""
    if state is None:
        head = {"mlp.0.weight": np.ones((2, 3), "float32"), "mlp.3.weight": np.ones((3, 2), "float32")}
        state = {**{f"towers.0.0.{k}": v for k, v in online.items()},
                 **{f"towers.0.1.{k}": v for k, v in head.items()},
                 **{f"towers.1.0.{k}": v + 1 for k, v in online.items()},
                 **{f"towers.1.1.{k}": v for k, v in head.items()},
                 **{f"predictor.{k}": v for k, v in head.items()},
                 "classifier.weight": np.zeros((4, 10), "float32"), "classifier.bias": np.zeros(10, "float32"),
                 **{f"backbone.{k}": v - 1 for k, v in online.items()}}
    with open(path, "wb") as handle:
        pickle.dump({"epoch": 3, "state_dict": state, "optimizer": {}, "lr_scheduler": {"last_epoch": 3}}, handle)
    return path


def load(path: Path) -> dict[str, np.ndarray]:
    return paddle.load(str(path), return_numpy=True)


def assert_bitwise(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and np.array_equal(got[key], value), key


def run_tool(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture(scope="module")
def r50() -> dict[str, np.ndarray]:
    return random_backbone(50, seed=0)


@pytest.fixture
def passl_ckpt(tmp_path: Path, r50: dict[str, np.ndarray]) -> Path:
    return write_passl(tmp_path / "epoch_3.pd", r50)


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BYOL]:
    """A checkpoint written by ``save_checkpoint`` from a tiny BYOL (ImageNet stem, ResNet-18 width 8)."""
    cfg = resolve(load_config(TINY_CONFIG, ["model.backbone.stem=imagenet"]), 1, 128, 10)
    paddle.seed(0)
    model = byol_from_config(cfg["model"], 10)
    model.online.encoder.set_state_dict(random_backbone(18, seed=1))  # online != target, BN statistics too
    model.eval()
    path = save_checkpoint(tmp_path_factory.mktemp("ours"), 5, model, LARS(model.online_parameters()), {}, keep=1)
    return path, model


@pytest.mark.slow
def test_extracts_passl_online_encoder_with_loadable_bare_names(tmp_path: Path, passl_ckpt: Path,
                                                               r50: dict[str, np.ndarray]) -> None:
    out = tmp_path / "w.pdparams"
    done = run_tool("tools/extract_weight.py", str(passl_ckpt), "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert_bitwise(load(out), r50)
    net = ResNet(50, "imagenet", width=8)
    assert net.set_state_dict(paddle.load(str(out))) == ([], [])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_extracts_our_online_encoder_and_gives_the_same_forward(tmp_path: Path, ours: tuple[Path, BYOL]) -> None:
    path, model = ours
    out = tmp_path / "w.pd"
    assert extract_main([str(path), "--output", str(out)]) == 0
    online = {k: v.numpy() for k, v in model.online.encoder.state_dict().items()}
    assert_bitwise(load(out), online)
    net = ResNet(18, "imagenet", width=8)
    assert net.set_state_dict(paddle.load(str(out))) == ([], [])
    net.eval()
    x = paddle.randn([2, 3, 32, 32])
    np.testing.assert_array_equal(net(x).numpy(), model.online.encoder(x).numpy())


@pytest.mark.parametrize(("flags", "prefix", "source"), [
    (["--prefix", "backbone"], "backbone.", "backbone."),
    (["--prefix", "backbone", "--remove_prefix"], "", "backbone."),
    (["--prefix", "towers.0.0", "--remove_prefix"], "", "towers.0.0."),
    (["--prefix", "towers.1.0"], "towers.1.0.", "towers.1.0."),
])
def test_passl_prefix_flags(tmp_path: Path, passl_ckpt: Path, flags: list[str], prefix: str, source: str) -> None:
    state = load(passl_ckpt)["state_dict"]
    want = {prefix + k[len(source):]: v for k, v in state.items() if k.startswith(source)}
    out = tmp_path / "w.pdparams"
    assert extract_main([str(passl_ckpt), "--output", str(out), *flags]) == 0
    assert_bitwise(load(out), want)


def test_prefix_keeps_everything_under_it(tmp_path: Path, passl_ckpt: Path) -> None:
    state = load(passl_ckpt)["state_dict"]
    out = tmp_path / "w.pdparams"
    assert extract_main([str(passl_ckpt), "--output", str(out), "--prefix", "towers.0"]) == 0
    assert list(load(out)) == [k for k in state if k.startswith(("towers.0.0.", "towers.0.1."))]


@pytest.mark.parametrize(("flags", "prefix"), [
    (["--prefix", "backbone"], "backbone."),
    (["--prefix", "backbone", "--remove_prefix"], ""),
    (["--prefix", "online.encoder"], "online.encoder."),
])
def test_backbone_is_an_alias_of_our_online_encoder(tmp_path: Path, ours: tuple[Path, BYOL], flags: list[str],
                                                     prefix: str) -> None:
    path, model = ours
    out = tmp_path / "w.pdparams"
    assert extract_main([str(path), "--output", str(out), *flags]) == 0
    assert_bitwise(load(out), {prefix + k: v.numpy() for k, v in model.online.encoder.state_dict().items()})


def test_prefixed_extract_feeds_default_extract_and_convert(tmp_path: Path, passl_ckpt: Path,
                                                           r50: dict[str, np.ndarray]) -> None:
    kept = tmp_path / "kept.pdparams"
    assert extract_main([str(passl_ckpt), "--output", str(kept), "--prefix", "towers.0.0"]) == 0
    bare = tmp_path / "bare.pdparams"
    assert extract_main([str(kept), "--output", str(bare)]) == 0
    assert_bitwise(load(bare), r50)
    clas = tmp_path / "clas.pdparams"
    assert convert_main(["--checkpoint", str(kept), "--output", str(clas), "--width", "8"]) == 0
    assert_bitwise(load(clas), {target: r50[source] for source, target, _ in rule("res50", 8)})


def test_paddleclas_key_list_follows_the_published_rule() -> None:
    names = [target for _, target, _ in rule("res50", 64)]
    assert len(names) == 265 and names[0] == "stem.0.conv.weight"
    assert paddleclas_keys("res50") == names
    assert paddleclas_keys("res50", with_fc=True) == [*names, "fc.weight", "fc.bias"]
    for arch in ("res18", "res34"):
        assert paddleclas_keys(arch) == [target for _, target, _ in rule(arch, 64)]


@pytest.mark.parametrize("arch", ["res18", "res34", "res50"])
def test_conversion_is_by_name_with_paddleclas_shapes(tmp_path: Path, arch: str) -> None:
    rows = rule(arch, 8)
    source = random_backbone(DEPTH[arch], seed=2)
    source["fc.weight"], source["fc.bias"] = np.ones((rows[-1][2][0], 7), "float32"), np.arange(7, dtype="float32")
    shuffled = dict(reversed(list(source.items())))  # a positional mapping would scramble this
    ckpt, out = tmp_path / "in.pdparams", tmp_path / "out.pdparams"
    paddle.save(shuffled, str(ckpt))
    assert convert_main(["--type", arch, "--checkpoint", str(ckpt), "--output", str(out), "--width", "8"]) == 0
    got = load(out)
    want = {target: source[name] for name, target, _ in rows}
    want.update({"fc.weight": source["fc.weight"], "fc.bias": source["fc.bias"]})
    assert_bitwise(got, want)
    assert all(got[target].shape == shape for _, target, shape in rows)


def test_standard_width_res50_shapes() -> None:
    rows = rule("res50", 64)
    source = {name: np.broadcast_to(np.float32(0), shape) for name, _, shape in rows}
    got = to_paddleclas(source, "res50")
    assert {k: v.shape for k, v in got.items()} == {target: shape for _, target, shape in rows}
    assert got["blocks.15.conv2.conv.weight"].shape == (2048, 512, 1, 1)


def test_converts_our_full_checkpoint(tmp_path: Path, ours: tuple[Path, BYOL]) -> None:
    path, model = ours
    out = tmp_path / "r18.pdparams"
    assert convert_main(["--type", "res18", "--checkpoint", str(path), "--output", str(out), "--width", "8"]) == 0
    online = {k: v.numpy() for k, v in model.online.encoder.state_dict().items()}
    assert_bitwise(load(out), {target: online[source] for source, target, _ in rule("res18", 8)})


def error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.mark.slow
def test_tool_rejects_architecture_mismatch(tmp_path: Path) -> None:
    ckpt = write_passl(tmp_path / "r18.pd", random_backbone(18, seed=4))
    out = tmp_path / "out" / "w.pdparams"
    done = run_tool("tools/passl2ppclas/convert.py", "--type", "res50", "--checkpoint", str(ckpt),
                    "--output", str(out), "--width", "8")
    assert done.returncode == 2
    line = error_line(done.stderr)
    assert str(ckpt) in line and "missing 165 [layer1.0.conv3.weight" in line and "unexpected" not in line
    assert "the keys fit res18 (--type res18)" in line
    assert not out.parent.exists()


@pytest.mark.slow
def test_tool_rejects_a_non_pickle_file(tmp_path: Path) -> None:
    ckpt = tmp_path / "notes.pdparams"
    ckpt.write_text("not a checkpoint\n")
    done = run_tool("tools/extract_weight.py", str(ckpt), "--output", str(tmp_path / "out" / "w.pdparams"))
    assert done.returncode == 2
    assert str(ckpt) in error_line(done.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.pdparams"]


@pytest.mark.parametrize(("case", "flags", "output", "needles"), [
    ("empty", [], "w.pdparams", ["the state dict is empty"]),
    ("passl", ["--prefix", "head"], "w.pdparams", ["'head' matches no key", "towers.0.0 (265)", "predictor (2)"]),
    ("passl", [], "w.pth", ["must end in .pdparams or .pd"]),
    ("no_state", [], "w.pdparams", ["keys without an array value", "epoch"]),
    ("missing_file", [], "w.pdparams", ["no such file"]),
    ("passl_mlp_only", [], "w.pdparams", ["no online encoder", "towers.0.1 (2)"]),
])
def test_extract_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], r50: dict[str, np.ndarray], case: str,
                        flags: list[str], output: str, needles: list[str]) -> None:
    ckpt = tmp_path / "ckpt.pd"
    if case == "passl":
        write_passl(ckpt, r50)
    elif case == "empty":
        write_passl(ckpt, r50, state={})
    elif case == "no_state":
        paddle.save({"epoch": 3, "weights": {}}, str(ckpt))
    elif case == "passl_mlp_only":
        write_passl(ckpt, r50, state={"towers.0.1.mlp.0.weight": np.ones(2), "towers.0.1.mlp.3.weight": np.ones(2)})
    before = sorted(os.listdir(tmp_path))
    assert extract_main([str(ckpt), "--output", str(tmp_path / "out" / output), *flags]) == 2
    line = error_line(capsys.readouterr().err)
    assert str(ckpt if output.endswith(".pdparams") else output) in line
    for needle in needles:
        assert needle in line
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize(("arch", "width", "output", "drop", "needles"), [
    ("res50", 64, "w.pdparams", None, ["shapes do not fit res50 with width 64", "conv1.weight [8, 3, 7, 7]",
                                       "--width 8"]),
    ("res34", 8, "w.pdparams", None, ["not a res34 backbone (paddle.vision names): unexpected 85 [",
                                      "[layer1.0.conv3.weight,", "the keys fit res50 (--type res50)"]),
    ("res50", 8, "w.pd", None, ["must end in .pdparams"]),
    ("res50", 8, "w.pdparams", "layer4.2.bn3._variance", ["missing 1 [layer4.2.bn3._variance]"]),
    ("res101", 8, "w.pdparams", None, ["unknown architecture 'res101'; choose one of res18, res34, res50"]),
])
def test_convert_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], r50: dict[str, np.ndarray], arch: str,
                        width: int, output: str, drop: str | None, needles: list[str]) -> None:
    ckpt = tmp_path / "backbone.pdparams"
    paddle.save({f"backbone.{k}": v for k, v in r50.items() if k != drop}, str(ckpt))
    before = sorted(os.listdir(tmp_path))
    out = tmp_path / "out" / output
    assert convert_main(["--type", arch, "--checkpoint", str(ckpt), "--output", str(out), "--width", str(width)]) == 2
    line = error_line(capsys.readouterr().err)
    for needle in needles:
        assert needle in line
    assert sorted(os.listdir(tmp_path)) == before
