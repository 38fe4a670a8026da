"""The package's architecture: the method layer never imports the study layer, no import
cycles anywhere (``TYPE_CHECKING`` imports included), no import of ``bench`` from nxmlab, no
module far over 500 lines, and no branching on method names outside the registry."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nxmlab"


def _module(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _nodes(tree: ast.AST):
    """Every node, the bodies of ``if TYPE_CHECKING:`` blocks included: a cycle closed only
    for the type checker still leaves its modules without an order (issue #30)."""
    return ast.walk(tree)


def _imports(path: Path) -> set[str]:
    """Every nxmlab module ``path`` imports: at module level, inside functions, or for type checking."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("nxmlab")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("nxmlab"):
                continue
            found.add(target)
            for alias in node.names:  # `from . import study` imports a module
                if (PACKAGE.parent / Path(*f"{target}.{alias.name}".split("."))).with_suffix(".py").exists() or \
                        (PACKAGE.parent / Path(*f"{target}.{alias.name}".split("."))).is_dir():
                    found.add(f"{target}.{alias.name}")
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {t for t in _imports(path) if t in modules and t != name} for name, path in modules.items()}


def test_method_layer_never_imports_the_study():
    graph = _graph()
    # nxmlab/__main__.py is `python -m nxmlab`, the command line's entry point: it runs only under -m
    method = [m for m in graph if not m.startswith("nxmlab.study") and m != "nxmlab.__main__"]
    assert "nxmlab.nxm" in method and "nxmlab.admm" in method
    offenders = {m: sorted(t for t in graph[m] if t.startswith("nxmlab.study")) for m in method}
    assert not {m: t for m, t in offenders.items() if t}, offenders
    # and at run time: importing the public API loads no study module
    code = "import sys, nxmlab; print(sorted(m for m in sys.modules if m.startswith('nxmlab.study')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_no_import_cycle_anywhere():
    graph = _graph()
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    """The test above can fail: the same code on a package with a cycle reports it."""
    pkg = tmp_path / "nxmlab"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    graph = _graph()
    assert graph["nxmlab.a"] == {"nxmlab.b"} and graph["nxmlab.b"] == {"nxmlab", "nxmlab.a"}
    assert graph["nxmlab.c"] == {"nxmlab.a"}  # type-checking imports count


def _bench_imports(path: Path) -> list[str]:
    """``bench`` imports of ``path``: statements anywhere, and ``import_module``/``__import__`` calls."""
    found = []
    for node in _nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "bench"]
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "bench":
            found.append(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) and \
                str(node.args[0].value).split(".")[0] == "bench":
            found.append(node.args[0].value)
    return found


def test_nothing_under_nxmlab_imports_bench():
    """The benchmarks use nxmlab, never the other way round (issue #30): what both need
    lives in nxmlab (e.g. the study-cost projection)."""
    offenders = {str(p.relative_to(PACKAGE.parent)): _bench_imports(p) for p in PACKAGE.rglob("*.py")}
    assert not {p: b for p, b in offenders.items() if b}, offenders


def test_the_bench_check_finds_a_bench_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import importlib\n\ndef f():\n    from bench.study_cost import live_projection\n"
                      "    import bench\n    return importlib.import_module('bench.common')\n")
    assert _bench_imports(module) == ["bench.study_cost", "bench", "bench.common"]


#: The method registry: the one module that may branch on a method's name.
REGISTRY = Path("study", "train", "methods.py")


def test_no_branching_on_method_names_outside_the_registry():
    assert (PACKAGE / REGISTRY).is_file()
    pattern = re.compile(r"method\s*==|method\s+in\s*\(|method\s*!=")
    offenders = [f"{p.relative_to(PACKAGE.parent)}:{i}" for p in PACKAGE.rglob("*.py")
                 if p.relative_to(PACKAGE) != REGISTRY
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders


# --- the study layer's folders (issue #30) ----------------------------------------------

STUDY = PACKAGE / "study"
FOLDERS = ("data", "train", "results", "studies", "plots", "cli")


def test_the_study_layer_is_six_folders_and_two_shared_modules():
    assert sorted(p.name for p in STUDY.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(FOLDERS)
    assert sorted(p.name for p in STUDY.glob("*.py")) == ["__init__.py", "__main__.py", "catalog.py", "inputs.py"]
    doc = (STUDY / "__init__.py").read_text()
    for folder in FOLDERS:  # the map of the layer names every folder
        assert f"``{folder}/``" in doc, folder


def test_the_shared_modules_import_nothing_of_the_study():
    """``catalog`` and ``inputs`` sit below every folder: the standard library only."""
    graph = _graph()
    for name in ("nxmlab.study.catalog", "nxmlab.study.inputs"):
        assert not graph[name], (name, graph[name])


#: The folders' order (``nxmlab/study/__init__.py``): a module imports its own folder or one ranked lower.
RANKS = {"catalog": 0, "inputs": 0, "data": 1, "train": 2, "results": 2, "plots": 3, "studies": 4, "cli": 5,
         "__main__": 6}


def test_folders_import_down_their_order():
    """cli -> studies -> plots -> train, results -> data -> inputs, catalog; ``train`` and
    ``results`` use each other (the store, the registry), no other pair does."""
    def part(module: str) -> str:
        return module.split(".")[2]

    graph = _graph()
    study = [m for m in graph if m.startswith("nxmlab.study.")]
    assert {part(m) for m in study} == set(RANKS)
    upward = sorted(f"{a} -> {b}" for a in study for b in graph[a] if b.startswith("nxmlab.study.")
                    and RANKS[part(b)] > RANKS[part(a)])
    assert not upward, upward


def test_every_nxmlab_import_names_a_module_that_exists():
    """The old flat names still import (``nxmlab.study.MOVED``), but not from inside nxmlab:
    there they would hide edges from the cycle check above."""
    from nxmlab.study import MOVED

    bad = []
    for path in PACKAGE.rglob("*.py"):
        for target in _imports(path):
            where = PACKAGE.parent / Path(*target.split("."))
            if not (where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()):
                bad.append(f"{path.relative_to(PACKAGE.parent)}: {target}")
        package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
        for node in _nodes(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = package.split(".")[: len(package.split(".")) - max(node.level - 1, 0)] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            old = {a.name for a in node.names} & set(MOVED)
            if target == "nxmlab.study" and old:
                bad.append(f"{path.relative_to(PACKAGE.parent)}: from nxmlab.study import {sorted(old)}")
    assert not bad, bad


def test_only_the_plots_folder_draws():
    """A figure is drawn in ``study/plots/`` (the answer to "where is that plot?")."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.is_relative_to(STUDY / "plots"):
            continue
        for node in _nodes(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(PACKAGE.parent)}: {n}" for n in names
                          if n.split(".")[0] in ("matplotlib", "seaborn")]
    assert not offenders, offenders


def test_old_flat_names_are_the_moved_modules():
    """``from nxmlab.study import frames``, ``import nxmlab.study.frames`` and ``from
    nxmlab.study.store import RunFolder`` keep working after the regrouping, as the same
    module objects, each keeping its own name and spec."""
    import importlib

    import nxmlab.study as study

    assert len(study.MOVED) == 28  # with data, plots and cli (folders now): nxmlab 0.2's 33 modules
    for old, new in study.MOVED.items():
        module = importlib.import_module(f"nxmlab.study.{new}")
        exec(f"from nxmlab.study import {old} as imported", namespace := {})
        assert namespace["imported"] is module and getattr(study, old) is module, old
        assert importlib.import_module(f"nxmlab.study.{old}") is module, old
        assert module.__spec__.name == module.__name__ == f"nxmlab.study.{new}", old
    from nxmlab.study.results.store import RunFolder
    from nxmlab.study.store import RunFolder as Old

    assert Old is RunFolder


def test_import_nxmlab_study_imports_no_module_until_asked():
    code = ("import sys, nxmlab.study; before = sorted(m for m in sys.modules if m.startswith('nxmlab.study.')); "
            "import nxmlab.study.trainhelp as old; from nxmlab.study.cli import trainhelp; "
            "print(before, old is trainhelp, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)}).stdout
    assert out.strip() == "[] True False"


def test_old_module_names_answered_by_their_folders():
    """``data``, ``plots`` and ``cli`` were modules and are folders now: their packages answer
    the old module's public names, and ``plots`` every plotting module's public ones."""
    import importlib

    from nxmlab.study import cli, data, plots
    from nxmlab.study.cli import commands
    from nxmlab.study.data import glue
    from nxmlab.study.plots import core

    assert all(getattr(data, name) is getattr(glue, name) for name in glue.__all__)
    assert all(getattr(cli, name) is getattr(commands, name) for name in commands.__all__)
    assert cli.UsageError is commands.UsageError and plots.rho_ticks is core.rho_ticks
    assert plots.SCORE_AXIS == core.SCORE_AXIS
    assert all(getattr(plots, name) is getattr(core, name) for name in core.__all__)
    seen = set(core.__all__)
    for module, names in plots.LAZY.items():
        assert names == tuple(importlib.import_module(f"nxmlab.study.plots.{module}").__all__), module
        assert not seen & set(names), (module, seen & set(names))  # one name, one function
        seen |= set(names)
        assert all(getattr(plots, n) is getattr(getattr(plots, module), n) for n in names)
    from nxmlab.study import tuning
    from nxmlab.study.plots.tuning import plot_tuning

    assert tuning.plot_tuning is plot_tuning  # drawn in plots/ now, still answered where it was


def test_no_module_over_about_500_lines():
    sizes = {str(p.relative_to(PACKAGE.parent)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert not {p: n for p, n in sizes.items() if n > 520}, sizes


def test_public_api_is_importable_from_the_package():
    import nxmlab

    for name in ("NxM", "nxm_mask", "project", "is_nxm", "compress", "decompress", "ADMM", "select_targets",
                 "apply_masks"):
        assert hasattr(nxmlab, name), name
