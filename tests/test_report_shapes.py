"""The report notebook's code runs on every shape of results folder: empty, one run, failed runs only, no
ablations, one profile with a study, several profiles.

The notebook's code cells are executed in this process (fast: no kernel), with its ``display`` captured; the
kernel-based build of the HTML is tested in test_notebooks.py.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import IPython.display
import numpy as np
import pytest
from matplotlib.figure import Figure

from .conftest import ROOT, write_ablation_runs, write_run
from .test_findings import main_runs, write_study

REPORT = ROOT / "notebooks" / "90_report.ipynb"


def run_report_cells(results: Path, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every object the report notebook displays for ``results``, in order."""
    shown: list[Any] = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **_: shown.extend(objs))
    nb = json.loads(REPORT.read_text())
    namespace: dict[str, Any] = {}
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        if "parameters" in cell["metadata"].get("tags", []):
            exec(source, namespace)  # the declared defaults, then this folder
            namespace["results_dir"] = str(results)
            continue
        tree = ast.parse("\n".join(line for line in source.splitlines() if not line.startswith("%")))
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, REPORT.name, "exec"), namespace)
        if last is not None:  # a cell's last expression is displayed, as in a kernel
            result = eval(compile(ast.Expression(last.value), REPORT.name, "eval"), namespace)
            if result is not None:
                shown.append(result)
    return shown


def text_of(shown: list[Any]) -> str:
    parts = []
    for obj in shown:
        if hasattr(obj, "to_html"):  # a Styler (its .data is the frame)
            parts.append(obj.to_html())
        elif hasattr(obj, "data"):  # Markdown, HTML
            parts.append(str(obj.data))
    return "\n".join(parts)


def empty(results: Path) -> None:
    results.mkdir(exist_ok=True)


def one_run(results: Path) -> None:
    write_run(results, "only-pretrain", {"kind": "pretrain", "status": "finished", "seed": 0, "epochs": 2,
                                         "dataset": "Synthetic", "final": {"online_accuracy": 0.4}})


def failed_only(results: Path) -> None:
    write_run(results, "broken-pretrain", {"kind": "pretrain", "status": "failed", "error": "RuntimeError: boom"})
    write_run(results, "broken-linear", {"kind": "linear", "status": "failed", "error": "ValueError: no data"})


def no_ablations(results: Path) -> None:
    labels = np.arange(200) % 10
    wrong = (labels + 1) % 10
    byol, random = np.where(np.arange(200) < 120, labels, wrong), np.where(np.arange(200) < 100, labels, wrong)
    main_runs(results, 0, 0.6, 0.5, predictions={"labels": labels, "linear": byol, "random_init_linear": random})


def one_profile_with_study(results: Path) -> None:
    for seed in (0, 1):
        main_runs(results, seed, 0.6 + 0.01 * seed, 0.5)
        for variant, top1 in (("baseline", 0.6), ("no_blur", 0.55 + 0.02 * seed)):
            write_ablation_runs(results, "default-ablation", variant, seed, top1)
    write_study(results)


def several_profiles(results: Path) -> None:
    main_runs(results, 0, 0.6, 0.5)
    main_runs(results, 0, 0.45, 0.48, dataset="CIFAR10", epochs=3)


SHAPES: dict[str, Callable[[Path], None]] = {"empty": empty, "one run": one_run, "failed only": failed_only,
                                             "no ablations": no_ablations, "one profile": one_profile_with_study,
                                             "several profiles": several_profiles}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_report_runs_on_every_shape_of_results(shape: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "results"
    SHAPES[shape](results)
    shown = run_report_cells(results, monkeypatch)
    text = text_of(shown)
    assert "Generated " in text and "over `" in text
    if shape in ("empty", "one run"):
        assert "No finding yet" in text
    if shape == "failed only":
        assert "RuntimeError: boom" in text and "2 run(s) did not finish" in text
    if shape == "no ablations":
        assert "BYOL beats a random-init encoder" in text and "200 validation images, one seed" in text
        assert "No paired augmentation study yet" in text
    if shape == "one profile":
        assert "remove colour" in text and "PASSL with its EMA hook" in text and "Caveat." in text
        assert "kNN k=20" in text and "online probe" in text
        assert sum(isinstance(s, Figure) for s in shown) >= 3  # gains, augmentations, PASSL deviations
    if shape == "several profiles":
        assert "Synthetic, resnet18, 8 epochs" in text and "CIFAR10, resnet18, 3 epochs" in text
        gains = next(s for s in shown if isinstance(s, Figure))  # one panel per budget, never two in one
        assert sorted(ax.get_title() for ax in gains.axes) == ["CIFAR10, resnet18, 3 epochs",
                                                                "Synthetic, resnet18, 8 epochs"]
        assert text.index("does not beat") < text.index("above a random-init encoder, without an interval")
