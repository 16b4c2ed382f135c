"""The package's shape: layers point one way (no import cycle, counting imports inside functions too) and every
module imports on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

PACKAGE = ROOT / "byol_lib"


def module_files() -> dict[str, Path]:
    files = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("byol_lib", *path.relative_to(PACKAGE).with_suffix("").parts)
        files[".".join(parts).removesuffix(".__init__")] = path
    return files


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source (module level or inside functions)."""
    files = module_files()
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("byol_lib"):
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    deps.add(submodule if submodule in files else node.module)
            elif isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names if alias.name.startswith("byol_lib")}
        graph[name] = deps - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None (depth-first search)."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node):], node]
        if node in done:
            return None
        for dep in sorted(graph.get(node, ())):
            if (cycle := visit(dep, [*path, node])) is not None:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        if (cycle := visit(start, [])) is not None:
            return cycle
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 30 and "byol_lib.train" in graph["byol_lib.launch"]
    assert find_cycle(graph) is None


def test_lower_layers_do_not_import_the_loop() -> None:
    """Collectives, schedules and the optimiser know nothing of training runs or launches."""
    graph = import_graph()
    for low in ("byol_lib.distributed", "byol_lib.plan", "byol_lib.optim", "byol_lib.loss", "byol_lib.ema"):
        assert not graph[low] & {"byol_lib.train", "byol_lib.launch", "byol_lib.cli", "byol_lib.pipeline"}, low


@pytest.mark.slow
def test_every_module_imports_on_its_own() -> None:
    """Each module imported first, with no other package module loaded (an import that works only after another
    module happened to be loaded fails here)."""
    names = sorted(module_files())
    script = (
        "import importlib, sys, traceback\n"
        f"failed = []\nfor name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'byol_lib' or m.startswith('byol_lib.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n        importlib.import_module(name)\n"
        "    except Exception:\n        failed.append(name + ': ' + traceback.format_exc(limit=1))\n"
        "print('\\n'.join(failed))\nsys.exit(1 if failed else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
