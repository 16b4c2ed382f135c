"""Notebooks: stored without outputs, one annotated parameters cell; each executes under papermill (through
``byol_lib.notebook``) with tiny parameters; the report notebook builds a self-contained HTML file; a notebook
that raises is recorded as failed; an unknown parameter is rejected before anything runs.

Every run writes under tmp_path. One tiny pretraining run through the launcher (about 10 s) feeds the export,
linear-evaluation and report notebooks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import nbformat
import numpy as np
import paddle
import papermill
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from byol_lib import cli, notebook, registry
from byol_lib.export import paddleclas_keys

from .conftest import ROOT, TINY_GRID
from .offline_browser import BROWSER, render_offline

NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
TINY_PRETRAIN = {"config": "configs/byol/tiny_cpu.yaml", "epochs": 2,
                 "overrides": ["model.backbone.stem=imagenet"]}  # the 7x7 stem PaddleClas has, at 16 px
TINY_STEPS = 2 * 128 // 32  # epochs x images // batch of tiny_cpu.yaml
REPORT_SECTIONS = ("Findings", "BYOL against a random-init encoder", "Table 17 side by side: augmentations",
                   "PASSL deviations side by side", "Resolution: power and the noise budget",
                   "kNN and the online probe", "Published numbers side by side", "Training curves", "Runs",
                   "Runs that did not finish")


def outputs(path: Path, kind: str | None = None) -> list[dict]:
    """Every output of the executed notebook (of one ``output_type`` if given)."""
    cells = nbformat.read(str(path), as_version=4).cells
    return [o for c in cells if c.cell_type == "code" for o in c.outputs if kind in (None, o.output_type)]


def images(path: Path) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs(path))


def assert_clean(path: Path) -> None:
    """No error and nothing on stderr (Paddle's log noise, warnings) in an executed notebook."""
    assert not outputs(path, "error")
    assert not [o.text for o in outputs(path, "stream") if o.name == "stderr"]


def new_runs(results: Path, before: set[str]) -> list[Path]:
    return sorted(p for p in results.iterdir() if p.is_dir() and p.name not in before)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as env:  # module scope: the kernels and workers inherit the environment
        env.setenv("BYOL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
        yield folder


@pytest.fixture(scope="module")
def pretrained(results: Path) -> notebook.NotebookRun:
    before = sorted(NOTEBOOK_DIR.iterdir())
    run = notebook.run_notebook("notebooks/10_pretrain.ipynb", TINY_PRETRAIN, results_dir=results)
    assert sorted(NOTEBOOK_DIR.iterdir()) == before  # nothing written next to the notebooks
    return run


@pytest.fixture(scope="module")
def linear_run(results: Path, pretrained: notebook.NotebookRun) -> Path:
    before = {p.name for p in results.iterdir()}
    run = notebook.run_notebook("notebooks/30_linear_eval.ipynb",
                                {"config": "configs/byol/tiny_linear.yaml", "pretrained": pretrained.run_dir.name,
                                 "epochs": 2, "knn_k": [5, 20]}, results_dir=results)
    assert_clean(run.output)
    assert images(run.output) == 2
    (linear,) = [p for p in new_runs(results, before) if p != run.run_dir]
    return linear


def test_notebooks_are_stored_without_outputs_and_with_one_parameters_cell() -> None:
    assert [p.stem for p in NOTEBOOKS] == ["10_pretrain", "20_export", "30_linear_eval", "40_augmentations",
                                           "50_ablation", "90_report"]
    for path in NOTEBOOKS:
        nb = nbformat.read(str(path), as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == "python3", path.name
        assert "papermill" not in nb.metadata, path.name
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs"
        assert all("papermill" not in c.metadata and "execution" not in c.metadata for c in nb.cells), path.name
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and tagged[0] is code[0], f"{path.name}: the first code cell is the parameters cell"
        lines = [line for line in tagged[0].source.splitlines() if line.strip()]
        declared = papermill.inspect_notebook(str(path))
        assert len(declared) == len(lines), f"{path.name}: every line an annotated literal papermill can read"
        assert all(p["help"] and p["inferred_type_name"] != "None" for p in declared.values()), path.name


@pytest.mark.slow
def test_pretrain_notebook_launches_a_run_and_plots_its_metrics(pretrained: notebook.NotebookRun,
                                                                results: Path) -> None:
    run_dir = pretrained.run_dir
    assert run_dir.parent == results and pretrained.output == run_dir / "10_pretrain.ipynb"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["kind"], summary["status"], summary["total_steps"]) == ("pretrain", "finished", TINY_STEPS)
    assert summary["notebook"]["status"] == "finished" and summary["notebook"]["parameters"]["epochs"] == 2
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == TINY_STEPS  # log interval 1
    assert_clean(pretrained.output)
    progress = "".join(o.text for o in outputs(pretrained.output, "stream"))
    assert f"step {TINY_STEPS}/{TINY_STEPS} " in progress and "finished:" in progress  # the launcher's live lines
    assert images(pretrained.output) == 1


@pytest.mark.slow
def test_export_notebook_extracts_and_converts_the_chosen_run(pretrained: notebook.NotebookRun,
                                                             results: Path) -> None:
    run = notebook.run_notebook("notebooks/20_export.ipynb", {"run": pretrained.run_dir.name}, results_dir=results)
    assert_clean(run.output)
    export = pretrained.run_dir / "export"
    checkpoint = paddle.load(str(pretrained.run_dir / "checkpoints" / f"step_{TINY_STEPS:08d}.pdckpt"),
                             return_numpy=True)["model"]
    online = {k[len("online.encoder."):]: v for k, v in checkpoint.items() if k.startswith("online.encoder.")}
    extracted = paddle.load(str(export / "backbone.pdparams"), return_numpy=True)
    assert set(extracted) == set(online)
    np.testing.assert_array_equal(extracted["layer4.1.conv2.weight"], online["layer4.1.conv2.weight"])
    converted = paddle.load(str(export / "res18_ppclas.pdparams"), return_numpy=True)
    assert sorted(converted) == sorted(paddleclas_keys("res18"))
    np.testing.assert_array_equal(converted["stem.0.conv.weight"], online["conv1.weight"])
    np.testing.assert_array_equal(converted["blocks.7.conv1.conv.weight"], online["layer4.1.conv2.weight"])


@pytest.mark.slow
def test_linear_notebook_evaluates_the_run_with_knn_and_random_init(linear_run: Path,
                                                                   pretrained: notebook.NotebookRun,
                                                                   results: Path) -> None:
    summary = json.loads((linear_run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 2
    assert summary["pretrained"].endswith(f"step_{TINY_STEPS:08d}.pdckpt")
    assert {"knn_top1_k5", "knn_top1_k20"} <= set(summary) and "top1" in summary["random_init"]
    assert registry.read_run(linear_run)[1]["model"]["backbone"]["stem"] == "imagenet"  # the run's backbone
    runs = registry.load_runs(results)
    rows = runs[(runs["run_id"] == linear_run.name) & (runs["variant"] == "baseline")]
    assert len(rows) == 3 and set(rows["pretrain_run"]) == {pretrained.run_dir.name}
    assert rows["top1"].iloc[0] == pytest.approx(100 * summary["top1"])


@pytest.mark.slow
def test_augmentation_notebook_shows_the_settings_and_the_view_pairs(tmp_path: Path) -> None:
    run = notebook.run_notebook("notebooks/40_augmentations.ipynb",
                                {"image_size": 32, "pairs": 2, "overrides": ["augmentation.view2.solarize=0.5"]},
                                results_dir=tmp_path)
    assert_clean(run.output)
    assert images(run.output) == 2  # the photo, the pairs
    tables = [o["data"]["text/html"] for o in outputs(run.output) if "text/html" in o.get("data", {})]
    assert any("solarise (probability)" in t and "0.50" in t for t in tables)




@pytest.mark.slow
def test_ablation_notebook_runs_a_grid_and_sets_measured_beside_paper_deltas(tmp_path: Path) -> None:
    grid = tmp_path / "tiny.yaml"
    grid.write_text(TINY_GRID)
    run = notebook.run_notebook("notebooks/50_ablation.ipynb", {
        "grids": [str(grid)], "variants": [], "seeds": [0, 1], "max_parallel": 1, "overrides": ["epochs=1"],
        "linear_overrides": ["epochs=2", "linear_eval.random_init_baseline=False", "linear_eval.knn_k=[5]"]},
        results_dir=tmp_path)
    assert_clean(run.output)
    assert images(run.output) == 1  # measured vs paper deltas
    runs = registry.load_runs(tmp_path)
    linear = runs[runs["evaluation"] == registry.LINEAR]
    assert sorted(linear["run_id"]) == [f"ablation-{v}-linear-s{s}" for v in ("baseline", "no_blur") for s in (0, 1)]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs(run.output))
    assert "remove blur" in html and "sign_agrees" in html and "kendall_tau_b" in html


@pytest.mark.slow
def test_report_notebook_builds_a_self_contained_html(linear_run: Path, results: Path, tmp_path: Path) -> None:
    folder = tmp_path / "results"
    shutil.copytree(results, folder)
    pretrain_id = json.loads((linear_run / "summary.json").read_text())["pretrained"].split(os.sep)[-3]
    base = json.loads((folder / pretrain_id / "summary.json").read_text())
    for seed in (1, 2):  # an ablation variant over two seeds, and a failed run
        fake = folder / f"29990101-00000{seed}-pretrain-fake"
        fake.mkdir()
        (fake / "summary.json").write_text(json.dumps({**base, "run_id": fake.name, "variant": "no_blur",
                                                       "seed": seed, "notebook": None}))
    failed = folder / "29990101-000009-pretrain-fake"
    failed.mkdir()
    (failed / "summary.json").write_text(json.dumps({"run_id": failed.name, "kind": "pretrain", "status": "failed",
                                                     "error": "RuntimeError: a fake failure"}))
    html = notebook.build_report(folder, tmp_path / "report.html")
    text = html.read_text()
    for section in REPORT_SECTIONS:
        assert f">{section}<" in text, section
    figures = len(re.findall(r'<img [^>]*src="data:image/png;base64,', text))
    assert figures >= 2  # training curves, throughput (and what-pretraining-bought when the run has a baseline)
    assert not re.findall(r'(?:src|href)\s*=\s*["\']?(?:https?:)?//', text)  # nothing fetched from elsewhere
    assert "<title>BYOL reproduction report</title>" in text and "<details>" in text
    assert text.index(">Findings<") < text.index(">Training curves<")
    for expected in ("72.50", "71.62", "side by side, not subtracted", "random init", "remove blur",
                     "RuntimeError: a fake failure", "29990101-000002-pretrain-fake</code>: no metrics logged"):
        assert expected in text, expected
    for unwanted in ("registry.load_runs(", "Traceback", "ccache", "Error</span>"):
        assert unwanted not in text, unwanted
    (report_run,) = [p for p in folder.iterdir() if (p / "90_report.ipynb").is_file()]
    assert json.loads((report_run / "summary.json").read_text())["status"] == "finished"
    if BROWSER is None:
        pytest.skip("no Chromium on this machine: the offline rendering was not checked (.ci/run installs it)")
    dom, requests = render_offline(html)
    assert requests == []  # the page asked for nothing over the network
    assert ">Findings<" in dom and len(re.findall(r"<img ", dom)) == figures


@pytest.mark.skipif(BROWSER is None, reason="no Chromium on this machine")
@pytest.mark.slow
def test_the_offline_render_check_catches_an_external_resource(tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text('<html><head><script src="https://cdn.example.org/x.js"></script></head>'
                    '<body><p>hello</p><img src="http://example.org/a.png"></body></html>')
    dom, requests = render_offline(page)
    assert "hello" in dom
    assert sorted(r.split()[1] for r in requests) == ["cdn.example.org:443", "http://example.org/a.png"]


def test_byol_report_names_a_missing_results_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["report", "--results", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --results {tmp_path / 'missing'}: no such folder"
    assert not (tmp_path / "missing").exists()


@pytest.mark.slow
def test_a_notebook_that_raises_is_recorded_as_failed(tmp_path: Path) -> None:
    nb = new_notebook(cells=[new_code_cell("x: int = 1  # a number"), new_code_cell("raise ValueError(f'boom {x}')")],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nb.cells[0].metadata["tags"] = ["parameters"]
    path = tmp_path / "bad.ipynb"
    nbformat.write(nb, str(path))
    with pytest.raises(notebook.NotebookError, match="ValueError: boom 2") as caught:
        notebook.run_notebook(path, {"x": 2}, results_dir=tmp_path / "results")
    summary = json.loads((caught.value.run_dir / "summary.json").read_text())
    assert (summary["kind"], summary["status"]) == ("notebook", "failed")
    assert summary["error"].startswith("ValueError: boom 2") and summary["notebook"]["parameters"] == {"x": 2}
    assert caught.value.output.is_file() and caught.value.output.parent == caught.value.run_dir
    (row,) = registry.load_runs(tmp_path / "results").to_dict("records")
    assert (row["kind"], row["status"], row["error"]) == ("notebook", "failed", summary["error"])


def test_unknown_parameters_are_rejected_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(notebook.UnknownParameterError, match=r"epoch \(did you mean epochs\?\)"):
        notebook.run_notebook("notebooks/10_pretrain.ipynb", {"epoch": 3}, results_dir=tmp_path)
    assert cli.main(["notebook", "notebooks/10_pretrain.ipynb", "-p", "learning_rate=0.1"]) == 2
    assert not list(tmp_path.iterdir()) and not (ROOT / "results" / "learning_rate").exists()
    with pytest.raises(ValueError, match="never go there"):
        notebook.run_notebook("notebooks/40_augmentations.ipynb", run_dir=NOTEBOOK_DIR / "out")


def test_command_line_parameters_keep_strings_raw() -> None:
    declared = notebook.declared_parameters("notebooks/10_pretrain.ipynb")
    assert notebook.parse_parameter("devices=0,1", declared) == ("devices", "0,1")
    assert notebook.parse_parameter("dataset=007", declared) == ("dataset", "007")
    assert notebook.parse_parameter("epochs=007", declared) == ("epochs", 7)
    assert notebook.parse_parameter("overrides=[seed=1, epochs=2]", declared) == ("overrides", ["seed=1", "epochs=2"])


def test_kernel_environment_is_quiet_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    before = dict(os.environ)
    with notebook.kernel_environment():
        assert "MPLBACKEND" not in os.environ and os.environ["TQDM_DISABLE"] == "1"
        assert os.environ["GLOG_minloglevel"] == "2"  # noqa: SIM112 (glog's name)
    assert dict(os.environ) == before


@pytest.mark.slow
def test_a_failed_notebook_does_not_unfinish_a_finished_run(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text(json.dumps({"run_id": "r", "kind": "pretrain", "status": "finished"}))
    entry = {"name": "10_pretrain", "status": "failed", "error": "KeyError: 'x' (cell 7)"}
    summary = notebook.record(tmp_path, entry)
    assert (summary["status"], summary["error"], summary["notebook"]) == ("finished", entry["error"], entry)
    (tmp_path / "summary.json").write_text(json.dumps({"run_id": "r", "kind": "pretrain", "status": "failed",
                                                       "error": "NonFiniteLossError: nan"}))
    summary = notebook.record(tmp_path, entry)
    assert (summary["status"], summary["error"]) == ("failed", "NonFiniteLossError: nan")
    (tmp_path / "summary.json").write_text(json.dumps({"run_id": "r", "kind": "pretrain", "status": "running"}))
    assert notebook.record(tmp_path, entry)["status"] == "failed"
    alone = tmp_path / "alone"
    alone.mkdir()
    assert notebook.record(alone, entry)["kind"] == "notebook"
    again = notebook.record(alone, {**entry, "status": "finished", "error": None, "wall_time_s": 2.5})
    assert (again["status"], again["error"], again["wall_time_s"]) == ("finished", None, 2.5)
    assert json.loads((alone / "notebook.json").read_text())["status"] == "finished"
