"""The package's architecture: the method layer never imports the study layer, no import
cycles anywhere (``TYPE_CHECKING`` imports included), no import of ``bench`` from nxmlab, no
module far over 500 lines, and no branching on method names outside the registry."""

from __future__ import annotations

import ast
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


def test_no_branching_on_method_names_outside_the_registry():
    pattern = re.compile(r"method\s*==|method\s+in\s*\(|method\s*!=")
    offenders = [f"{p.relative_to(PACKAGE.parent)}:{i}" for p in PACKAGE.rglob("*.py") if p.name != "methods.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders


def test_no_module_over_about_500_lines():
    sizes = {str(p.relative_to(PACKAGE.parent)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert not {p: n for p, n in sizes.items() if n > 520}, sizes


def test_public_api_is_importable_from_the_package():
    import nxmlab

    for name in ("NxM", "nxm_mask", "project", "is_nxm", "compress", "decompress", "ADMM", "select_targets",
                 "apply_masks"):
        assert hasattr(nxmlab, name), name
