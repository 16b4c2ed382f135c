"""Config loading, overrides, validation errors and the derived values (against closed forms)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from byol_lib.config import ConfigError, flatten, load_config, parse_override, yaml_load
from byol_lib.plan import resolve

from .conftest import ROOT

R50 = ROOT / "configs" / "byol" / "byol_r50_IM.yaml"
SYNTH = ["dataloader.train.dataset.name=Synthetic"]


def test_paper_config_resolves_to_jax_step_counts() -> None:
    cfg = load_config(R50, SYNTH)
    for world in (32, 8, 1):
        d = resolve(cfg, world, 1281167, 1000)["derived"]
        assert d["global_batch"] == 4096 and d["per_device_batch"] == 4096 // world
        assert d["total_steps"] == 300 * 1281167 // 4096 == 93835  # JAX max_steps (configs/byol.py)
        assert d["warmup_steps"] == 10 * 1281167 // 4096 == 3127
        assert d["peak_lr"] == pytest.approx(0.3 * 4096 / 256) == 4.8


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_lr_scales_with_global_batch(world: int) -> None:
    cfg = load_config(None, [*SYNTH, "dataloader.train.sampler.batch_size=64", "lr_scheduler.base_lr=0.2"])
    d = resolve(cfg, world, 100000, 10)["derived"]
    assert d["global_batch"] == 64 * world
    assert d["peak_lr"] == pytest.approx(0.2 * 64 * world / 256)


def test_explicit_learning_rate_wins() -> None:
    cfg = load_config(None, [*SYNTH, "lr_scheduler.learning_rate=1.5"])
    assert resolve(cfg, 4, 100000, 10)["derived"]["peak_lr"] == 1.5


@pytest.mark.parametrize(("override", "fragment"), [
    ("lr_scheduler.base_lrr=0.1", "did you mean 'lr_scheduler.base_lr'"),
    ("dataloader.train.sampler.batchsize=3", "did you mean 'dataloader.train.sampler.batch_size'"),
    ("model.backbone.dept=18", "did you mean 'model.backbone.depth'"),
    ("optimizer.momentum=fast", "'optimizer.momentum' must be float, got 'fast'"),
    ("lr_scheduler.base_lr=-0.1", "'lr_scheduler.base_lr' = -0.1 must be >= 0"),
    ("dataloader.train.sampler.batch_size=0", "'dataloader.train.sampler.batch_size' = 0 must be > 0"),
    ("model.backbone.depth=101", "'model.backbone.depth' = 101 is not one of"),
    ("epochs=__import__('os').getcwd()", "'epochs' must be int"),
    ("augmentation.view2.solarize=1.5", "augmentation.view2.solarize"),
])
def test_bad_overrides_name_key_and_value(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        load_config(None, [*SYNTH, override])
    assert fragment in str(err.value)


def test_missing_data_path_is_reported() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["dataloader.train.dataset.dataroot=/nonexistent/imagenet"])
    assert "'dataloader.train.dataset.dataroot' = '/nonexistent/imagenet' does not exist" in str(err.value)


def test_unknown_key_in_file_names_the_file(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 1\noptimizer:\n  lars_weight_decy: 1.0e-6\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, SYNTH)
    assert str(path) in str(err.value) and "did you mean 'optimizer.lars_weight_decay'" in str(err.value)


def test_overrides_are_yaml_literals_not_code() -> None:
    assert parse_override("a.b=1e-3") == ("a.b", 1e-3)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a=__import__('os')") == ("a", "__import__('os')")
    with pytest.raises(ConfigError):
        parse_override("no_equals_sign")


def test_inconsistent_schedule_keys_are_rejected() -> None:
    cfg = load_config(R50, [*SYNTH, "lr_scheduler.T_max=1000"])
    with pytest.raises(ConfigError, match="T_max"):
        resolve(cfg, 32, 1281167, 1000)
    cfg = load_config(R50, [*SYNTH, "lr_scheduler.end_lr=1.0"])
    with pytest.raises(ConfigError, match="end_lr"):
        resolve(cfg, 32, 1281167, 1000)
    cfg = load_config(R50, SYNTH)
    with pytest.raises(ConfigError, match="not divisible"):
        resolve(cfg, 3, 1281167, 1000)


PASSL_R50 = ROOT / "tests" / "fixtures" / "passl" / "byol_r50_IM.yaml"


def test_passl_pretrain_config_loads_with_its_own_values() -> None:
    cfg = load_config(PASSL_R50, SYNTH)
    d = resolve(cfg, 32, 1281167, 1000)["derived"]
    assert (d["total_steps"], d["warmup_steps"], d["peak_lr"]) == (93835, 3127, 4.8)
    assert cfg["lr_scheduler"]["start_lr"] == 1e-4 and cfg["model"]["align_init_network"] is False  # D9, D7 kept
    aug = cfg["augmentation"]
    for view in ("view1", "view2"):  # PASSL's lists translated: jitter 0.8 (0.4/0.4/0.2/0.1), gray 0.2, flip 0.5
        v = aug[view]
        jitter = (v["color_jitter"], v["brightness"], v["contrast"], v["saturation"], v["hue"])
        assert jitter == (0.8, 0.4, 0.4, 0.2, 0.1)
        assert (v["grayscale"], v["flip"]) == (0.2, 0.5)
    assert aug["image_size"] == 224 and aug["crop"]["area"] == [0.08, 1.0]


def test_passl_transform_list_with_unknown_op_is_named(tmp_path) -> None:
    text = PASSL_R50.read_text().replace("name: ByolRandomGrayscale", "name: RandomErasing", 1)
    path = tmp_path / "passl.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"view_trans1\[2\].*'RandomErasing' is not supported"):
        load_config(path, SYNTH)


def test_passl_shared_list_sets_both_views(tmp_path) -> None:
    path = tmp_path / "shared.yaml"
    path.write_text("dataloader:\n  train:\n    dataset:\n      name: Synthetic\n      transforms:\n"
                    "        - {name: RandomApply, p: 0.5, transforms: [{name: GaussianBlur, sigma: [0.1, 2.0]}]}\n"
                    "        - {name: Normalize, mean: [123.675, 116.28, 103.53], std: [58.395, 57.12, 57.375]}\n")
    aug = load_config(path)["augmentation"]
    assert aug["view1"]["blur"] == aug["view2"]["blur"] == 0.5
    assert aug["mean"] == pytest.approx([0.485, 0.456, 0.406]) and aug["std"] == pytest.approx([0.229, 0.224, 0.225])


PASSL_FILES = ("byol_r50_IM.yaml", "byol_clas_r50.yaml")
TRANSLATED = ("transforms", "view_trans1", "view_trans2")  # PASSL's transform lists become augmentation.* keys


@pytest.mark.parametrize("name", PASSL_FILES)
def test_passl_published_files_keep_every_key_and_value(name: str) -> None:
    """Every key of PASSL's own file is accepted and keeps its value (the loader's worker count moves to ours)."""
    path = ROOT / "tests" / "fixtures" / "passl" / name
    given = flatten(yaml_load(path.read_text()))
    assert {"dataloader.train.loader.num_workers", "dataloader.train.loader.use_shared_memory"} <= set(given)
    cfg = flatten(load_config(path, ["dataloader.train.dataset.name=Synthetic", "dataloader.val.dataset.name=Synthetic"]
                              if "clas" in name else ["dataloader.train.dataset.name=Synthetic"]))
    for key, value in given.items():
        if key.rsplit(".", 1)[-1] in TRANSLATED or key.endswith("dataset.name"):
            continue
        assert cfg[key] == value, key
    for split in ("train", "val") if "clas" in name else ("train",):
        assert cfg[f"dataloader.{split}.num_workers"] == given[f"dataloader.{split}.loader.num_workers"] == 8


def _train_script(config: object, cwd: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), "-c", str(config)], cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("name", PASSL_FILES)
@pytest.mark.slow
def test_passl_published_files_run_unchanged_up_to_the_data_check(name: str, tmp_path) -> None:
    out = _train_script(ROOT / "tests" / "fixtures" / "passl" / name, tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "'dataloader.train.dataset.dataroot' = 'data/ILSVRC2012/train' does not exist" in out.stderr, out.stderr
    (notice,) = out.stdout.splitlines()  # one line: which semantics run and how to get PASSL's
    assert "PASSL's own file" in notice
    assert "linear_eval.protocol=passl" in notice or "configs/byol/passl_r50_IM_ema.yaml" in notice
    ours = _train_script(ROOT / "configs" / "byol" / name, tmp_path)
    assert ours.returncode == 2 and "PASSL's own file" not in ours.stdout  # this project's copies say nothing


def test_base_files_are_merged_key_by_key_and_the_including_file_wins(tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text("epochs: 7\nseed: 3\nmodel:\n  backbone: {depth: 18, width: 16}\n"
                                        "optimizer:\n  exclude_from_weight_decay: [a, b, c]\n")
    (tmp_path / "sub" / "middle.yaml").write_text("_base_: ../root.yaml\nseed: 4\nmodel:\n  backbone: {width: 32}\n")
    (tmp_path / "sub" / "child.yaml").write_text("_base_: middle.yaml\noptimizer:\n  exclude_from_weight_decay: [x]\n")
    cfg = load_config(tmp_path / "sub" / "child.yaml", [*SYNTH, "seed=5"])
    assert cfg["epochs"] == 7 and cfg["seed"] == 5  # root's value kept; the override beats both files
    assert cfg["model"]["backbone"]["depth"] == 18 and cfg["model"]["backbone"]["width"] == 32  # merged, child wins
    assert cfg["optimizer"]["exclude_from_weight_decay"] == ["x"]  # a list is replaced whole
    assert load_config(tmp_path / "sub" / "middle.yaml", SYNTH)["seed"] == 4


@pytest.mark.parametrize(("files", "message"), [
    ({"a.yaml": "_base_: missing.yaml\n"}, r"a\.yaml: key '_base_' = 'missing\.yaml': config file not found"),
    ({"a.yaml": "_base_: a.yaml\n"}, r"a\.yaml: key '_base_' = 'a\.yaml' makes a cycle of bases"),
    ({"a.yaml": "_base_: b.yaml\n", "b.yaml": "_base_: a.yaml\n"}, r"b\.yaml: key '_base_' = 'a\.yaml' makes a cycle"),
    ({"a.yaml": "_base_: [b.yaml]\n"}, r"a\.yaml: key '_base_' must be the path of a config file, got \['b\.yaml'\]"),
    ({"a.yaml": "_base_: b.yaml\n", "b.yaml": "- 1\n"}, r"b\.yaml: the top level must be a mapping"),
    ({"a.yaml": "_base_: b.yaml\n", "b.yaml": "!!python/object/apply:os.getcwd []\n"}, r"b\.yaml: not valid YAML"),
    ({"a.yaml": "_base_: b.yaml\n", "b.yaml": "epohcs: 3\n"}, r"a\.yaml: unknown key 'epohcs'.*did you mean 'epochs'"),
])
def test_bad_base_files_are_named(tmp_path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "a.yaml", SYNTH)


def _deviation_keys() -> dict[str, str]:
    """The pretraining switch keys of docs/sources.md's deviation table, each with its deviation id (D18 is the
    linear-evaluation protocol)."""
    rows = [line.split("|") for line in (ROOT / "docs" / "sources.md").read_text().splitlines()
            if re.match(r"\| D\d+ \|", line) and not line.startswith("| D18 |")]
    keys = set(flatten(load_config(None, SYNTH)))
    return {token.split(":")[0].strip(): row[1].strip() for row in rows
            for token in re.findall(r"`([^`]+)`", row[4]) if token.split(":")[0].strip() in keys}


def test_passl_recipe_files_and_grid_variants_switch_the_deviation_tables_set() -> None:
    """passl_r50_IM.yaml changes exactly the table's switches from the faithful byol_r50_IM.yaml, with the values of
    the grid's passl_head; passl_r50_IM_ema.yaml and passl_head_with_ema the same without D1."""
    from byol_lib.variants import load_grid

    table = _deviation_keys()
    with_switch = {"D1", "D2", "D3", "D4", "D5", "D6", "D7", "D8", "D9", "D10", "D12", "D13"}
    assert set(table.values()) == with_switch
    faithful = flatten(load_config(R50, SYNTH))
    grid = {v.name: v.overrides for v in load_grid(ROOT / "configs/ablations/passl_deviations.yaml").variants}
    for name, variant, deviations in (("passl_r50_IM", "passl_head", with_switch),
                                      ("passl_r50_IM_ema", "passl_head_with_ema", with_switch - {"D1"})):
        cfg = flatten(load_config(ROOT / "configs" / "byol" / f"{name}.yaml", SYNTH))
        changed = {key: value for key, value in cfg.items() if value != faithful[key]}
        assert {table[key] for key in changed} == {table[key] for key in grid[variant]} == deviations, name
        assert changed == grid[variant], name


def test_every_deviation_with_a_switch_names_tests_that_exist() -> None:
    rows = [[cell.strip() for cell in line.split("|")] for line in (ROOT / "docs" / "sources.md").read_text()
            .splitlines() if re.match(r"\| D\d+ \|", line)]
    named = {row[1]: re.findall(r"`([\w/]+\.py)::(test_\w+)`", row[5]) for row in rows}
    switched = {row[1] for row in rows if not row[4].startswith(("none", "not "))}  # a switch, or D19's fix
    assert switched >= {"D1", "D10", "D13", "D18", "D19"} and {d for d, found in named.items() if found} >= switched
    for deviation, found in named.items():
        for file, test in found:
            assert f"def {test}(" in (ROOT / "tests" / file).read_text(), (deviation, file, test)
