"""The package's shape: every module imports on its own, in-package imports sit at the top of each file and form
no cycle, and packages import only what the layer table ``ALLOWED_IMPORTS`` allows (docs/architecture.md shows the
same table). The checks walk ``src/probclip``, so modules added later are checked too."""

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


#: The foundations: small modules every layer may use.
FOUNDATIONS = frozenset({"embedding", "errors", "plotting", "jsonsafe", "terminal", "limits", "devices",
                         "config_fields", "textfiles", "image_decoding", "transforms", "distances", "process_group",
                         "hierarchy_head"})

#: Which top-level package (or single module) of probclip may import which others. ``"probclip"`` is the package's
#: ``__init__``. A package or module missing from this table fails ``test_every_package_is_in_the_layer_table``.
ALLOWED_IMPORTS: dict[str, frozenset[str]] = {
    # foundations
    "embedding": frozenset(),
    "errors": frozenset(),
    "plotting": frozenset(),
    "jsonsafe": frozenset(),
    "terminal": frozenset(),
    "limits": frozenset({"errors"}),
    "devices": frozenset({"errors"}),
    "config_fields": frozenset({"errors"}),
    "textfiles": frozenset({"errors", "limits"}),
    "image_decoding": frozenset({"errors", "limits"}),
    "transforms": frozenset({"image_decoding", "errors", "limits"}),
    "distances": frozenset({"embedding"}),
    "hierarchy_head": frozenset({"embedding", "errors"}),
    "process_group": frozenset({"devices", "errors"}),
    # the command dispatcher (it reads the package's version)
    "cli": frozenset({"probclip", "errors", "terminal"}),
    # building blocks
    "models": FOUNDATIONS | {"cli"},
    "tokenizers": FOUNDATIONS | {"models"},
    "losses": FOUNDATIONS,
    "data": FOUNDATIONS,
    "integrations": FOUNDATIONS | {"models", "tokenizers"},
    # workflows
    "eval": FOUNDATIONS | {"cli", "models", "tokenizers", "data"},
    "synthetic": FOUNDATIONS | {"cli", "data", "eval"},
    "train": FOUNDATIONS | {"cli", "models", "tokenizers", "data", "losses", "eval", "synthetic"},
    "search": FOUNDATIONS | {"cli", "models", "tokenizers", "data"},
    "serve": FOUNDATIONS | {"cli", "search"},
    # jobs over collections and shards (its known-noise demo trains a quickstart model)
    "curate": FOUNDATIONS | {"cli", "models", "tokenizers", "data", "search", "eval", "train", "synthetic",
                             "quickstart"},
    # entry points
    "embed": frozenset({"search"}),
    "quickstart": FOUNDATIONS | {"cli", "tokenizers", "train", "synthetic", "eval"},
    "probclip": FOUNDATIONS | {"models", "tokenizers"},
}

#: Single modules allowed more than their package: the search package's one glue module to the synthetic world, and
#: the eval command, whose hierarchy task runs on the synthetic world when no --data is given.
ALLOWED_EXTRA: dict[str, frozenset[str]] = {
    "probclip.search.quickstart": frozenset({"synthetic"}),
    "probclip.eval.cli": frozenset({"synthetic"}),
}

#: Packages that must not load, even indirectly, when the serving side of search is imported.
NEVER_LOADED_BY_SEARCH = ("probclip.train", "probclip.eval", "probclip.synthetic", "probclip.quickstart")


def _layer(module: str) -> str:
    """``probclip.search.index`` -> ``search``; ``probclip`` (the package's ``__init__``) -> ``probclip``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PACKAGE


def _layer_violations(modules: dict, allowed: dict[str, frozenset[str]],
                      extra: dict[str, frozenset[str]]) -> list[str]:
    found = []
    for name, (path, is_pkg) in modules.items():
        source = _layer(name)
        permitted = allowed.get(source, frozenset()) | extra.get(name, frozenset())
        for target, line, _ in _imports(name, path, is_pkg, modules):
            layer = _layer(target)
            if layer != source and layer not in permitted:
                found.append(f"{path.relative_to(PACKAGE_DIR.parent)}:{line} ({source}) imports {target} ({layer})")
    return found


def test_layer_check_finds_a_forbidden_import():
    modules = _module_files()
    strict = {**ALLOWED_IMPORTS, "search": frozenset({"errors"})}
    found = _layer_violations(modules, strict, {})
    assert any("(search) imports probclip.models" in line for line in found)
    assert any("search/quickstart.py" in line and "(synthetic)" in line for line in found)
    assert not _layer_violations(modules, ALLOWED_IMPORTS, ALLOWED_EXTRA)


def test_every_package_is_in_the_layer_table():
    layers = {_layer(name) for name in _module_files()}
    assert layers - set(ALLOWED_IMPORTS) == set(), "add these packages to ALLOWED_IMPORTS (and docs/architecture.md)"
    assert set(ALLOWED_IMPORTS) - layers == set(), "ALLOWED_IMPORTS names packages that no longer exist"
    assert all(targets <= set(ALLOWED_IMPORTS) for targets in ALLOWED_IMPORTS.values())


def test_packages_import_only_what_the_layer_table_allows():
    violations = _layer_violations(_module_files(), ALLOWED_IMPORTS, ALLOWED_EXTRA)
    assert not violations, "imports the layer table does not allow:\n" + "\n".join(violations)


def test_search_and_serve_load_no_training_or_evaluation_code():
    code = ("import sys, probclip.search, probclip.search.searcher, probclip.search.embed, probclip.search.index, "
            "probclip.serve.app; print(' '.join(sorted(m for m in sys.modules if m.startswith('probclip.'))))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(PACKAGE_DIR.parent)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = done.stdout.split()
    assert "probclip.serve.app" in loaded and "probclip.search.searcher" in loaded
    bad = [m for m in loaded if m.startswith(NEVER_LOADED_BY_SEARCH)]
    assert not bad, f"importing search and serve loads training or evaluation code: {bad}"


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
