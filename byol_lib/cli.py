"""Every command line: PASSL's ``tools/*.py`` flags and the ``byol`` console command.

Building a parser imports nothing heavy, so ``byol --help`` and ``byol <command> --help`` answer at once: each
command imports the modules it runs when it runs. ``byol`` commands spell their flags with dashes and the same
flags mean the same thing in every command (launch: ``--nproc-per-node``, ``--devices``/``--gpus``); old spellings
(``--nproc_per_node``, ``--nproc``, ``--log_dir``, ``--remove_prefix``, ``--no-cuda``) still work, hidden from
``--help``, with a one-line note. ``tools/train.py``, ``tools/extract_weight.py`` and
``tools/passl2ppclas/convert.py`` keep PASSL's spellings exactly.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from byol_lib import __version__, choices

if TYPE_CHECKING:
    from byol_lib.ablation import Job, Settings


class _Deprecated(argparse.Action):
    """An old spelling of another option: hidden from ``--help``, stores into its ``dest``, prints a one-line note."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"note: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def deprecate(parser: argparse.ArgumentParser | argparse._ArgumentGroup, old: str, action: argparse.Action, *,
              value: str | None = None) -> None:
    """Accept ``old`` as a deprecated spelling of ``action``'s option; with ``value``, a flag that stores it."""
    if value is None:
        spelling, how = action.option_strings[0], {"nargs": action.nargs, "const": action.const, "type": action.type,
                                                   "metavar": action.metavar}
    else:
        spelling, how = f"{action.option_strings[0]} {value}", {"nargs": 0, "const": value}
    parser.add_argument(old, dest=action.dest, action=_Deprecated, new=spelling, **how)


def _joined(groups: Sequence[Sequence[str]]) -> list[str]:
    """The values of a repeatable ``nargs="+"`` option (``-o a b -o c``) as one list."""
    return [item for group in groups for item in group]


def add_config_arguments(parser: argparse.ArgumentParser, *, pretrain: bool, linear: bool, passl: bool) -> None:
    """``-c CONFIG`` and what runs it: ``--resume`` for pretraining, ``--pretrained``/``--load``/``--evaluate-only``
    for linear evaluation; ``passl``: ``tools/train.py``, with PASSL's ``--no-cuda`` listed (byol: deprecated)."""
    parser.add_argument("-c", "--config-file", required=True, help="YAML config (PASSL key schema)")
    parser.add_argument("-o", "--override", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. -o lr_scheduler.base_lr=0.2 (YAML literal)")
    device = parser.add_argument("--device", choices=choices.DEVICES, default=None,
                                 help="training device (default: the config's 'device', auto)")
    if passl:
        parser.add_argument("--no-cuda", action="store_true", help="PASSL's flag: same as --device cpu")
    else:
        parser.set_defaults(no_cuda=False)
        deprecate(parser, "--no-cuda", device, value="cpu")
    if pretrain:
        parser.add_argument("--resume", type=Path, default=None,
                            help="checkpoint to resume from (default: resume the latest unfinished run of this config)")
    else:
        parser.set_defaults(resume=None)
    if linear:
        parser.add_argument("--pretrained", default=None,
                            help="classification configs: backbone weights (checkpoint, pretraining run folder, "
                                 f"PASSL checkpoint, extracted file, or '{choices.RANDOM_WEIGHTS}' for the random-init "
                                 "baseline)")
        parser.add_argument("--load", type=Path, default=None,
                            help="classification configs: a saved classifier (backbone + head)")
        parser.add_argument("--evaluate-only", action="store_true", help="with --load: evaluate on the val split")
    else:
        parser.set_defaults(pretrained=None, load=None, evaluate_only=False)
    parser.add_argument("--wait", action="store_true",
                        help="when another run of this config holds its run folder, wait for it instead of refusing")


def add_launch_arguments(parser: argparse.ArgumentParser, *, multi_node: bool) -> None:
    """The launch flags of every ``byol`` command that launches; ``multi_node``: also nodes, master and log folder."""
    group = parser.add_argument_group("multi-process launch (paddle.distributed.launch)")
    nproc = group.add_argument("--nproc-per-node", type=int, default=None, metavar="N",
                               help="processes on this node (CPU: gloo)")
    group.add_argument("--devices", "--gpus", default=None, metavar="IDS",
                       help="GPU ids for this node, one process each, e.g. 0,1,2,3")
    for old in ("--nproc_per_node", "--nproc"):
        deprecate(group, old, nproc)
    if multi_node:
        group.add_argument("--nnodes", type=int, default=1, help="number of nodes")
        group.add_argument("--master", default=None, help="rendezvous host:port for multi-node jobs")
        log_dir = group.add_argument("--log-dir", default=choices.LAUNCH_LOG_DIR, help="the workers' log folder")
        deprecate(group, "--log_dir", log_dir)


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    overrides = _joined(args.override)
    device = "cpu" if args.no_cuda else args.device
    if device:
        overrides.append(f"device={device}")
    return overrides


def load_from_args(args: argparse.Namespace) -> dict:
    from byol_lib.config import load_config

    return load_config(args.config_file, overrides_from_args(args))


def worker_args(args: argparse.Namespace) -> list[str]:
    """The same command for each launched worker, without the launch options."""
    argv = [args.command, "-c", str(args.config_file), *[a for o in overrides_from_args(args) for a in ("-o", o)]]
    for flag, value in (("--resume", args.resume), ("--pretrained", args.pretrained), ("--load", args.load)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + (["--evaluate-only"] if args.evaluate_only else []) + (["--wait"] if args.wait else [])


def launch_from_args(args: argparse.Namespace) -> int:
    """``byol pretrain|linear-eval --nproc-per-node N ...``: validate here, then run the workers via the launcher."""
    from byol_lib.config import ConfigError
    from byol_lib.launch import launch_cli

    try:
        check_kind(load_from_args(args), args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = launch_cli(worker_args(args), nproc_per_node=args.nproc_per_node, devices=args.devices,
                        nnodes=args.nnodes, master=args.master, log_dir=args.log_dir)
    if result.returncode != 0:
        print(f"error: a worker failed (exit code {result.returncode})\n{result.failure_tail}", file=sys.stderr)
    return result.returncode


_COMMAND_KIND = {"pretrain": "pretrain", "linear-eval": "linear"}


def check_kind(cfg: dict, args: argparse.Namespace) -> None:
    """``byol pretrain`` takes BYOL configs, ``byol linear-eval`` classification configs (tools/train.py: both)."""
    from byol_lib.config import ConfigError, config_kind

    wanted = _COMMAND_KIND.get(getattr(args, "command", ""))
    if wanted and config_kind(cfg) != wanted:
        other = "linear-eval" if wanted == "pretrain" else "pretrain"
        raise ConfigError(f"{args.config_file} is a {config_kind(cfg)} config: use 'byol {other}'")


def run_config(args: argparse.Namespace) -> int:
    """Pretraining for a BYOL config, linear evaluation for a classification config.

    Exit codes: 0 done, 2 an error (one line), 128 + the signal's number when SIGTERM/SIGINT interrupted the run.
    """
    from byol_lib.checkpoint import CheckpointWriteError
    from byol_lib.config import ConfigError, config_kind, passl_original_notice
    from byol_lib.data.datasets import DatasetError
    from byol_lib.distributed import DeviceError
    from byol_lib.linear import run_linear_eval
    from byol_lib.run_folder import Interrupted, RunFolderBusy
    from byol_lib.train import NonFiniteLossError, pretrain

    notice = passl_original_notice(args.config_file)
    if notice:
        print(notice, flush=True)
    try:
        cfg = load_from_args(args)
        check_kind(cfg, args)
        if config_kind(cfg) == "linear":
            if args.resume is not None:
                raise ConfigError("--resume is for pretraining configs; linear evaluation restarts from its weights")
            run_linear_eval(cfg, pretrained=args.pretrained, load=args.load, evaluate_only=args.evaluate_only,
                            wait=args.wait)
            return 0
        if args.pretrained or args.load or args.evaluate_only:
            raise ConfigError(f"{args.config_file} is a pretraining config: --pretrained, --load and --evaluate-only "
                              "are for classification configs such as configs/byol/byol_clas_r50.yaml")
        if args.resume is not None and not args.resume.is_file():
            raise ConfigError(f"--resume {args.resume}: no such checkpoint file")
        pretrain(cfg, resume=args.resume, wait=args.wait)
    except (ConfigError, DatasetError, DeviceError, NonFiniteLossError, CheckpointWriteError, RunFolderBusy) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as err:
        where = f": {err.folder} is recorded as interrupted; re-run the same command to resume" if err.folder else ""
        print(f"{err}{where}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted by SIGINT", file=sys.stderr)
        return 130
    return 0


def add_seeds_argument(parser: argparse.ArgumentParser, meaning: str) -> None:
    """``--seeds``, with the same default in every command that takes it."""
    parser.add_argument("--seeds", type=int, nargs="+", default=list(choices.DEFAULT_SEEDS),
                        help=f"{meaning} (default: {' '.join(map(str, choices.DEFAULT_SEEDS))})")


def add_reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="default", choices=tuple(choices.PROFILES),
                        help="default: embedded dataset on CPU; the others need --data PATH")
    parser.add_argument("--data", default=None, help="dataset path (CIFAR archive or folder; ImageNet root)")
    add_seeds_argument(parser, "one full run per seed")
    parser.add_argument("--output-dir", default=choices.RESULTS_DIR, help="results folder (run folders land here)")
    parser.add_argument("--report", default=choices.REPORT_HTML, help="the HTML report ('' for none)")
    parser.add_argument("-o", "--override", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override a pretraining config key")
    parser.add_argument("--linear-override", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override a linear-evaluation config key")
    parser.add_argument("--ablation", default=None, choices=choices.ABLATION_CHOICES,
                        help="ablation set after the main runs (default: reduced for the default profile, none "
                             "otherwise; full = every variant of configs/ablations/)")
    parser.add_argument("--ablation-seeds", type=int, nargs="+", default=None,
                        help="first seeds of every variant (default: the study file's)")
    parser.add_argument("--ablation-override", action="append", nargs="+", default=None, metavar="KEY=VALUE",
                        help="pretraining overrides of the ablation runs, replacing the study's budget "
                             "(default profile: configs/studies/default.yaml)")
    parser.add_argument("--target-halfwidth", type=float, default=None, metavar="POINTS",
                        help="add seeds until every paired 95%% interval is within ± POINTS (default: the study's)")
    parser.add_argument("--max-seeds", type=int, default=None, help="at most this many seeds per variant "
                        "(default: the study's)")
    parser.add_argument("--max-parallel", type=int, default=None,
                        help="ablation runs at once (default: one per core, one thread each)")
    add_launch_arguments(parser, multi_node=False)


def run_reproduce(args: argparse.Namespace) -> int:
    from byol_lib.config import ConfigError
    from byol_lib.data.datasets import DatasetError
    from byol_lib.export import ExportError
    from byol_lib.notebook import NotebookError
    from byol_lib.pipeline import reproduce

    try:
        reproduce(args.profile, data=args.data, seeds=args.seeds, devices=args.devices,
                  nproc_per_node=args.nproc_per_node, output_dir=args.output_dir,
                  pretrain_overrides=_joined(args.override), linear_overrides=_joined(args.linear_override),
                  report=args.report or None, ablation=args.ablation, ablation_seeds=args.ablation_seeds,
                  ablation_overrides=None if args.ablation_override is None else _joined(args.ablation_override),
                  max_parallel=args.max_parallel, target_halfwidth=args.target_halfwidth,
                  max_seeds=args.max_seeds)
    except (ConfigError, DatasetError, ExportError, NotebookError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def add_ablate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", action="append", nargs="+", required=True, metavar="FILE",
                        help=f"variant file(s), e.g. {choices.AUGMENTATION_GRID} (repeatable)")
    parser.add_argument("--variants", nargs="+", default=None, help="run only these variants (default: all)")
    add_seeds_argument(parser, "one run per variant and seed")
    parser.add_argument("--config", default=None, help="base pretraining config (default: the grid file's 'base')")
    parser.add_argument("--linear-config", default=None, help="linear-evaluation config (default: the grid's)")
    parser.add_argument("--output-dir", default=choices.RESULTS_DIR, help="results folder (run folders land here)")
    parser.add_argument("--study", default=choices.STUDY_NAME,
                        help=f"run-name prefix: <study>-<variant>-pretrain-s<seed> (default: {choices.STUDY_NAME})")
    parser.add_argument("--max-parallel", type=int, default=None,
                        help="jobs at once, each in its own process (default: one per core; 1 runs them here)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per job (default: cores / jobs)")
    parser.add_argument("-o", "--override", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override a pretraining key in every job, e.g. -o epochs=5")
    parser.add_argument("--linear-override", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override a linear-evaluation key in every job")
    parser.add_argument("--emit-commands", action="store_true", help="print one command per job, run nothing")
    parser.add_argument("--emit-slurm", default=None, metavar="PATH", help="write a SLURM array script, run nothing")
    parser.add_argument("--target-halfwidth", type=float, default=None, metavar="POINTS",
                        help="after --seeds, add seeds in waves until every variant's paired 95%% interval against "
                             "the baseline is at most ± POINTS top-1 points (with --emit-*: only the next wave)")
    parser.add_argument("--max-seeds", type=int, default=None,
                        help="with --target-halfwidth: at most this many seeds per variant, failed runs included "
                             f"(default {choices.DEFAULT_MAX_SEEDS})")
    parser.add_argument("--no-comparisons", action="store_true",
                        help="do not write <output-dir>/<study>/comparisons.json/.csv (each job's own command)")
    add_launch_arguments(parser, multi_node=False)


def adaptive_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with ``byol ablate``'s adaptive flags, if anything."""
    if args.target_halfwidth is None:
        return "--max-seeds needs --target-halfwidth" if args.max_seeds is not None else None
    if not args.target_halfwidth > 0:
        return f"--target-halfwidth must be > 0 points, got {args.target_halfwidth}"
    if args.no_comparisons:
        return "--no-comparisons cannot go with --target-halfwidth: the waves are planned from the comparisons"
    seeds = len(set(args.seeds))
    if args.max_seeds is not None and args.max_seeds < seeds:
        return f"--max-seeds {args.max_seeds} is smaller than the {seeds} seeds of --seeds; raise it or pass fewer"
    return None


def run_ablate(args: argparse.Namespace) -> int:
    from byol_lib import ablation
    from byol_lib.comparisons import JSON_NAME, comparisons_folder
    from byol_lib.config import ConfigError

    problem = adaptive_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    settings = ablation.Settings(
        results_dir=Path(args.output_dir).resolve(), study=args.study,
        pretrain_config=Path(args.config).resolve() if args.config else None,
        linear_config=Path(args.linear_config).resolve() if args.linear_config else None,
        pretrain_overrides=tuple(_joined(args.override)), linear_overrides=tuple(_joined(args.linear_override)),
        launch=ablation.Launch(args.nproc_per_node, args.devices))
    grids = _joined(args.grid)
    written = f"comparisons: {comparisons_folder(settings.results_dir, settings.study) / JSON_NAME}"
    target = args.target_halfwidth
    max_seeds = choices.DEFAULT_MAX_SEEDS if args.max_seeds is None else args.max_seeds
    try:
        if args.emit_commands or args.emit_slurm:
            if target is None:
                return _emit(ablation.plan(grids, settings, args.variants, args.seeds), settings, args)
            jobs, standing = ablation.next_jobs(grids, settings, args.variants, args.seeds, target, max_seeds)
            if standing is not None:
                print("\n".join([*ablation.verdict_lines(standing.comparisons), written]), file=sys.stderr)
                if not jobs:
                    print(f"{standing.message}: no wave left to run", file=sys.stderr)
            return _emit(jobs, settings, args)
        batch = ablation.run_batch(grids, settings, args.variants, args.seeds, args.max_parallel, args.threads,
                                   target=target, max_seeds=max_seeds, write_comparisons=not args.no_comparisons)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = [o for o in batch.outcomes if o.status != "finished"]
    lines = [f"{len(batch.outcomes) - len(failed)} of {len(batch.outcomes)} jobs finished in {settings.results_dir}",
             *(f"  failed: {o.job.pretrain_id}: {o.error}" for o in failed),
             *(f"  {line}" for line in ablation.verdict_lines(batch.comparisons)),
             *([batch.adaptation.message] if batch.adaptation else []),
             *([] if args.no_comparisons else [written])]
    print("\n".join(lines), flush=True)
    return 1 if failed else 0


def _emit(jobs: list[Job], settings: Settings, args: argparse.Namespace) -> int:
    """Print the jobs' commands and/or write their SLURM array script (none for no jobs)."""
    from byol_lib import ablation

    if args.emit_commands and jobs:
        print("\n".join(ablation.emit_commands(jobs, settings)))
    if args.emit_slurm and jobs:
        Path(args.emit_slurm).write_text(ablation.slurm_script(jobs, settings, args.max_parallel))
        print(f"wrote {args.emit_slurm}: sbatch it to run {len(jobs)} jobs as an array", file=sys.stderr)
    return 0


def add_noise_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 4, 8], help="pretraining budgets to measure")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)), help="pretraining seeds per budget")
    parser.add_argument("--extra-heads", type=int, default=1,
                        help="linear evaluations per backbone beyond the standard one, with other head seeds "
                             "(held-out split, head init, batch order)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2500, 5000],
                        help="validation-set sizes of the image-noise table (at most the config's)")
    parser.add_argument("--grid", default=choices.AUGMENTATION_GRID,
                        help="the grid whose baseline (base and linear configs) is measured")
    parser.add_argument("--output-dir", default=choices.RESULTS_DIR, help="results folder (run folders land here)")
    parser.add_argument("--max-parallel", type=int, default=None, help="pretraining runs at once")
    parser.add_argument("-o", "--override", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override a pretraining key of every run")
    parser.add_argument("--linear-override", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override a linear-evaluation key")


def run_noise(args: argparse.Namespace) -> int:
    from byol_lib import noise
    from byol_lib.config import ConfigError

    if len(args.seeds) < 2 or args.extra_heads < 1:
        print("error: a noise budget needs >= 2 --seeds and --extra-heads >= 1", file=sys.stderr)
        return 2
    try:
        path = noise.measure(args.output_dir, args.epochs, args.seeds, args.extra_heads, args.sizes,
                             args.max_parallel, _joined(args.override), _joined(args.linear_override),
                             grid_file=args.grid)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"noise budget: {path}", flush=True)
    return 0


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default=choices.RESULTS_DIR,
                        help=f"the results folder to report on (default: {choices.RESULTS_DIR})")
    parser.add_argument("--output", default=choices.REPORT_HTML,
                        help=f"the HTML file to write (default: {choices.REPORT_HTML})")
    parser.add_argument("--show-code", action="store_true", help="keep the notebook's code cells in the HTML")


def run_report(args: argparse.Namespace) -> int:
    from byol_lib.notebook import NotebookError, build_report

    if not Path(args.results).is_dir():
        print(f"error: --results {args.results}: no such folder", file=sys.stderr)
        return 2
    try:
        html = build_report(Path(args.results).resolve(), Path(args.output).resolve(), show_code=args.show_code)
    except NotebookError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"report: {html}", flush=True)
    return 0


def add_extract_arguments(parser: argparse.ArgumentParser, *, passl: bool) -> None:
    """PASSL's ``extract_weight.py`` flags; ``byol extract`` spells ``--remove-prefix`` (``--remove_prefix``: old)."""
    parser.add_argument("checkpoint", type=Path,
                        help="checkpoint of this project or of PASSL, or a classifier/extracted weight file")
    parser.add_argument("--output", type=Path, required=True, help="output file, ending in .pdparams or .pd")
    parser.add_argument("--prefix", default=None,
                        help="keep only keys under PREFIX (PASSL semantics; 'backbone' also means online.encoder). "
                             "Default: the online encoder with bare names, ready for the bare ResNet")
    remove = parser.add_argument("--remove_prefix" if passl else "--remove-prefix", dest="remove_prefix",
                                 action="store_true", help="strip PREFIX from the kept keys (without it an explicit "
                                                           "PREFIX stays, as in PASSL)")
    if not passl:
        deprecate(parser, "--remove_prefix", remove)


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """PASSL's ``passl2ppclas/convert.py`` flags (``--width``: ours), the same in ``byol convert``."""
    parser.add_argument("--type", dest="arch", default="res50",
                        help="ResNet type, res<depth> for a depth byol_lib.model builds (default: res50)")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="full checkpoint (this project's or PASSL's) or an extracted backbone file")
    parser.add_argument("--output", type=Path, required=True, help="PaddleClas weight file, ending in .pdparams")
    parser.add_argument("--width", type=int, default=64, help="stem width the checkpoint was trained with")


def _exported(action: str, run: Callable[[], dict]) -> int:
    """Run an export; exit code 2 and one ``error:`` line on bad input."""
    from byol_lib.export import ExportError

    try:
        state = run()
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{action}: {len(state)} tensors")
    return 0


def run_extract(args: argparse.Namespace) -> int:
    from byol_lib.export import extract_file

    return _exported(f"wrote {args.output}",
                     lambda: extract_file(args.checkpoint, args.output, args.prefix, args.remove_prefix))


def run_convert(args: argparse.Namespace) -> int:
    from byol_lib.export import convert_file

    return _exported(f"wrote {args.output} (PaddleClas {args.arch})",
                     lambda: convert_file(args.checkpoint, args.output, args.arch, args.width))


def add_notebook_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("notebook", help="e.g. notebooks/10_pretrain.ipynb")
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                        help="a parameter of the notebook's parameters cell (repeatable; a YAML value, raw text for "
                             "str parameters)")
    parser.add_argument("--run-dir", default=None, help="run folder (default: a new results/<utc>-notebook-<hash>)")


def run_notebook(args: argparse.Namespace) -> int:
    """Exit codes: 0 done, 2 a bad notebook or parameter (before a kernel starts), 1 the notebook raised."""
    from byol_lib import notebook

    logging.getLogger("papermill").setLevel(logging.INFO)  # log_output: the cells' output, as it comes
    try:
        declared = notebook.declared_parameters(args.notebook)
        parameters = dict(notebook.parse_parameter(text, declared) for text in args.parameter)
        done = notebook.run_notebook(args.notebook, parameters, args.run_dir, log_output=True)
    except notebook.NotebookError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as err:  # notebook.ParameterError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"executed notebook: {done.output}")
    return 0


def _standalone(prog: str, description: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                run: Callable[[argparse.Namespace], int], argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def train_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tools/train.py``."""
    return _standalone("tools/train.py", "BYOL pretraining or linear evaluation (PASSL-compatible flags)",
                       lambda p: add_config_arguments(p, pretrain=True, linear=True, passl=True), run_config, argv)


def extract_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tools/extract_weight.py``."""
    return _standalone("tools/extract_weight.py", "Extract the online encoder (or any prefix) from a checkpoint",
                       lambda p: add_extract_arguments(p, passl=True), run_extract, argv)


def convert_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tools/passl2ppclas/convert.py``."""
    return _standalone("tools/passl2ppclas/convert.py", "Convert a ResNet backbone to PaddleClas 2.x parameter names",
                       add_convert_arguments, run_convert, argv)


def _config_command(linear: bool) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        add_config_arguments(parser, pretrain=not linear, linear=linear, passl=False)
        add_launch_arguments(parser, multi_node=True)
    return add


def _run_config_command(args: argparse.Namespace) -> int:
    launching = args.nproc_per_node or args.devices or args.nnodes > 1
    return launch_from_args(args) if launching else run_config(args)


# name: (help, add its flags, run it)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "pretrain": ("BYOL pretraining (one process, or several with --nproc-per-node)", _config_command(linear=False),
                 _run_config_command),
    "linear-eval": ("linear evaluation of a frozen backbone (classification configs)", _config_command(linear=True),
                    _run_config_command),
    "reproduce": ("the full reproduction: pretrain, extract, convert, linear eval, ablations, report",
                  add_reproduce_arguments, run_reproduce),
    "extract": ("extract the online encoder (PASSL's tools/extract_weight.py)",
                lambda p: add_extract_arguments(p, passl=False), run_extract),
    "convert": ("rename a ResNet backbone to PaddleClas names (passl2ppclas)", add_convert_arguments, run_convert),
    "ablate": ("an ablation grid: variants x seeds, each pretrained and evaluated", add_ablate_arguments, run_ablate),
    "noise-budget": ("measure training, head and image noise of the baseline", add_noise_arguments, run_noise),
    "notebook": ("execute a notebook with parameters into a run folder", add_notebook_arguments, run_notebook),
    "report": ("regenerate the HTML report from a results folder", add_report_arguments, run_report),
}


def byol_parser() -> argparse.ArgumentParser:
    """The ``byol`` command line (building it imports no Paddle, pandas or papermill)."""
    top = argparse.ArgumentParser(prog="byol", description="BYOL reproduction kit on PaddlePaddle")
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = top.add_subparsers(dest="command", required=True)
    for name, (summary, add_arguments, _) in COMMANDS.items():
        add_arguments(commands.add_parser(name, help=summary, description=summary))
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """The ``byol`` console command."""
    args = byol_parser().parse_args(argv)
    return COMMANDS[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())
