"""Steps in the OpenAPI document as a tagged union: one schema per kind (discriminator
`kind`), so a generated client gets a type per kind. Built from the one Struct the API
decodes (`models.StepIn`, `models.Step`) and the kinds' fields (kinds.py): a kind's schema
has the fields every step takes and its own; another kind's field is absent, or null where
the Struct reads null as absent."""

from __future__ import annotations

import copy
from typing import Any

from seqd.kinds import KIND_FIELDS, SPECS
from seqd.models import LENIENT_FIELDS

_REF = "#/components/schemas/{name}"
_NULL = {"type": "null"}


def _kind_schema(base: dict[str, Any], kind: str, strict: bool) -> dict[str, Any]:
    spec = SPECS[kind]  # type: ignore[index]
    schema = copy.deepcopy(base)
    schema.pop("oneOf", None)
    props: dict[str, Any] = schema["properties"]
    props["kind"] = {"const": kind}
    for name in list(props):
        if name in spec.fields:
            continue
        if name == "subject" or (name in KIND_FIELDS and name not in LENIENT_FIELDS):
            if strict and props[name].get("default", 0) is None:
                props[name] = _NULL
            elif strict and name == "subject":
                props[name] = _NULL
            else:
                del props[name]
    required = [n for n in schema.get("required", []) if n in props]
    if strict:
        required += [n for n in spec.required if n not in required]
        for n in spec.required:  # (null reads as absent, which a required field is not)
            options = props[n].get("anyOf")
            if options and _NULL in options:
                (props[n],) = [o for o in options if o != _NULL]
    schema["required"] = required
    schema["title"] = f"{kind.capitalize()}{base.get('title', '')}"
    return schema


def tagged(components: dict[str, Any]) -> None:
    """Replace the StepIn and Step components by a tagged union of one schema per kind."""
    for name, strict in (("StepIn", True), ("Step", False)):
        base = components.get(name)
        if base is None:
            continue
        mapping = {}
        for kind in SPECS:
            own = f"{kind.capitalize()}{name}"
            components[own] = _kind_schema(base, kind, strict)
            mapping[kind] = _REF.format(name=own)
        components[name] = {
            "title": name,
            "oneOf": [{"$ref": ref} for ref in mapping.values()],
            "discriminator": {"propertyName": "kind", "mapping": mapping},
        }
