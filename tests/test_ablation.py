"""Ablation grids and the batch runner.

Every variant file parses, and each variant changes exactly the settings it names (its resolved config against
the baseline's, key by key); its paper numbers are the ones in configs/references.yaml. A tiny batch (2 variants
x 2 seeds, plus a variant that cannot run) goes end to end through child processes running the very commands
``--emit-commands`` prints: the failure is recorded and the batch goes on, a re-run skips what finished.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from byol_lib import ablation, cli, registry, report
from byol_lib.config import ConfigError, flatten
from byol_lib.variants import BASELINE, load_grid, variant_config

from .conftest import ROOT
from .conftest import TINY_GRID as CONFTEST_TINY_GRID

GRID_FILES = sorted((ROOT / "configs" / "ablations").glob("*.yaml"))
LABELS = {"variant", "grid"}
TINY_GRID = CONFTEST_TINY_GRID + (
    "  - {name: huge_batch, label: a batch larger than the dataset, "
    "overrides: {dataloader.train.sampler.batch_size: 4096}}\n")


def test_the_grid_files_are_the_four_of_the_issue() -> None:
    assert [p.stem for p in GRID_FILES] == ["augmentations", "batch", "passl_deviations", "tau"]
    names = {v.name for v in load_grid(ROOT / "configs/ablations/passl_deviations.yaml").variants}
    assert {f"d{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12)} == {n.split("_")[0] for n in names} - {
        "baseline", "passl"}
    assert {"passl_head", "passl_head_with_ema"} <= names


@pytest.mark.parametrize("path", GRID_FILES, ids=lambda p: p.stem)
def test_each_variant_changes_exactly_the_settings_it_claims(path: Path) -> None:
    grid = load_grid(path)
    (baseline,) = [v for v in grid.variants if v.name == BASELINE]
    reference = flatten(variant_config(grid.base, baseline, grid=grid.name))
    assert load_grid(path).base == ROOT / "configs/byol/byol_r18_synthetic.yaml"
    for variant in grid.variants:
        resolved = flatten(variant_config(grid.base, variant, grid=grid.name))
        changed = {k for k in reference if resolved[k] != reference[k]} - LABELS
        assert changed == set(variant.overrides), variant.name
        assert resolved["variant"] == variant.name and resolved["grid"] == grid.name


@pytest.mark.parametrize("path", GRID_FILES, ids=lambda p: p.stem)
def test_paper_numbers_are_the_references(path: Path) -> None:
    grid = load_grid(path)
    refs = report.load_references()
    rows = refs[refs["group"] == grid.reference_group].set_index("variant")
    carried = {v.name: v.paper_top1 for v in grid.variants if v.paper_top1 is not None}
    assert carried == rows["top1"].to_dict()  # every published row has its variant, with the same number
    assert carried[BASELINE] == 72.5


def test_combined_variants_are_the_union_of_their_parts() -> None:
    grid = {v.name: v for v in load_grid(ROOT / "configs/ablations/augmentations.yaml").variants}
    crop_only = grid["crop_only"].overrides
    assert crop_only == {f"augmentation.{view}.{op}": 0.0 for view in ("view1", "view2")
                         for op in ("flip", "color_jitter", "grayscale", "blur")} | {"augmentation.view2.solarize": 0.0}
    passl = {v.name: v for v in load_grid(ROOT / "configs/ablations/passl_deviations.yaml").variants}
    singles = [v for name, v in passl.items() if name.startswith("d")]
    assert passl["passl_head"].overrides == {k: v for s in singles for k, v in s.overrides.items()}
    assert set(passl["passl_head"].overrides) - set(passl["passl_head_with_ema"].overrides) == {"model.update_target"}


@pytest.mark.parametrize(("variants", "message"), [
    ("  - {name: baseline}\n  - {name: x, overrides: {augmentation.view1.flp: 0.0}}",
     r"bad\.yaml: variant 'x': unknown key 'augmentation\.view1\.flp'; did you mean 'augmentation\.view1\.flip'"),
    ("  - {name: baseline}\n  - {name: x, overrides: {seed: 3}}", r"variant 'x': key 'seed' is set by the ablation"),
    ("  - {name: baseline}\n  - {name: a, overrides: {epochs: 2}}\n  - {name: b, overrides: {epochs: 3}}\n"
     "  - {name: c, combine: [a, b]}", r"variant 'c': 'b' sets epochs=3, another part 2"),
    ("  - {name: baseline}\n  - {name: c, combine: [later]}", r"combines 'later', which is not defined above it"),
    ("  - {name: baseline}\n  - {name: baseline}", r"variant 'baseline': defined twice"),
    ("  - {name: x, overrides: {epochs: 2}}", r"needs a 'baseline' variant"),
    ("  - {name: baseline}\n  - {name: x}", r"variant 'x': changes nothing"),
    ("  - {name: baseline, paper: 72.5}", r"unknown field\(s\) \['paper'\]"),
])
def test_bad_variant_files_name_the_file_the_variant_and_the_key(tmp_path: Path, variants: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"grid: g\nreference_group: g\nbase: configs/byol/tiny_cpu.yaml\n"
                    f"linear: configs/byol/tiny_linear.yaml\nvariants:\n{variants}\n")
    with pytest.raises(ConfigError, match=message):
        load_grid(path)


def test_planning_checks_values_names_and_shared_baselines(tmp_path: Path) -> None:
    settings = ablation.Settings(results_dir=tmp_path)
    grids = [ROOT / "configs/ablations/augmentations.yaml", ROOT / "configs/ablations/passl_deviations.yaml"]
    jobs = ablation.plan(grids, settings, ["baseline", "no_blur", "d1_frozen_target"], seeds=[0, 1])
    assert [j.pretrain_id for j in jobs] == [f"ablation-{v}-pretrain-s{s}" for v in
                                             ("baseline", "no_blur", "d1_frozen_target") for s in (0, 1)]
    assert jobs[0].grid.name == "augmentations" and jobs[-1].grid.name == "passl_deviations"
    with pytest.raises(ConfigError, match=r"no variant \['no_such'\]"):
        ablation.plan(grids, settings, ["no_such"])
    other = ablation.Settings(results_dir=tmp_path, pretrain_overrides=("optimizer.momentum=1.5",))
    with pytest.raises(ConfigError, match=r"variant 'baseline' on .*optimizer\.momentum' = 1\.5"):
        ablation.plan(grids[:1], other, ["baseline"])
    different = tmp_path / "tau_other.yaml"
    different.write_text((ROOT / "configs/ablations/tau.yaml").read_text().replace(
        "byol_r18_synthetic.yaml", "tiny_cpu.yaml"))
    with pytest.raises(ConfigError, match="grids 'augmentations' and 'tau' both define variant 'baseline'"):
        ablation.plan([grids[0], different], settings, ["baseline"])


def test_emitted_commands_and_slurm_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = ROOT / "configs/ablations/tau.yaml"
    script = tmp_path / "grid.sbatch"
    assert cli.main(["ablate", "--grid", str(grid), "--seeds", "0", "1", "2", "--output-dir", str(tmp_path),
                     "--gpus", "0,1", "-o", "epochs=5", "--emit-commands", "--emit-slurm", str(script)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 * 3
    argv = shlex.split(lines[4])
    assert argv[1:4] == ["-m", "byol_lib.cli", "ablate"]
    assert argv[argv.index("--variants") + 1] == "tau_1" and argv[argv.index("--seeds") + 1] == "1"
    assert argv[argv.index("--gpus") + 1] == "0,1" and argv[argv.index("-o") + 1] == "epochs=5"
    text = script.read_text()
    assert "#SBATCH --array=0-14\n" in text and "#SBATCH --gres=gpu:2\n" in text
    assert all(shlex.quote(line) in text for line in lines)
    assert text.rstrip().endswith('eval "${COMMANDS[$SLURM_ARRAY_TASK_ID]}"')


def test_a_tiny_batch_runs_end_to_end_records_its_failure_and_skips_finished_runs(tmp_path: Path) -> None:
    grid = tmp_path / "tiny.yaml"
    grid.write_text(TINY_GRID)
    results = tmp_path / "results"
    linear = ["epochs=2", "linear_eval.random_init_baseline=False"]
    outcomes = ablation.run_ablation(grid, seeds=(0, 1), results_root=results, max_parallel=2, threads=1,
                                     linear_overrides=linear, verbose=False)
    status = {(o.job.variant.name, o.job.seed): o.status for o in outcomes}
    assert status == {(v, s): "failed" if v == "huge_batch" else "finished"
                      for v in ("baseline", "no_blur", "huge_batch") for s in (0, 1)}
    failed = json.loads((results / "ablation-huge_batch-pretrain-s1" / "summary.json").read_text())
    assert failed["status"] == "failed" and failed["variant"] == "huge_batch" and failed["grid"] == "tiny"
    assert "fewer than one global batch of 4096" in failed["error"]
    assert not (results / "ablation-huge_batch-linear-s1").exists()
    pre = json.loads((results / "ablation-no_blur-pretrain-s1" / "summary.json").read_text())
    assert (pre["status"], pre["variant"], pre["grid"], pre["seed"]) == ("finished", "no_blur", "tiny", 1)

    runs = registry.load_runs(results)
    linear_rows = runs[runs["evaluation"] == registry.LINEAR]
    assert sorted(zip(linear_rows["variant"], linear_rows["seed"], strict=True)) == [
        ("baseline", 0), ("baseline", 1), ("no_blur", 0), ("no_blur", 1)]
    assert set(runs[runs["variant"] == "no_blur"]["kind"]) == {"ablation"}
    assert set(runs["grid"].dropna()) == {"tiny"} and len(runs[runs["evaluation"] == registry.KNN]) == 8
    assert set(runs[runs["status"] == "failed"]["run_id"]) == {f"ablation-huge_batch-pretrain-s{s}" for s in (0, 1)}

    stamps = {p: p.stat().st_mtime_ns for p in results.glob("*/summary.json") if "huge" not in str(p)}
    again = ablation.run_ablation(grid, variants=["no_blur", "huge_batch"], seeds=(1,), results_root=results,
                                  max_parallel=1, linear_overrides=linear, verbose=False)
    assert [o.status for o in again] == ["finished", "failed"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # finished runs were skipped, not redone
