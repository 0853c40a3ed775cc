"""The layers point down: the import graph of `seqd`, read with ast.

Every import counts, those under `if TYPE_CHECKING:` and inside functions too: an import
moved into a function to dodge a cycle is still the dependency it was.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import seqd

ROOT = Path(seqd.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imported(name: str, path: Path) -> Iterator[str]:
    """The seqd modules `name` imports (a package's `__init__` when it names the package)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # `from seqd.store import keys` imports the module seqd.store.keys.
            targets = [
                f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            if target in MODULES and target != name:
                yield target


GRAPH = {name: set(_imported(name, path)) for name, path in MODULES.items()}


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_is_read() -> None:
    assert "seqd.store.context" in GRAPH["seqd.store.db"]
    assert "seqd.kinds" in GRAPH["seqd.models"]
    assert "seqd.store.keys" in GRAPH["seqd.store.scripts"]  # `from seqd.store import keys`


def test_the_store_imports_neither_events_nor_engine_nor_api() -> None:
    wrong = {
        (name, target)
        for name, targets in GRAPH.items()
        if _in(name, "seqd.store")
        for target in targets
        if any(_in(target, up) for up in ("seqd.events", "seqd.engine", "seqd.api"))
    }
    assert wrong == set()


def test_only_the_api_and_the_wiring_import_the_api() -> None:
    wrong = {
        (name, target)
        for name, targets in GRAPH.items()
        if not (_in(name, "seqd.api") or name == "seqd.service")
        for target in targets
        if _in(target, "seqd.api")
    }
    assert wrong == set()


def test_the_floor_imports_no_layer_above_it() -> None:
    """The shared vocabulary (kinds, templates, ids, errors, the models) sits below every
    layer: it imports none of them."""
    floor = ("seqd.kinds", "seqd.templates", "seqd.ids", "seqd.event_ids", "seqd.errors")
    floor += ("seqd.models", "seqd.event_models", "seqd.event_names")
    layers = ("seqd.store", "seqd.engine", "seqd.events", "seqd.api", "seqd.channels")
    layers += ("seqd.lifecycle",)
    wrong = {
        (name, target)
        for name in floor
        for target in GRAPH[name]
        if any(_in(target, layer) for layer in layers)
    }
    assert wrong == set()


# The packages from the bottom up: each imports only packages of a lower rank (and the floor
# and the top-level modules).
RANKS = {
    "seqd.store": 1,
    "seqd.channels": 1,
    "seqd.lifecycle": 2,
    "seqd.events": 2,
    "seqd.engine": 3,
    "seqd.api": 4,
}


def _package(module: str) -> str | None:
    return next((p for p in RANKS if _in(module, p)), None)


def test_the_packages_import_only_packages_below_them() -> None:
    wrong = set()
    for name, targets in GRAPH.items():
        own = _package(name)
        if own is None:
            continue
        for target in targets:
            other = _package(target)
            if other is not None and other != own and RANKS[other] >= RANKS[own]:
                wrong.add((name, target))
    assert wrong == set()


def test_no_import_cycle_among_seqd_modules() -> None:
    """Tarjan's strongly connected components: every one is a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert cycles == []
