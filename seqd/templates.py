"""Step templates: `{{first_name}}`, `{{attributes.company}}`, `{{metadata.source|there}}`.

A template is parsed once when its sequence is saved (bad syntax is a 422 naming the
step) and rendered per send. A variable with no value and no fallback raises
`MissingVariable`: a message is never sent with an empty hole in it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

CONTACT_FIELDS = frozenset({"first_name", "last_name", "phone", "email", "timezone", "external_id"})
NESTED_ROOTS = frozenset({"attributes", "metadata"})
_TOKEN = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_-]+)*$")


class TemplateError(ValueError):
    """The template cannot be parsed; the message says where and why."""


class MissingVariable(LookupError):
    def __init__(self, variable: str) -> None:
        super().__init__(variable)
        self.variable = variable


# A parsed template: literal strings and (path, fallback) variables, in order.
Part = str | tuple[tuple[str, ...], str | None]


@lru_cache(maxsize=4096)
def parse(template: str) -> tuple[Part, ...]:
    parts: list[Part] = []
    pos = 0
    for match in _TOKEN.finditer(template):
        literal = template[pos : match.start()]
        if "{{" in literal or "}}" in literal:
            raise TemplateError(f"unbalanced braces near offset {pos}")
        if literal:
            parts.append(literal)
        inner = match.group(1)
        name, sep, fallback = inner.partition("|")
        name = name.strip()
        if not _NAME.match(name):
            raise TemplateError(f"'{{{{{inner}}}}}' is not a variable name")
        path = tuple(name.split("."))
        if path[0] in NESTED_ROOTS:
            if len(path) < 2:
                raise TemplateError(f"'{name}' needs a key, like {path[0]}.company")
        elif path[0] not in CONTACT_FIELDS or len(path) > 1:
            raise TemplateError(
                f"unknown variable '{name}': use a contact field "
                f"({', '.join(sorted(CONTACT_FIELDS))}), attributes.<key> or metadata.<key>"
            )
        parts.append((path, fallback.strip() if sep else None))
        pos = match.end()
    tail = template[pos:]
    if "{{" in tail or "}}" in tail:
        raise TemplateError(f"unbalanced braces near offset {pos}")
    if tail:
        parts.append(tail)
    return tuple(parts)


def roots(*templates: str | None) -> set[str]:
    """The first name of every variable the templates use (`attributes` for
    attributes.company): what a message of them reads."""
    out: set[str] = set()
    for template in templates:
        if template:
            for part in parse(template):
                if not isinstance(part, str):
                    out.add(part[0][0])
    return out


def _lookup(context: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = context
    for key in path:
        # (A dict first: the Mapping check is an ABC's, about ten times slower.)
        if not (type(value) is dict or isinstance(value, Mapping)) or key not in value:
            return None
        value = value[key]
    return value


def _text(value: Any) -> str | None:
    if type(value) is str:  # the usual case: a contact field
        return value or None
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        return None
    return str(value)


def render(template: str, context: Mapping[str, Any]) -> str:
    """Render with `context` = contact fields plus `attributes` and `metadata` mappings."""
    out = []
    for part in parse(template):
        if isinstance(part, str):
            out.append(part)
            continue
        path, fallback = part
        text = _text(_lookup(context, path))
        if text is None:
            if fallback is None:
                raise MissingVariable(".".join(path))
            text = fallback
        out.append(text)
    return "".join(out)
