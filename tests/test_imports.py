"""The layout rules of issue 22: no import cycles, every module under 300 lines."""

from __future__ import annotations

import ast
import graphlib
import itertools
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("worker", "models", "bench")
MAX_LINES = 300

#: Cycles known today, each as one edge (importer, imported) to drop, so any other still fails.


def _modules(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Every module under ``packages`` by dotted name (a package by its ``__init__.py``)."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module loads (and ``if TYPE_CHECKING:`` ones, which mypy
    follows): everything outside function bodies."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append(child)
            pending.append(child)
    return found


def _base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative ones resolved)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    anchor = package[: len(package) - (node.level - 1)]
    return ".".join([*anchor, *([node.module] if node.module else [])])


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Each module and the modules of ours it imports at module level."""
    modules = _modules(root, packages)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in _top_level_imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _base(name, path.name == "__init__.py", node)
                # ``from x import y``: the submodule x.y when there is one, else x itself
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            graph[name] |= {target for target in targets if target in modules}
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles graphlib finds, one after another (each broken at one edge), each as
    ``[a, b, ..., a]``: a imports b, and so on."""
    graph = {name: set(targets) for name, targets in graph.items()}
    found: list[list[str]] = []
    while True:
        try:
            graphlib.TopologicalSorter(graph).prepare()
            return found
        except graphlib.CycleError as error:
            # graphlib's list runs from a node to the next that names it among its own
            cycle = list(reversed(error.args[1]))
            assert cycle[1] in graph[cycle[0]], cycle
            graph[cycle[0]].discard(cycle[1])
            found.append(cycle)


def test_the_import_graph_resolves_relative_from_and_package_imports(tmp_path: Path) -> None:
    files = {
        "pkg/__init__.py": "from .a import x\n",
        "pkg/a.py": "from . import b\nx = 1\ndef later():\n    import pkg.c\n",
        "pkg/b.py": "import os\nfrom pkg.sub import d\nfrom typing import TYPE_CHECKING\n",
        "pkg/c.py": "class C:\n    from pkg import b\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/d.py": "try:\n    from ..a import x\nexcept ImportError:\n    pass\n",
    }
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    graph = import_graph(tmp_path, ("pkg",))
    assert graph == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.b"},  # not pkg.c: imported inside a function
        "pkg.b": {"pkg.sub.d"},
        "pkg.c": {"pkg.b"},  # a class body runs at import
        "pkg.sub": set(),
        "pkg.sub.d": {"pkg.a"},
    }
    (found,) = cycles(graph)
    assert sorted(found[:-1]) == ["pkg.a", "pkg.b", "pkg.sub.d"]
    assert all(b in graph[a] for a, b in itertools.pairwise(found)), found


def test_there_are_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in found)


def test_every_module_is_under_300_lines() -> None:
    lines = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    offenders = sorted(f"{name}: {count}" for name, count in lines.items() if count >= MAX_LINES)
    assert not offenders, f"modules of {MAX_LINES} lines or more: {offenders}"


#: the longest function body we keep (migrations are generated history, not code we edit)
MAX_FUNCTION_LINES = 60


def test_no_function_is_over_60_lines() -> None:
    offenders = []
    for name, path in _modules().items():
        if name.startswith("migrations.versions"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    offenders.append(f"{name}.{node.name}: {length}")
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines: {offenders}"
