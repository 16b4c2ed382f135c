"""Ablation grids and the batch runner.

Every variant file parses, and each variant changes exactly the settings it names (its resolved config against
the baseline's, key by key); its paper numbers are the ones in configs/references.yaml. A tiny batch (2 variants
x 2 seeds, plus a variant that cannot run) goes end to end through child processes running the very commands
``--emit-commands`` prints: the failure is recorded and the batch goes on, a re-run skips what finished, the
comparisons files are written.

Adaptive seeds: the wave planner on hand-made comparisons, and the loop driven by a fake study whose runs never
train (each seed's paired difference drawn from a normal with a known mean and sd); expected waves and stopping
points are recomputed here from the fake's draws with the printed t table. Emit mode on a hand-written results
folder prints one wave at a time.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

from byol_lib import ablation, cli, registry, report
from byol_lib.comparisons import Comparison
from byol_lib.config import PRETRAIN_DEFAULTS, ConfigError, flatten
from byol_lib.variants import BASELINE, load_grid, load_study, variant_config

from .conftest import ROOT, T975, write_ablation_runs, write_run
from .conftest import TINY_GRID as CONFTEST_TINY_GRID

GRID_FILES = sorted((ROOT / "configs" / "ablations").glob("*.yaml"))
LABELS = {"variant", "grid"}
TINY_GRID = CONFTEST_TINY_GRID + (
    "  - {name: huge_batch, label: a batch larger than the dataset, "
    "overrides: {dataloader.train.sampler.batch_size: 4096}}\n")


def test_the_grid_files_are_the_four_of_the_issue() -> None:
    assert [p.stem for p in GRID_FILES] == ["augmentations", "batch", "passl_deviations", "tau"]
    names = {v.name for v in load_grid(ROOT / "configs/ablations/passl_deviations.yaml").variants}
    assert {f"d{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13)} == {n.split("_")[0] for n in names} - {
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


def test_passl_recipes_switch_on_every_pretraining_switch_of_the_deviation_table() -> None:
    """Each pretraining key named in docs/sources.md's D1-D20 table is set by ``passl_head``, and by
    ``passl_head_with_ema`` except D1's."""
    rows = [line.split("|") for line in (ROOT / "docs" / "sources.md").read_text().splitlines()
            if re.match(r"\| D\d+ \|", line)]
    assert [row[1].strip() for row in rows] == [f"D{i}" for i in range(1, 21)]
    keys = set(flatten(PRETRAIN_DEFAULTS))
    pretraining = [row for row in rows if row[1].strip() != "D18"]  # D18 is the linear-evaluation protocol
    named = {token.split(":")[0].strip(): row[1].strip() for row in pretraining
             for token in re.findall(r"`([^`]+)`", row[4]) if token.split(":")[0].strip() in keys}
    assert set(named.values()) == {"D1", "D2", "D3", "D4", "D5", "D6", "D7", "D8", "D9", "D10", "D12", "D13"}
    passl = {v.name: v for v in load_grid(ROOT / "configs/ablations/passl_deviations.yaml").variants}
    assert set(named) <= set(passl["passl_head"].overrides)
    assert set(named) - set(passl["passl_head_with_ema"].overrides) == {"model.update_target"}


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
    assert argv[argv.index("--devices") + 1] == "0,1" and argv[argv.index("-o") + 1] == "epochs=5"
    assert "--no-comparisons" in argv  # each job's own command; the batch writes the comparisons once
    text = script.read_text()
    assert "#SBATCH --array=0-14\n" in text and "#SBATCH --gres=gpu:2\n" in text
    assert all(shlex.quote(line) in text for line in lines)
    assert text.rstrip().endswith('eval "${COMMANDS[$SLURM_ARRAY_TASK_ID]}"')


@pytest.mark.slow
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
    written = {r["variant"]: r for r in json.loads((results / "ablation" / "comparisons.json").read_text())}
    top1 = linear_rows.set_index(["variant", "seed"])["top1"]
    assert written["no_blur"]["differences"] == pytest.approx(
        [top1["no_blur", s] - top1["baseline", s] for s in (0, 1)])
    assert (written["no_blur"]["seeds"], written["no_blur"]["bootstrap_over"]) == ([0, 1], "seeds and images")
    assert (written["huge_batch"]["n"], written["huge_batch"]["excluded_seeds"]) == (0, [0, 1])

    stamps = {p: p.stat().st_mtime_ns for p in results.glob("*/summary.json") if "huge" not in str(p)}
    again = ablation.run_ablation(grid, variants=["no_blur", "huge_batch"], seeds=(1,), results_root=results,
                                  max_parallel=1, linear_overrides=linear, verbose=False)
    assert [o.status for o in again] == ["finished", "failed"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # finished runs were skipped, not redone


def comparison(variant: str, differences: list[float], seeds: list[int] | None = None, **extra: object) -> Comparison:
    seeds = list(range(len(differences))) if seeds is None else seeds
    return Comparison(variant, tuple(seeds), tuple(70.0 + d for d in differences), (70.0,) * len(seeds), **extra)


def test_next_wave_plans_the_estimated_need_within_the_budget_and_gives_the_baseline_the_union() -> None:
    found = [comparison("done", [1.0, 1.1, 0.9]),  # sd 0.1: half-width 4.302653 * 0.1 / sqrt(3) = 0.25
             comparison("single", [0.5], excluded_seeds=(12,)),  # one pair: needs a second; seed 12 failed
             comparison("wide", [0.0, 2.0, -2.0]),  # sd 2: needs 18 seeds, more than the budget of 6
             comparison("moderate", [0.0, 0.8, 1.6]),  # sd 0.8: 3.182446 * 0.8 / 2 = 1.27, 2.776445 * 0.8 / sqrt(5)
             comparison("spent", [0.0, 2.0, -2.0, 1.0, 3.0, -1.0])]  # = 0.99, so 5 seeds; spent: 6 run already
    used = {BASELINE: [0, 1, 2, 9], "done": [0, 1, 2], "single": [0], "wide": [0, 1, 2], "moderate": [0, 1, 2],
            "spent": [0, 1, 2, 3, 4, 5], "fresh": []}
    wave = ablation.next_wave(found, used, target=1.0, max_seeds=6)
    assert wave == {BASELINE: [13, 14, 15], "single": [13], "wide": [13, 14, 15], "moderate": [13, 14],
                    "fresh": [13, 14]}  # new seeds start after the largest used anywhere: 12, a failed run
    assert list(wave)[0] == BASELINE
    assert ablation.next_wave(found[:1], {BASELINE: [0, 1, 2], "done": [0, 1, 2]}, 1.0, 6) == {}


class FakeStudy:
    """Runs that never train. Seed s gives the baseline 70 + N(0, 3) points and a variant the baseline plus its
    paired difference N(mean, sd), drawn from generators seeded by the seed and the variant's position, so a test
    can recompute every draw; the (variant, seed) runs in ``failing`` fail."""

    def __init__(self, effects: dict[str, tuple[float, float]], failing: frozenset = frozenset()) -> None:
        self.effects, self.failing = effects, failing
        self.ran: dict[str, list[int]] = {}
        self.waves: list[dict[str, list[int]]] = []
        self.reads: list[dict[str, Comparison]] = []

    def baseline(self, seed: int) -> float:
        return 70.0 + 3.0 * np.random.default_rng([0, seed, 0]).standard_normal()

    def difference(self, variant: str, seed: int) -> float:
        mean, sd = self.effects[variant]
        return mean + sd * np.random.default_rng([0, seed, 1 + list(self.effects).index(variant)]).standard_normal()

    def run_wave(self, wave: dict[str, list[int]]) -> None:
        self.waves.append({name: list(seeds) for name, seeds in wave.items()})
        for name, seeds in wave.items():
            self.ran.setdefault(name, []).extend(seeds)

    def read(self) -> list[Comparison]:
        base = {s for s in self.ran.get(BASELINE, []) if (BASELINE, s) not in self.failing}
        found = {}
        for name in self.effects:
            ran = self.ran.get(name, [])
            seeds = [s for s in ran if (name, s) not in self.failing and s in base]
            base_top1 = tuple(self.baseline(s) for s in seeds)
            top1 = tuple(b + self.difference(name, s) for b, s in zip(base_top1, seeds, strict=True))
            found[name] = Comparison(name, tuple(seeds), top1, base_top1,
                                     excluded_seeds=tuple(s for s in ran if s not in seeds))
        self.reads.append(found)
        return list(found.values())


def half_width(differences: list[float]) -> float:
    """The paired 95% half-width, from the printed t table."""
    return T975[len(differences) - 1] * float(np.std(differences, ddof=1)) / math.sqrt(len(differences))


def test_adaptive_loop_stops_at_the_first_wave_whose_half_width_is_within_target() -> None:
    fake = FakeStudy({"no_blur": (0.8, 1.5)})
    result = ablation.adapt({BASELINE: [0, 1, 2], "no_blur": [0, 1, 2]}, fake.run_wave, fake.read, 1.0, 30)
    expected, n = [3], 3  # the seed count after each wave, recomputed from the draws
    while half_width([fake.difference("no_blur", s) for s in range(n)]) > 1.0 and n < 30:
        sd = float(np.std([fake.difference("no_blur", s) for s in range(n)], ddof=1))
        need = next((m for m in range(2, 31) if T975[m - 1] * sd / math.sqrt(m) <= 1.0), 30)
        n = min(max(need, n + 1), 30)
        expected.append(n)
    assert len(expected) >= 3  # this draw needs two waves after the first
    counts = list(np.cumsum([len(wave["no_blur"]) for wave in fake.waves]))
    assert counts == expected
    assert [half_width([fake.difference("no_blur", s) for s in range(k)]) > 1.0 for k in counts] == [
        True] * (len(counts) - 1) + [False]
    assert [w[BASELINE] for w in fake.waves] == [w["no_blur"] for w in fake.waves]
    assert [s for w in fake.waves for s in w["no_blur"]] == list(range(counts[-1]))  # new seeds continue
    assert (result.message, result.wider, result.comparisons[0].n) == ("target reached", [], counts[-1])


def test_adaptive_loop_stops_at_the_budget_when_the_noise_is_too_large() -> None:
    fake = FakeStudy({"no_color": (0.0, 10.0)})
    result = ablation.adapt({BASELINE: [0, 1, 2], "no_color": [0, 1, 2]}, fake.run_wave, fake.read, 1.0, 6)
    assert fake.waves == [{BASELINE: [0, 1, 2], "no_color": [0, 1, 2]}, {BASELINE: [3, 4, 5], "no_color": [3, 4, 5]}]
    assert half_width([fake.difference("no_color", s) for s in range(6)]) > 1.0
    assert result.wider == ["no_color"] and result.message == "budget exhausted: no_color still wider than target"


def test_adaptive_loop_gives_the_baseline_every_seed_and_leaves_failed_seeds_out() -> None:
    fake = FakeStudy({"small": (2.0, 0.3), "large": (0.0, 2.0), "middle": (0.5, 1.0)},
                     failing=frozenset({(BASELINE, 1), ("middle", 3)}))
    first = {BASELINE: [0, 1, 2], "small": [0, 1, 2], "large": [0, 1, 2], "middle": [0, 1, 2]}
    result = ablation.adapt(first, fake.run_wave, fake.read, 1.0, 12)
    assert any(len({tuple(seeds) for name, seeds in wave.items() if name != BASELINE}) > 1 for wave in fake.waves[1:])
    for k in range(1, len(fake.waves)):
        wave, before, earlier = fake.waves[k], fake.reads[k - 1], fake.waves[:k]
        variants = {name: seeds for name, seeds in wave.items() if name != BASELINE}
        assert wave[BASELINE] == sorted(set().union(*variants.values()))
        assert min(wave[BASELINE]) > max(s for w in earlier for seeds in w.values() for s in seeds)
        ran = {name: sum(len(w.get(name, [])) for w in earlier) for name in before}
        wide = {name for name, c in before.items() if c.n < 2 or half_width(list(c.differences)) > 1.0}
        assert set(variants) == {name for name in wide if ran[name] < 12}
    final = {c.variant: c for c in result.comparisons}
    for name in ("small", "large", "middle"):
        ran = fake.ran[name]
        assert 1 in final[name].excluded_seeds and 1 not in final[name].seeds and len(ran) <= 12
        assert final[name].n == len(ran) - len(final[name].excluded_seeds)
    assert 3 in final["middle"].excluded_seeds


def emitted(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[set[tuple[str, int]], str]:
    """Run ``byol ablate ... --emit-commands``: the (variant, seed) of each printed command, and stderr."""
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    commands = [shlex.split(line) for line in out.splitlines()]
    return {(c[c.index("--variants") + 1], int(c[c.index("--seeds") + 1])) for c in commands}, err


def test_emit_mode_with_a_target_prints_only_the_next_wave(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid, results, script = tmp_path / "tiny.yaml", tmp_path / "results", tmp_path / "wave.sbatch"
    grid.write_text(TINY_GRID)
    argv = ["ablate", "--grid", str(grid), "--variants", "no_blur", "--seeds", "0", "1", "--output-dir", str(results),
            "--study", "s", "--target-halfwidth", "1", "--max-seeds", "5", "--emit-commands"]
    jobs, _ = emitted(capsys, argv)  # nothing has run: the given seeds, with the baseline (pairing needs it)
    assert jobs == {(v, s) for v in (BASELINE, "no_blur") for s in (0, 1)}

    for seed, (base, variant) in enumerate([(0.70, 0.69), (0.72, 0.73)]):  # differences -1 and +1 points
        write_ablation_runs(results, "s", BASELINE, seed, base)
        write_ablation_runs(results, "s", "no_blur", seed, variant)
    # sd sqrt(2): even 5 seeds give 2.776445 * 1.414 / sqrt(5) = 1.76 > 1, so the wave takes the budget's 3 more
    jobs, err = emitted(capsys, [*argv, "--emit-slurm", str(script)])
    assert jobs == {(v, s) for v in (BASELINE, "no_blur") for s in (2, 3, 4)}
    assert "no_blur: not resolved: effects below" in err and "#SBATCH --array=0-5\n" in script.read_text()
    assert json.loads((results / "s" / "comparisons.json").read_text())[0]["differences"] == pytest.approx([-1, 1])

    for seed in (2, 3, 4):
        write_ablation_runs(results, "s", BASELINE, seed, 0.70)
        if seed != 3:
            write_ablation_runs(results, "s", "no_blur", seed, 0.70 + 0.01 * (seed - 3))
    write_run(results, "s-no_blur-pretrain-s3", {"kind": "pretrain", "status": "running", "variant": "no_blur",
                                                 "seed": 3})  # killed by a time limit: re-emitted, to resume
    jobs, _ = emitted(capsys, argv)
    assert jobs == {("no_blur", 3)}

    shutil.rmtree(results / "s-no_blur-pretrain-s3")
    write_ablation_runs(results, "s", "no_blur", 3, 0.70)
    script.unlink()
    jobs, err = emitted(capsys, [*argv, "--emit-slurm", str(script)])
    assert jobs == set() and not script.exists()
    assert "budget exhausted: no_blur still wider than target: no wave left to run" in err


@pytest.mark.parametrize(("flags", "message"), [
    (["--target-halfwidth", "0"], "--target-halfwidth must be > 0 points, got 0.0"),
    (["--target-halfwidth", "1", "--max-seeds", "2"], "--max-seeds 2 is smaller than the 3 seeds of --seeds"),
    (["--max-seeds", "4"], "--max-seeds needs --target-halfwidth"),
    (["--target-halfwidth", "1", "--no-comparisons"], "--no-comparisons cannot go with --target-halfwidth"),
])
def test_bad_adaptive_flags_are_one_line_errors(flags: list[str], message: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["ablate", "--grid", str(ROOT / "configs/ablations/tau.yaml"), "--seeds", "0", "1", "2", "--output-dir",
            str(tmp_path), "--emit-commands", *flags]
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and message in err and err.count("\n") == 1


def test_the_ablate_command_runs_waves_until_the_target(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The real command and comparisons from the results folder, with jobs that write their runs' records instead
    of training: seeds 0-2 differ by -1, +1, 0 points (sd 1: t_{0.975,2} / sqrt(3) = 2.48 wide; 7 seeds needed, as
    2.446912 / sqrt(7) = 0.92), seeds 3-6 by 0.5, -0.5, 0.2, -0.2 (7 seeds: sd 0.656, 2.446912 * 0.656 / sqrt(7) =
    0.61)."""
    differences = [-1.0, 1.0, 0.0, 0.5, -0.5, 0.2, -0.2]

    def fake_run_jobs(jobs: list[ablation.Job], settings: ablation.Settings, *_: object) -> list[ablation.Outcome]:
        for job in jobs:
            shift = differences[job.seed] if job.variant.name == "no_blur" else 0.0
            write_ablation_runs(settings.results_dir, settings.study, job.variant.name, job.seed, 0.7 + shift / 100)
        return [ablation.Outcome(job, "finished") for job in jobs]

    monkeypatch.setattr(ablation, "run_jobs", fake_run_jobs)
    grid, results = tmp_path / "tiny.yaml", tmp_path / "results"
    grid.write_text(TINY_GRID)
    assert cli.main(["ablate", "--grid", str(grid), "--variants", "no_blur", "--seeds", "0", "1", "2", "--output-dir",
                     str(results), "--target-halfwidth", "1", "--max-seeds", "8"]) == 0
    out = capsys.readouterr().out
    assert "== next wave: baseline [3, 4, 5, 6]; no_blur [3, 4, 5, 6]" in out
    assert "14 of 14 jobs finished" in out and "\ntarget reached\n" in out
    assert "no_blur: not resolved: effects below" in out and "with 7 seeds" in out
    (record,) = json.loads((results / "ablation" / "comparisons.json").read_text())
    assert record["differences"] == pytest.approx(differences)
    assert record["halfwidth"] == pytest.approx(half_width(differences)) and record["halfwidth"] < 1.0


def test_the_default_study_file_and_bad_study_files(tmp_path: Path) -> None:
    study = load_study(ROOT / "configs/studies/default.yaml")
    assert study.variants is not None and study.variants[0] == BASELINE and len(study.seeds) >= 3
    assert study.max_seeds >= len(study.seeds) and study.target_halfwidth == 2.0
    good = "grids: [configs/ablations/augmentations.yaml]\nseeds: [0, 1]\n"
    for extra, message in (("variants: [baseline, no_such]\n", "unknown \\['no_such'\\]"),
                           ("max_seeds: 1\n", "max_seeds: must be an integer >= the 2 seeds"),
                           ("target_halfwidth: -1\n", "target_halfwidth: must be > 0 points"),
                           ("budget: 3\n", "a mapping with 'grids' and 'seeds'")):
        path = tmp_path / "study.yaml"
        path.write_text(good + extra)
        with pytest.raises(ConfigError, match=message):
            load_study(path)
    path.write_text(good.replace("[0, 1]", "[-1]"))
    with pytest.raises(ConfigError, match="seeds: must be a non-empty list of seeds >= 0"):
        load_study(path)


def test_an_adaptive_batch_runs_the_variants_it_names_and_the_baseline(tmp_path: Path) -> None:
    settings = ablation.Settings(results_dir=tmp_path)
    grids = [ROOT / "configs/ablations/augmentations.yaml"]
    for asked in (["no_blur"], ["baseline", "no_blur"]):
        jobs, _ = ablation.next_jobs(grids, settings, asked, [0, 1], target=2.0, max_seeds=2)
        assert sorted({job.variant.name for job in jobs}) == ["baseline", "no_blur"], asked
