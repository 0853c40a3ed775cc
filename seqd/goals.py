"""Goals: a sequence's `exit_on` rules and which contact events meet them.

`exit_on: [{"event": "meeting_booked"}, {"event": "deal_stage", "where":
{"properties.stage": "won"}}]`: a contact event of that name (whose properties hold every
`where` value) completes the contact's live enrollments in the sequence with
`completed_reason: "goal"`. The rules are read here; the completion is one script per shard
(`exitGoal`, store/contact_events.py).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

EventName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="letters, digits and _ . : -",
    ),
]
WhereValue = str | int | float | bool | None
WherePath = Annotated[
    str,
    Meta(max_length=200, pattern=r"^properties(\.[^.]+)+$", description="properties.<key>"),
]
Where = Annotated[
    dict[WherePath, WhereValue],
    Meta(
        max_length=20,
        description='"properties.<key>[.<key>...]" -> the value the event must have there',
    ),
]
MAX_RULES = 20
_PREFIX = "properties."


class ExitRule(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """A goal: an event of this name, with these property values, ends the enrollment."""

    event: EventName
    where: Where = msgspec.field(default_factory=dict)


ExitOn = Annotated[list[ExitRule], Meta(max_length=MAX_RULES)]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


def _at(properties: dict[str, Any], path: str) -> tuple[bool, Any]:
    value: Any = properties
    for key in path[len(_PREFIX) :].split("."):
        if type(value) is not dict or key not in value:
            return False, None
        value = value[key]
    return True, value


def met(rules: list[ExitRule], name: str, properties: dict[str, Any]) -> ExitRule | None:
    """The first rule the event meets, if any."""
    for rule in rules:
        if rule.event != name:
            continue
        if all(
            (found := _at(properties, path))[0] and _same(found[1], want)
            for path, want in rule.where.items()
        ):
            return rule
    return None
