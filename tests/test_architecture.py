"""The package's shape: every module imports on its own, in-package imports sit at the top of each file and form
no cycle. The checks walk ``src/probclip``, so modules added later are checked too."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import probclip

PACKAGE = "probclip"
PACKAGE_DIR = Path(probclip.__file__).resolve().parent


def _module_files() -> dict[str, tuple[Path, bool]]:
    """``{"probclip.x.y": (path, is_package)}`` for every ``.py`` file of the package (``__main__`` excluded)."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue  # running it is its purpose; importing it would start a command
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def _is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(module: str, path: Path, is_package: bool, modules: dict) -> list[tuple[str, int, bool]]:
    """In-package modules imported by ``module``: ``(target module, line, at top level)``.

    ``from .x import name`` points at the submodule ``x.name`` when there is one, else at ``x`` (its
    ``__init__`` for a package). Imports under ``if TYPE_CHECKING:`` are not run and are left out.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if _is_type_checking_block(node):
            skipped.update(id(child) for child in ast.walk(node))
    top_level: set[int] = set()
    pending = list(tree.body)
    while pending:  # module level, including the bodies of module-level if / try blocks
        node = pending.pop()
        top_level.add(id(node))
        if isinstance(node, (ast.If, ast.Try)):
            pending.extend(node.body + node.orelse + getattr(node, "finalbody", []))
            pending.extend(stmt for handler in getattr(node, "handlers", []) for stmt in handler.body)
    found = []
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = ".".join(base[: len(base) - node.level + 1])
                source = f"{parent}.{node.module}" if node.module else parent
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
        else:
            continue
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                found.append((target, node.lineno, id(node) in top_level))
    return found


def _import_graph() -> dict[str, set[str]]:
    modules = _module_files()
    return {
        name: {target for target, _, _ in _imports(name, path, is_pkg, modules) if target != name}
        for name, (path, is_pkg) in modules.items()
    }


def _find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _find_cycles(graph) == [["a", "b", "c"]]
    assert _find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_the_package():
    graph = _import_graph()
    assert len(graph) > 50 and "probclip.models.factory" in graph
    cycles = _find_cycles(graph)
    detail = [" -> ".join(c) + "  edges: " + str({m: sorted(graph[m] & set(c)) for m in c}) for c in cycles]
    assert not cycles, "import cycles inside probclip:\n" + "\n".join(detail)


def test_in_package_imports_sit_at_the_top_of_each_file():
    modules = _module_files()
    nested = [
        f"{path.relative_to(PACKAGE_DIR.parent)}:{line} imports {target}"
        for name, (path, is_pkg) in modules.items()
        for target, line, at_top in _imports(name, path, is_pkg, modules)
        if not at_top
    ]
    assert not nested, "in-package imports inside functions or classes (move them to the top):\n" + "\n".join(nested)


_IMPORT_EACH = """
import importlib, json, sys, traceback
failures = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "probclip" or m.startswith("probclip.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failures[name] = traceback.format_exc(limit=-3)
print(json.dumps(failures))
"""


def test_every_module_imports_on_its_own():
    names = sorted(_module_files())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(PACKAGE_DIR.parent)}
    done = subprocess.run([sys.executable, "-c", _IMPORT_EACH, json.dumps(names)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    failures = json.loads(done.stdout.strip().splitlines()[-1])
    assert not failures, "modules that fail to import on their own:\n" + "\n".join(
        f"{name}:\n{tb}" for name, tb in failures.items()
    )
