"""The full reproduction in one call: pretrain -> extract -> convert -> linear evaluation (+ kNN, random init)
-> the ablation grid -> the report.

``./run_all.sh`` and ``byol reproduce`` drive it. Every step is a named run under ``results/``
(``<profile>-pretrain-s<seed>``, ``<profile>-linear-s<seed>``, ``<profile>-ablation-<variant>-...``), so
re-running skips finished steps and resumes an interrupted pretraining from its last checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import paddle

from byol_lib.ablation import Settings, outcome_rows, run_batch
from byol_lib.checkpoint import latest_checkpoint
from byol_lib.choices import ABLATION_CHOICES, ALL_GRIDS, DEFAULT_SEEDS, DEFAULT_STUDY, PROFILES, RESULTS_DIR, Profile
from byol_lib.config import ConfigError, load_config
from byol_lib.console import summary_table
from byol_lib.export import convert_file, extract_file
from byol_lib.launch import run_pretraining
from byol_lib.linear import run_linear_eval
from byol_lib.notebook import build_report
from byol_lib.results import read_summary, repo_root
from byol_lib.variants import Study, load_study


def ablation_study(profile: Profile, ablation: str) -> Study:
    """The study an ablation set runs for a profile: the default study file, all grids for "full"; profiles other
    than the embedded default keep their configs' own budget (full-length runs, the seeds as given)."""
    study = load_study(repo_root() / DEFAULT_STUDY)
    if ablation == "full":
        study = replace(study, grids=tuple(repo_root() / g for g in ALL_GRIDS), variants=None)
    if not profile.study_budget:
        study = replace(study, pretrain_overrides=(), target_halfwidth=None, max_seeds=len(study.seeds))
    return study


def data_overrides(profile: Profile, data: str | None) -> tuple[list[str], list[str]]:
    """(pretraining, linear-evaluation) overrides that point the configs at ``data``."""
    if profile.needs_data and not data:
        raise ConfigError(f"profile '{profile.name}' needs --data PATH (the {profile.dataset} folder or archive)")
    if not profile.needs_data:
        return [], []
    root = Path(data or "")
    if not root.exists():
        raise ConfigError(f"--data {root}: no such file or folder")
    if profile.dataset == "ImageNet":
        train, val = root / "train", root / "val"
        return ([f"dataloader.train.dataset.dataroot={train}"],
                [f"dataloader.train.dataset.dataroot={train}", f"dataloader.val.dataset.dataroot={val}"])
    return ([f"dataloader.train.dataset.dataroot={root}"],
            [f"dataloader.train.dataset.dataroot={root}", f"dataloader.val.dataset.dataroot={root}"])


def reproduce(profile_name: str = "default", data: str | None = None, seeds: Sequence[int] = DEFAULT_SEEDS,
              devices: str | None = None, nproc_per_node: int | None = None, output_dir: str | Path = RESULTS_DIR,
              pretrain_overrides: Sequence[str] = (), linear_overrides: Sequence[str] = (),
              report: str | Path | None = None, ablation: str | None = None,
              ablation_seeds: Sequence[int] | None = None, ablation_overrides: Sequence[str] | None = None,
              max_parallel: int | None = None, target_halfwidth: float | None = None,
              max_seeds: int | None = None) -> list[Path]:
    """Run the profile's steps for every seed, its ablation set (``ablation``: none / reduced / full, default the
    profile's; ``ablation_study``), then (with ``report``) write the HTML report; return the linear runs.

    ``ablation_seeds``, ``ablation_overrides`` (the budget, e.g. ``["epochs=20"]``), ``target_halfwidth`` and
    ``max_seeds`` replace the study's; ``pretrain_overrides`` apply to the ablation runs too, after the budget."""
    if profile_name not in PROFILES:
        raise ConfigError(f"unknown profile '{profile_name}'; choose one of {sorted(PROFILES)}")
    profile = PROFILES[profile_name]
    ablation = profile.ablation if ablation is None else ablation
    if ablation not in ABLATION_CHOICES:
        raise ConfigError(f"unknown ablation set '{ablation}'; choose one of {list(ABLATION_CHOICES)}")
    if profile.needs_gpu and not paddle.is_compiled_with_cuda():
        raise ConfigError(f"profile '{profile.name}' needs GPUs, but this PaddlePaddle build has no CUDA support "
                          "(see requirements-gpu.txt)")
    root, output = repo_root(), Path(output_dir).resolve()
    pre_data, lin_data = data_overrides(profile, data)
    linear_runs: list[Path] = []
    main_runs: list[tuple[str, dict[str, Any]]] = []
    for seed in seeds:
        common = [f"output_dir={output}", f"seed={seed}"]
        pre_id = f"{profile.name}-pretrain-s{seed}"
        print(f"== {pre_id}: pretraining", flush=True)
        pre_overrides = [*pre_data, *common, *pretrain_overrides]
        cfg = run_pretraining(root / profile.pretrain_config, [*pre_overrides, f"run_id={pre_id}"], nproc_per_node,
                              devices, output / f"{pre_id}-launch-log")
        run = output / pre_id
        checkpoint = latest_checkpoint(run / "checkpoints")
        if read_summary(run).get("status") != "finished" or checkpoint is None:
            raise RuntimeError(f"{run} did not finish; re-run to resume it")
        backbone = run / "backbone.pdparams"
        extract_file(checkpoint, backbone)
        arch = cfg["model"]["backbone"]
        if arch["stem"] == "imagenet":
            converted = run / f"backbone_paddleclas_{profile.paddleclas_type}.pdparams"
            convert_file(checkpoint, converted, profile.paddleclas_type, arch["width"])
            print(f"== {pre_id}: wrote {backbone.name} and {converted.name}", flush=True)
        else:
            print(f"== {pre_id}: wrote {backbone.name} (no PaddleClas conversion: PaddleClas ResNets have no "
                  "CIFAR stem)", flush=True)
        lin_id = f"{profile.name}-linear-s{seed}"
        print(f"== {lin_id}: linear evaluation", flush=True)
        lin_cfg = load_config(root / profile.linear_config, [*lin_data, *common, *linear_overrides, f"run_id={lin_id}"])
        linear_runs.append(run_linear_eval(lin_cfg, pretrained=str(backbone)))
        epochs = f"{cfg['epochs']} epoch" + ("s" if cfg["epochs"] != 1 else "")
        main_runs.append((f"{lin_id} (BYOL, {epochs})", read_summary(linear_runs[-1])))
    comparisons: list[dict[str, Any]] = []
    if ablation != "none":
        study = ablation_study(profile, ablation)
        ab_seeds = list(study.seeds if ablation_seeds is None else ablation_seeds)
        budget = study.pretrain_overrides if ablation_overrides is None else tuple(ablation_overrides)
        target = study.target_halfwidth if target_halfwidth is None else target_halfwidth
        limit = max(max_seeds or study.max_seeds, len(ab_seeds))
        print(f"== {profile.name}-ablation: {ablation} set, seeds {ab_seeds}"
              + (f", adding seeds up to {limit} until every paired 95% interval is within ±{target} points"
                 if target else ""), flush=True)
        settings = Settings(results_dir=output, study=f"{profile.name}-ablation",
                            pretrain_config=root / profile.pretrain_config, linear_config=root / profile.linear_config,
                            pretrain_overrides=(*pre_data, *budget, *pretrain_overrides),
                            linear_overrides=(*lin_data, *study.linear_overrides, *linear_overrides))
        batch = run_batch(list(study.grids), settings, study.variants, ab_seeds, max_parallel, target=target,
                          max_seeds=limit)
        failed = [row for row in outcome_rows(batch.outcomes) if row["status"] == "failed"]
        for row in failed:  # recorded in the run folders; the report shows them, the reproduction goes on
            print(f"== ablation run failed: {row['variant']} seed {row['seed']}: {row['error']}", flush=True)
        if batch.adaptation is not None:
            print(f"== adaptive seeds: {batch.adaptation.message}", flush=True)
        comparisons = [c.record() for c in batch.comparisons]  # as in <output>/<study>/comparisons.json
    html = build_report(results_dir=output, output=Path(report)) if report else None
    print("== summary", flush=True)
    print("\n".join([*summary_table(main_runs, comparisons, f"{profile.name}-ablation"),
                     f"report: {html}" if html else "report: not written (--report '')"]), flush=True)
    return linear_runs
