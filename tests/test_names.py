"""Each type name in seqd is defined once, so a name in a traceback, a log or a review
means one thing."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import seqd

ROOT = Path(seqd.__file__).parent
# A module-level `Name = Literal[...]` (or another generic) is a type alias: a type name too.
_ALIAS_HEADS = frozenset({"Literal", "Annotated", "Union", "Callable", "tuple", "dict", "list"})


def _type_names(tree: ast.Module) -> list[str]:
    names = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
            if (
                isinstance(target, ast.Name)
                and isinstance(value, ast.Subscript)
                and isinstance(value.value, ast.Name)
                and value.value.id in _ALIAS_HEADS
            ):
                names.append(target.id)
    return names


def test_no_type_name_is_defined_twice() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for path in sorted(ROOT.rglob("*.py")):
        for name in _type_names(ast.parse(path.read_text())):
            where[name].append(str(path.relative_to(ROOT)))
    assert {name: paths for name, paths in where.items() if len(paths) > 1} == {}
    assert "Store" in where and "KindSpec" in where  # (the walk found the modules)
