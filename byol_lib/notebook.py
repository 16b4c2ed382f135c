"""Run notebooks through papermill's Python API, and turn the report notebook into a self-contained HTML file.

``run_notebook("notebooks/10_pretrain.ipynb", {"epochs": 2})``:

* rejects parameter names that the notebook's ``parameters`` cell does not declare, values that are not plain data
  (strings, numbers, booleans, None, lists and maps of them) and values of another type than the cell declares
  (an ``int`` takes an int, a ``float`` an int or float, ...), before a kernel starts;
* creates the run folder (default ``results/<utc>-notebook-<hash>/``; never inside ``notebooks/``) and hands it to
  the notebook as ``run_dir`` when the notebook declares it (``10_pretrain`` then pretrains into that folder);
* runs a ``python3`` kernel in the repo root with the quiet environment (no glog lines, no ccache warning, no
  tqdm bars, the inline matplotlib backend);
* writes the executed notebook into the run folder with ``notebook.json`` (name, parameters, status, error), and,
  once the kernel is done, records the outcome in the folder's ``summary.json``: a ``notebook`` entry merged into
  the summary the notebook's run wrote, else a new ``kind: notebook`` summary. A notebook that raises leaves
  ``status: failed`` with the error, then ``NotebookError`` is raised.

``build_report()`` executes ``notebooks/90_report.ipynb`` this way and converts it with nbconvert (figures
embedded as base64 PNG, code cells hidden by default) to ``reports/report.html``. Command lines (``byol_lib.cli``)::

    byol notebook notebooks/10_pretrain.ipynb -p epochs=5 -p nproc=2
    byol report [--results results] [--output reports/report.html] [--show-code]
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import papermill
import yaml

from byol_lib import choices, results, run_folder, runtime
from byol_lib.atomic import write_atomic, write_json
from byol_lib.registry import NOTEBOOK_KIND, NOTEBOOK_RECORD, results_path

KERNEL = "python3"
# ipykernel warns at every start that its local TCP sockets are unencrypted: harmless, and noise in our output
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]
NOTEBOOKS = results.repo_root() / "notebooks"
REPORT_NOTEBOOK = NOTEBOOKS / "90_report.ipynb"
REPORT_HTML = results.repo_root() / choices.REPORT_HTML
TEMPLATES = Path(__file__).resolve().parent  # holds report_template/: lab's template without CDN scripts
KERNEL_ENV = {**runtime.QUIET_ENV, "TQDM_DISABLE": "1"}
KERNEL_ENV_REMOVED = ("MPLBACKEND",)  # a CLI's "Agg" would silently drop every figure from the notebook
DECLARED_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,),
                                               "list": (list, tuple), "dict": (dict,)}
HIDDEN_TAGS = {"remove_cell": "remove_cell_tags", "remove_output": "remove_all_outputs_tags",
               "remove_input": "remove_input_tags"}


class ParameterError(ValueError):
    """A parameter that cannot be passed to the notebook; the message names it."""


class UnknownParameterError(ParameterError):
    """A parameter the notebook's ``parameters`` cell does not declare."""


class NotebookError(RuntimeError):
    """A notebook raised; its run folder holds the executed notebook and a failed ``summary.json``."""

    def __init__(self, message: str, run_dir: Path, output: Path) -> None:
        super().__init__(message)
        self.run_dir, self.output = run_dir, output


@dataclass(frozen=True)
class NotebookRun:
    """A finished notebook execution."""

    notebook: Path
    run_dir: Path
    output: Path
    parameters: dict[str, Any]
    wall_time_s: float


def resolve_notebook(notebook: str | Path) -> Path:
    """``notebook`` as given if it exists, else relative to the repo root."""
    path = Path(notebook)
    if not path.exists() and not path.is_absolute():
        path = results.repo_root() / path
    if not path.is_file():
        raise FileNotFoundError(f"notebook {notebook}: no such file")
    return path


def declared_parameters(notebook: str | Path) -> dict[str, dict[str, str]]:
    """Name -> papermill's ``{inferred_type_name, default, help}`` for each literal of the ``parameters`` cell."""
    return dict(papermill.inspect_notebook(str(resolve_notebook(notebook))))


def _not_plain(value: Any) -> str | None:
    """What in ``value`` is not plain data (strings, numbers, booleans, None, lists and string-keyed maps), if any."""
    if value is None or isinstance(value, (str, int, float)):
        return None
    if isinstance(value, (list, tuple)):
        return next((found for item in value if (found := _not_plain(item))), None)
    if isinstance(value, dict):
        return next((found for key, item in value.items()
                     if (found := f"a {type(key).__name__} key" if not isinstance(key, str) else _not_plain(item))),
                    None)
    return f"a {type(value).__name__}"


def check_parameters(notebook: str | Path, parameters: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """The declared parameters; ``UnknownParameterError`` for names not among them (papermill only warns),
    ``ParameterError`` for a value that is not plain data or not of the declared type."""
    declared = declared_parameters(notebook)
    unknown = [name for name in parameters if name not in declared]
    if unknown:
        hints = [f"{name} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(name, declared, 1))
                 else name for name in unknown]
        raise UnknownParameterError(f"{Path(notebook).name} does not declare {', '.join(hints)}; its parameters: "
                                    f"{', '.join(declared) or 'none'}")
    for name, value in parameters.items():
        if (found := _not_plain(value)) is not None:
            raise ParameterError(f"parameter {name}: {found} is not plain data (strings, numbers, booleans, null, "
                                 "lists and maps only)")
        wanted = declared[name]["inferred_type_name"]
        accepted = DECLARED_TYPES.get(wanted)
        if accepted and (not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted)):
            raise ParameterError(f"parameter {name} is declared {wanted} in {Path(notebook).name}, got "
                                 f"{type(value).__name__} {value!r}")
    return declared


@contextlib.contextmanager
def kernel_environment() -> Iterator[None]:
    """The quiet environment for the kernel papermill starts (it inherits ``os.environ``), restored afterwards."""
    saved = dict(os.environ)
    for key in KERNEL_ENV_REMOVED:
        os.environ.pop(key, None)
    for key, value in KERNEL_ENV.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def record(run_dir: Path, entry: Mapping[str, Any]) -> dict[str, Any]:
    """Merge a finished or failed notebook ``entry`` into the run folder's summary, and return that summary.

    A ``kind: notebook`` summary (created when there is none) takes the entry's status, error and wall time. In the
    summary of another run a failed entry fails the run unless that run finished (a plot failing after a finished
    training run), and its error is kept when the run recorded none. The run folder is held meanwhile (waiting for
    a run the notebook started to let go of it).
    """
    with run_folder.hold(run_dir, wait=True):
        write_json(run_dir / NOTEBOOK_RECORD, dict(entry))
        summary = results.read_summary(run_dir) or {"run_id": run_dir.name, "kind": NOTEBOOK_KIND,
                                                     **results.environment()}
        summary = {**summary, "kind": summary.get("kind", NOTEBOOK_KIND), "notebook": dict(entry)}
        if summary["kind"] == NOTEBOOK_KIND:  # the notebook is the whole run
            summary.update(status=entry["status"], error=entry["error"], wall_time_s=entry.get("wall_time_s"))
        elif entry["status"] == "failed":
            if summary.get("status") != "finished":
                summary["status"] = "failed"
            summary["error"] = summary.get("error") or entry["error"]
        run_folder.write_summary(run_dir, summary)
    return summary


def _describe(err: BaseException) -> str:
    if isinstance(err, papermill.PapermillExecutionError):
        return f"{err.ename}: {err.evalue} (cell {err.exec_count})"
    return f"{type(err).__name__}: {err}"


def run_notebook(notebook: str | Path, parameters: Mapping[str, Any] | None = None, run_dir: str | Path | None = None,
                 *, results_dir: str | Path | None = None, timeout: int | None = None,
                 log_output: bool = False) -> NotebookRun:
    """Execute ``notebook`` with ``parameters`` into a run folder; see the module docstring.

    ``results_dir`` (default: the ``results_dir`` parameter, else ``results``, from the repo root) holds the new
    run folder and is passed on to notebooks that declare ``results_dir``. ``timeout`` limits each cell (seconds);
    ``log_output`` streams cell output to this process's stdout (live progress from the command line).
    """
    path = resolve_notebook(notebook)
    parameters = dict(parameters or {})
    declared = check_parameters(path, parameters)
    base = results_path(results_dir or parameters.get("results_dir"))
    if run_dir is None:
        digest = results.config_hash({"notebook": path.name, "parameters": parameters})
        run_dir = results.new_run_dir(base, NOTEBOOK_KIND, digest)
    run_dir = Path(run_dir)
    if _inside(run_dir, NOTEBOOKS):
        raise ValueError(f"run folder {run_dir} is inside {NOTEBOOKS}: executed notebooks never go there")
    run_dir.mkdir(parents=True, exist_ok=True)
    if "run_dir" in declared:
        parameters.setdefault("run_dir", str(run_dir.resolve()))
    if "results_dir" in declared and results_dir is not None:
        parameters.setdefault("results_dir", str(base))
    output = run_dir / path.name
    entry: dict[str, Any] = {"name": path.stem, "output": output.name, "parameters": parameters, "status": "running",
                             "error": None}
    write_json(run_dir / NOTEBOOK_RECORD, entry)  # summary.json is the run's until the kernel is done
    start = time.perf_counter()
    try:
        with kernel_environment():
            papermill.execute_notebook(str(path), str(output), parameters=parameters, kernel_name=KERNEL,
                                       cwd=str(results.repo_root()), progress_bar=False, log_output=log_output,
                                       execution_timeout=timeout, extra_arguments=KERNEL_ARGUMENTS)
    except BaseException as err:
        error = _describe(err)
        record(run_dir, {**entry, "status": "failed", "error": error,
                         "wall_time_s": time.perf_counter() - start})
        if isinstance(err, papermill.PapermillExecutionError):
            raise NotebookError(f"{path.name} failed: {error}; executed notebook: {output}", run_dir,
                                output) from err
        raise
    wall = time.perf_counter() - start
    record(run_dir, {**entry, "status": "finished", "wall_time_s": wall})
    return NotebookRun(path, run_dir, output, parameters, wall)


def export_html(executed: str | Path, html: str | Path, *, show_code: bool = False,
                title: str = "BYOL reproduction report") -> Path:
    """Convert an executed notebook to one self-contained HTML file (``report_template``: no external script,
    font or image), figures inline, code cells hidden unless ``show_code``.

    Cells tagged ``remove_cell`` are dropped, ``remove_output`` loses its outputs, ``remove_input`` its code.
    """
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    quiet = logging.getLogger("byol_lib.nbconvert")  # the lab template has no alt text: nbconvert adds a generic
    quiet.setLevel(logging.ERROR)                      # one to each figure and would warn about every report
    exporter = HTMLExporter(template_name="report_template", extra_template_basedirs=[str(TEMPLATES)],
                            exclude_input=not show_code, exclude_input_prompt=not show_code,
                            exclude_output_prompt=True, log=quiet)
    tags = TagRemovePreprocessor(**{trait: {tag} for tag, trait in HIDDEN_TAGS.items()})
    exporter.register_preprocessor(tags, enabled=True)
    node = nbformat.read(str(executed), as_version=4)
    body, _ = exporter.from_notebook_node(node, resources={"metadata": {"name": title}})
    html = Path(html)
    html.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(html, body)
    return html


def build_report(results_dir: str | Path | None = None, output: str | Path | None = None,
                 parameters: Mapping[str, Any] | None = None, *, show_code: bool = False,
                 log_output: bool = False) -> Path:
    """Execute the report notebook over ``results_dir`` and write its HTML (default ``reports/report.html``)."""
    run = run_notebook(REPORT_NOTEBOOK, parameters, results_dir=results_path(results_dir), log_output=log_output)
    return export_html(run.output, output or REPORT_HTML, show_code=show_code)


def parse_parameter(text: str, declared: Mapping[str, Mapping[str, str]]) -> tuple[str, Any]:
    """``name=value``: the raw text for parameters declared ``str``, otherwise an untagged YAML literal (``5``,
    ``[1, 2]``); ``ParameterError`` for a tag (``!!binary``, ``!!set``, ``!!python/...``) or text that is not YAML."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise ParameterError(f"-p {text!r} must look like name=value")
    if declared.get(name, {}).get("inferred_type_name") == "str":
        return name, raw
    try:
        tagged = [event.tag for event in yaml.parse(raw, Loader=yaml.SafeLoader) if getattr(event, "tag", None)]
        if tagged:
            raise ParameterError(f"-p {name}: YAML tags such as {tagged[0]} are refused; give a plain value, list "
                                 "or map")
        return name, yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ParameterError(f"-p {name}: not a YAML value ({str(err).splitlines()[0]})") from None
