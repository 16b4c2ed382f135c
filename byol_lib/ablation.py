"""The ablation runner: variants x seeds, each pretrained and evaluated (offline linear + kNN) as named runs.

For every selected variant of one or more grid files (``byol_lib.variants``) and every seed, a job pretrains
the variant's config as ``<study>-<variant>-pretrain-s<seed>`` and evaluates its latest checkpoint with the
linear config as ``<study>-<variant>-linear-s<seed>``. Named runs make a re-run skip what finished and resume an
interrupted pretraining from its last checkpoint. Grids run together share their ``baseline`` runs (the same
config must then come out of every grid, else it is an error naming both). A job that fails is recorded as
failed in its run folder's ``summary.json`` (with the error) and the batch goes on.

Jobs run in this process one after the other (``max_parallel=1``), or each in its own process, several at a
time, each with ``threads`` CPU threads: the child runs the job's own command line (``job_command``), the same
one that ``emit_commands`` prints and ``slurm_script`` puts into a SLURM array, so a grid too big for one
machine runs on a cluster unchanged and its results land in the same results folder.

A finished batch writes its study's paired comparisons (``byol_lib.comparisons``) to
``<results>/<study>/comparisons.json`` and ``.csv``. With a target half-width a batch is adaptive: after the given
seeds it runs waves of new seeds (``next_wave``: the estimated need of every variant whose paired 95% interval is
still wider than the target, capped by a seed budget; the baseline gets every seed any variant gets) until every
variant is within the target or out of budget (``adapt``). ``next_jobs`` gives one wave at a time from what the
results folder holds, for clusters: emit, submit, re-emit.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from byol_lib import console, results, run_folder, runtime
from byol_lib.choices import DEFAULT_MAX_SEEDS, DEFAULT_SEEDS, RESULTS_DIR, STUDY_NAME
from byol_lib.comparisons import CONFIDENCE, Comparison, write_comparisons
from byol_lib.config import ConfigError, backbone_overrides, load_config
from byol_lib.stats import seeds_needed
from byol_lib.variants import BASELINE, Grid, Variant, load_grid, variant_config, variant_overrides

RECORDED_BY = "ablation runner"
Wave = dict[str, list[int]]  # the seeds each variant runs next


@dataclass(frozen=True)
class Launch:
    """How pretraining is launched: in the job's process (default) or under ``paddle.distributed.launch``."""

    nproc_per_node: int | None = None
    gpus: str | None = None

    @property
    def distributed(self) -> bool:
        return bool(self.nproc_per_node or self.gpus)

    def args(self) -> list[str]:
        return [*(["--nproc-per-node", str(self.nproc_per_node)] if self.nproc_per_node else []),
                *(["--devices", self.gpus] if self.gpus else [])]


@dataclass(frozen=True)
class Settings:
    """What every job of a batch shares."""

    results_dir: Path
    study: str = STUDY_NAME
    pretrain_config: Path | None = None  # None: each grid's own ``base``
    linear_config: Path | None = None  # None: each grid's own ``linear``
    pretrain_overrides: tuple[str, ...] = ()
    linear_overrides: tuple[str, ...] = ()
    launch: Launch = field(default_factory=Launch)


@dataclass(frozen=True)
class Job:
    """One variant and seed: its grid, configs and run ids."""

    grid: Grid
    variant: Variant
    seed: int
    pretrain_config: Path
    linear_config: Path
    pretrain_id: str
    linear_id: str


@dataclass(frozen=True)
class Outcome:
    """How a job ended: ``finished`` or ``failed`` (with the error)."""

    job: Job
    status: str
    error: str | None = None
    seconds: float = 0.0


def plan(grid_files: Sequence[str | Path], settings: Settings, variants: Sequence[str] | None = None,
         seeds: Sequence[int] = DEFAULT_SEEDS) -> list[Job]:
    """The jobs of a batch, checked: every variant's config loads, shared run ids mean identical configs."""
    grids = [load_grid(path) for path in grid_files]
    if variants is not None:
        known = {v.name for grid in grids for v in grid.variants}
        unknown = [name for name in variants if name not in known]
        if unknown:
            raise ConfigError(f"no variant {unknown} in {[str(g.source) for g in grids]}; they have {sorted(known)}")
    jobs: dict[str, Job] = {}
    hashes: dict[str, tuple[str, Grid]] = {}
    for grid in grids:
        chosen = [v for v in grid.variants if variants is None or v.name in variants]
        base = settings.pretrain_config or grid.base
        for variant in chosen:
            cfg = variant_config(base, variant, settings.pretrain_overrides, grid.name)
            digest = results.config_hash(cfg)
            first = hashes.setdefault(variant.name, (digest, grid))
            if first[0] != digest:
                raise ConfigError(f"grids '{first[1].name}' and '{grid.name}' both define variant '{variant.name}' "
                                  "with different configs; run them with different study names")
            for seed in seeds:
                stem = f"{settings.study}-{variant.name}"
                jobs.setdefault(f"{stem}-s{seed}", Job(
                    grid=first[1], variant=variant, seed=seed,
                    pretrain_config=Path(base), linear_config=Path(settings.linear_config or grid.linear),
                    pretrain_id=f"{stem}-pretrain-s{seed}", linear_id=f"{stem}-linear-s{seed}"))
    return list(jobs.values())


def job_command(job: Job, settings: Settings) -> list[str]:
    """The command line that runs one job alone (``byol ablate`` restricted to its variant and seed)."""
    cmd = [sys.executable, "-m", "byol_lib.cli", "ablate", "--grid", str(job.grid.source),
           "--variants", job.variant.name, "--seeds", str(job.seed), "--config", str(job.pretrain_config),
           "--linear-config", str(job.linear_config), "--output-dir", str(settings.results_dir),
           "--study", settings.study, "--max-parallel", "1", "--no-comparisons", *settings.launch.args()]
    cmd += [a for o in settings.pretrain_overrides for a in ("-o", o)]
    return cmd + [a for o in settings.linear_overrides for a in ("--linear-override", o)]


def emit_commands(jobs: Sequence[Job], settings: Settings) -> list[str]:
    """One shell line per job, run from the repo root."""
    return [shlex.join(job_command(job, settings)) for job in jobs]


def slurm_script(jobs: Sequence[Job], settings: Settings, max_parallel: int | None = None) -> str:
    """A SLURM array script with one task per job (add your partition, account and time limit)."""
    gpus = len(settings.launch.gpus.split(",")) if settings.launch.gpus else 0
    throttle = f"%{max_parallel}" if max_parallel else ""
    lines = ["#!/bin/bash", f"#SBATCH --job-name=byol-{settings.study}", f"#SBATCH --array=0-{len(jobs) - 1}{throttle}",
             f"#SBATCH --output={settings.results_dir}/slurm-%A_%a.out"]
    if gpus:
        lines.append(f"#SBATCH --gres=gpu:{gpus}")
    lines += ["# one BYOL ablation job (pretraining + linear evaluation + kNN) per array task; finished runs are",
              f"# skipped and interrupted ones resume; results land in {settings.results_dir}",
              "set -euo pipefail", f"cd {shlex.quote(str(results.repo_root()))}", "COMMANDS=(",
              *(f"  {shlex.quote(line)}" for line in emit_commands(jobs, settings)), ")",
              'eval "${COMMANDS[$SLURM_ARRAY_TASK_ID]}"', ""]
    return "\n".join(lines)


def _record_failure(folder: Path, kind: str, job: Job, error: str) -> None:
    """Mark a run failed unless it wrote its own outcome (a failure or interruption it recorded, or a finish) or
    another process holds its folder (then the failure was that this job could not have it)."""
    try:
        with run_folder.hold(folder):
            if results.read_summary(folder).get("status") in ("failed", "interrupted", "finished"):
                return
            run_folder.write_summary(folder, {
                "run_id": folder.name, "kind": kind, "status": "failed", "error": error, "variant": job.variant.name,
                "grid": job.grid.name, "seed": job.seed, "recorded_by": RECORDED_BY})
    except run_folder.RunFolderBusy:
        return


def _clear_record(folder: Path) -> None:
    """Forget a failure this runner recorded, so the run can start afresh (the run's own records stay)."""
    if results.read_summary(folder).get("recorded_by") == RECORDED_BY:
        (folder / "summary.json").unlink()


def _pretrain(job: Job, settings: Settings, overrides: list[str]) -> dict[str, Any]:
    """Pretrain the job's variant (in this process or launched); return its config."""
    from byol_lib.launch import run_pretraining

    try:
        return run_pretraining(job.pretrain_config, overrides, settings.launch.nproc_per_node, settings.launch.gpus,
                               settings.results_dir / job.pretrain_id / "launch-log")
    except ConfigError as err:
        raise ConfigError(f"variant '{job.variant.name}' on {job.pretrain_config}: {err}") from err


def run_job(job: Job, settings: Settings) -> Outcome:
    """Pretrain and evaluate one job in this process; a failure is recorded in its run folder, not raised."""
    from byol_lib.linear import run_linear_eval

    start = time.perf_counter()
    folders = {kind: settings.results_dir / run_id for kind, run_id in (("pretrain", job.pretrain_id),
                                                                         ("linear", job.linear_id))}
    kind = "pretrain"
    try:
        for folder in folders.values():
            _clear_record(folder)
        common = [f"seed={job.seed}", f"output_dir={settings.results_dir}"]
        cfg = _pretrain(job, settings, variant_overrides(job.variant, [*settings.pretrain_overrides, *common,
                                                                       f"run_id={job.pretrain_id}"], job.grid.name))
        if results.read_summary(folders["pretrain"]).get("status") != "finished":
            raise RuntimeError(f"{folders['pretrain']} did not finish")
        kind = "linear"
        backbone = backbone_overrides(cfg["model"]["backbone"])
        linear = load_config(job.linear_config, [*backbone, *settings.linear_overrides, *common,
                                                 f"run_id={job.linear_id}"])
        run_linear_eval(linear, pretrained=str(folders["pretrain"]))
    except Exception as err:  # noqa: BLE001 (any failure of one job is recorded; the batch goes on)
        error = f"{type(err).__name__}: {err}"
        _record_failure(folders[kind], kind, job, error)
        return Outcome(job, "failed", error, time.perf_counter() - start)
    return Outcome(job, "finished", None, time.perf_counter() - start)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _run_in_child(job: Job, settings: Settings, threads: int) -> Outcome:
    """Run the job's command line in a child process (output in ``<results>/<study>-<variant>-s<seed>.log``)."""
    start = time.perf_counter()
    log = settings.results_dir / f"{settings.study}-{job.variant.name}-s{job.seed}.log"
    env = {**runtime.quiet_env(), "BYOL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    with log.open("w") as handle:
        code = subprocess.run(job_command(job, settings), stdout=handle, stderr=subprocess.STDOUT, env=env,
                              cwd=results.repo_root(), check=False).returncode
    status = {kind: results.read_summary(settings.results_dir / run_id)
              for kind, run_id in (("pretrain", job.pretrain_id), ("linear", job.linear_id))}
    if code == 0 and status["linear"].get("status") == "finished":
        return Outcome(job, "finished", None, time.perf_counter() - start)
    error = next((s["error"] for s in status.values() if s.get("status") == "failed"), None)
    if error is None:  # the child died before recording anything
        error = f"exit code {code}: {_last_line(log.read_text(errors='replace'))} (log: {log})"
        kind = "linear" if status["pretrain"].get("status") == "finished" else "pretrain"
        _record_failure(settings.results_dir / (job.linear_id if kind == "linear" else job.pretrain_id), kind, job,
                        error)
    return Outcome(job, "failed", error, time.perf_counter() - start)


def default_parallelism(settings: Settings) -> int:
    """One job per core for CPU runs in this process; one at a time when pretraining is launched."""
    return 1 if settings.launch.distributed else runtime.available_cores()


def run_jobs(jobs: Sequence[Job], settings: Settings, max_parallel: int | None = None, threads: int | None = None,
             verbose: bool = True) -> list[Outcome]:
    """Run every job (in this process when ``max_parallel`` is 1, else in child processes); never raises for a
    failed job."""
    parallel = max(1, min(max_parallel or default_parallelism(settings), len(jobs) or 1))
    threads = threads or max(1, runtime.available_cores() // parallel)
    settings.results_dir.mkdir(parents=True, exist_ok=True)
    done: list[Outcome] = []
    printing = threading.Lock()
    began = time.perf_counter()

    def say(line: str) -> None:
        if verbose:
            with printing:  # whole lines only: the pool's threads print concurrently
                print(line, flush=True)

    def one(job: Job) -> Outcome:
        say(f"== {job.pretrain_id}: {job.grid.name} / {job.variant.label}")
        outcome = run_job(job, settings) if parallel == 1 else _run_in_child(job, settings, threads)
        with printing:
            done.append(outcome)
            line = job_line(outcome, len(done), len(jobs), time.perf_counter() - began)
        say(line)
        return outcome

    if parallel == 1:
        return [one(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(one, jobs))


def job_line(outcome: Outcome, done: int, total: int, elapsed: float) -> str:
    """``== job n/N  <elapsed> elapsed, ETA <left>  |  <variant> s<seed>: <status> in <time>``: the ETA is the batch's
    as a whole (at its pace so far, parallel jobs included); a failed job's error follows."""
    job = outcome.job
    line = (f"== {console.progress_line('job', done, total, elapsed)}  |  {job.variant.name} s{job.seed}: "
            f"{outcome.status} in {console.duration(outcome.seconds)}")
    return f"{line}  {outcome.error}" if outcome.error else line


def wave_jobs(grid_files: Sequence[str | Path], settings: Settings, wave: Mapping[str, Sequence[int]]) -> list[Job]:
    """The jobs of a wave: each variant with its own seeds."""
    return [job for name, seeds in wave.items() for job in plan(grid_files, settings, [name], seeds)]


def next_wave(comparisons: Sequence[Comparison], seeds_by_variant: Mapping[str, Sequence[int]], target: float,
              max_seeds: int) -> Wave:
    """The seeds to run next (empty: none), for the variants of ``seeds_by_variant`` (the seeds each has run).

    A variant (not the baseline) gets seeds while its paired half-width exceeds ``target`` points: the estimated
    need (``seeds_needed`` at its sd; 2 pairs before it has an sd) minus its paired seeds, at least one, at most
    ``max_seeds`` minus the seeds it has run (a failed run counts: the budget is compute). New seeds continue after
    the largest used; the baseline gets every seed any variant gets.
    """
    found = {c.variant: c for c in comparisons}
    used = {name: {*seeds, *(found[name].attempted_seeds if name in found else ())}
            for name, seeds in seeds_by_variant.items()}
    start = 1 + max(chain(*used.values()), default=-1)
    wave: Wave = {}
    for name, seeds in used.items():
        done = found.get(name)
        room = max_seeds - len(seeds)
        if name == BASELINE or (done is not None and done.within(target)) or room <= 0:
            continue
        paired = 0 if done is None else done.n
        estimate = seeds_needed(done.sd, target, CONFIDENCE, max_seeds) if paired >= 2 else 2
        extra = min(max((max_seeds if estimate is None else estimate) - paired, 1), room)
        wave[name] = list(range(start, start + extra))
    return {BASELINE: sorted(set(chain(*wave.values()))), **wave} if wave else {}


@dataclass(frozen=True)
class Adaptation:
    """Where an adaptive batch stands: its variants' comparisons and those still wider than the target."""

    comparisons: list[Comparison]
    wider: list[str]

    @property
    def message(self) -> str:
        """How it stopped (once no wave is left)."""
        return f"budget exhausted: {', '.join(self.wider)} still wider than target" if self.wider else "target reached"


def _wider(comparisons: Sequence[Comparison], names: Sequence[str], target: float) -> list[str]:
    found = {c.variant: c for c in comparisons}
    return [name for name in names if name != BASELINE and not (name in found and found[name].within(target))]


def adapt(first: Wave, run_wave: Callable[[Wave], object], read: Callable[[], Sequence[Comparison]], target: float,
          max_seeds: int) -> Adaptation:
    """Run ``first``, then each ``next_wave`` of the comparisons ``read`` returns, until none is left: every variant
    of ``first`` is within ``target`` or out of budget."""
    seeds: dict[str, list[int]] = {name: [] for name in first}
    found: list[Comparison] = []
    wave = first
    while wave:
        run_wave(wave)
        for name, new in wave.items():
            seeds[name] += new
        found = [c for c in read() if c.variant in seeds]
        wave = next_wave(found, seeds, target, max_seeds)
    return Adaptation(found, _wider(found, list(seeds), target))


def _with_baseline(variants: Sequence[str] | None) -> list[str] | None:
    """The variants of an adaptive batch: pairing needs the baseline."""
    return None if variants is None else [BASELINE, *(name for name in variants if name != BASELINE)]


def _first_wave(jobs: Sequence[Job]) -> Wave:
    wave: Wave = {}
    for job in jobs:
        wave.setdefault(job.variant.name, []).append(job.seed)
    return wave


def _current(grid_files: Sequence[str | Path], settings: Settings, names: Sequence[str]) -> list[Comparison]:
    """The study's comparisons, written to ``<results>/<study>/``; those of ``names`` returned."""
    everything = write_comparisons(settings.results_dir, settings.study, grid_files)
    return [c for c in everything if c.variant in names]


def _has_run(job: Job, settings: Settings) -> bool:
    """Whether a job has an outcome: its linear run finished or failed, or its pretraining failed."""
    linear, pretrain = (results.read_summary(settings.results_dir / run_id).get("status")
                        for run_id in (job.linear_id, job.pretrain_id))
    return linear in ("finished", "failed") or pretrain == "failed"


def _started_seeds(settings: Settings, name: str) -> set[int]:
    """The seeds of a variant's pretraining folders in the results folder, whatever their state."""
    prefix = f"{settings.study}-{name}-pretrain-s"
    tails = (path.name[len(prefix):] for path in settings.results_dir.glob(f"{prefix}*"))
    return {int(tail) for tail in tails if tail.isdigit()}


def next_jobs(grid_files: Sequence[str | Path], settings: Settings, variants: Sequence[str] | None,
              seeds: Sequence[int], target: float, max_seeds: int) -> tuple[list[Job], Adaptation | None]:
    """The next wave of an adaptive batch from what the results folder holds (emit, submit, re-emit): the jobs that
    have not run yet, of ``seeds`` or of a seed some earlier wave started (a job killed by a time limit resumes);
    once all have, the jobs of ``next_wave`` and the comparisons it came from (also written to
    ``<results>/<study>/``)."""
    names = list(_first_wave(plan(grid_files, settings, _with_baseline(variants), seeds)))
    known = {name: sorted({*seeds, *_started_seeds(settings, name)}) for name in names}
    waiting = [job for job in wave_jobs(grid_files, settings, known) if not _has_run(job, settings)]
    if waiting:
        return waiting, None
    found = _current(grid_files, settings, names)
    wave = next_wave(found, {name: list(seeds) for name in names}, target, max_seeds)
    return wave_jobs(grid_files, settings, wave), Adaptation(found, _wider(found, names, target))


@dataclass(frozen=True)
class Batch:
    """A batch's outcomes, its variants' comparisons, and with a target how the waves went."""

    outcomes: list[Outcome]
    comparisons: list[Comparison]
    adaptation: Adaptation | None = None


def run_batch(grid_files: Sequence[str | Path], settings: Settings, variants: Sequence[str] | None = None,
              seeds: Sequence[int] = DEFAULT_SEEDS, max_parallel: int | None = None, threads: int | None = None,
              verbose: bool = True, *, target: float | None = None, max_seeds: int = DEFAULT_MAX_SEEDS,
              write_comparisons: bool = True) -> Batch:
    """Run ``variants`` (None: all) x ``seeds`` and write the study's comparisons (unless ``write_comparisons`` is
    False, without a target). With ``target`` (points), add waves of seeds (``adapt``) until every variant's paired
    half-width is at most ``target`` or it has run ``max_seeds`` seeds; the baseline always runs."""
    jobs = plan(grid_files, settings, variants if target is None else _with_baseline(variants), seeds)
    names = list(_first_wave(jobs))
    outcomes: list[Outcome] = []

    def run_wave(wave: Wave) -> None:
        if verbose and outcomes:
            print(f"== next wave: {'; '.join(f'{name} {seeds}' for name, seeds in wave.items())}", flush=True)
        outcomes.extend(run_jobs(wave_jobs(grid_files, settings, wave), settings, max_parallel, threads, verbose))

    if target is not None:  # each variant's half-width is in the closing table / verdicts, not after every wave
        adaptation = adapt(_first_wave(jobs), run_wave, lambda: _current(grid_files, settings, names), target,
                           max_seeds)
        return Batch(outcomes, adaptation.comparisons, adaptation)
    outcomes = run_jobs(jobs, settings, max_parallel, threads, verbose)
    return Batch(outcomes, _current(grid_files, settings, names) if write_comparisons else [])


def verdict_lines(comparisons: Sequence[Comparison]) -> list[str]:
    """One line per variant: its verdict, and the seeds a failed run left out of its pairing."""
    return [f"{c.variant}: {c.verdict}" + (f" (seeds {list(c.excluded_seeds)} left out: a run failed)"
                                            if c.excluded_seeds else "") for c in comparisons]


def run_ablation(grid_files: str | Path | Sequence[str | Path], variants: Sequence[str] | None = None,
                 seeds: Sequence[int] = DEFAULT_SEEDS, base_pretrain_cfg: str | Path | None = None,
                 base_linear_cfg: str | Path | None = None, results_root: str | Path = RESULTS_DIR,
                 max_parallel: int | None = None, *, study: str = STUDY_NAME, pretrain_overrides: Sequence[str] = (),
                 linear_overrides: Sequence[str] = (), threads: int | None = None, launch: Launch | None = None,
                 verbose: bool = True) -> list[Outcome]:
    """Plan and run a batch: ``variants`` (None: all) of ``grid_files`` x ``seeds``; returns each job's outcome.

    ``base_pretrain_cfg`` / ``base_linear_cfg`` default to each grid's ``base`` / ``linear``; relative
    ``results_root`` resolves against the current folder. ``pretrain_overrides`` / ``linear_overrides`` apply to
    every job (e.g. a shorter budget). The study's comparisons are written to ``<results_root>/<study>/``.
    """
    files = [grid_files] if isinstance(grid_files, str | Path) else list(grid_files)
    settings = Settings(results_dir=Path(results_root).resolve(), study=study,
                        pretrain_config=Path(base_pretrain_cfg) if base_pretrain_cfg else None,
                        linear_config=Path(base_linear_cfg) if base_linear_cfg else None,
                        pretrain_overrides=tuple(pretrain_overrides), linear_overrides=tuple(linear_overrides),
                        launch=launch or Launch())
    return run_batch(files, settings, variants, seeds, max_parallel, threads, verbose).outcomes


def outcome_rows(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    """One printable row per job."""
    return [{"grid": o.job.grid.name, "variant": o.job.variant.name, "seed": o.job.seed, "status": o.status,
             "seconds": round(o.seconds, 1), "pretrain_run": o.job.pretrain_id, "linear_run": o.job.linear_id,
             "error": o.error} for o in outcomes]
