"""Event types and the shape of each type's `data`: the one place for both.

Scripts write an outbox entry's `data` in storage form: an enrollment event carries
`{"id": <enrollment id>, "fields": {<hash fields>}, ...extras}` (the stored fields the API
enrollment is made of), other events a plain object. `shape` turns it into the API form
every consumer sees (webhooks and `GET /v1/events` alike). A type added by a script but
not listed here still passes through: its data is converted by the generic rule, so a new
event never blocks the outbox and never needs this module to change first.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog

from seqd import ids
from seqd.errors import FieldError
from seqd.event_names import ENROLLMENT_TYPES, KNOWN, WILDCARD
from seqd.store import codec
from seqd.times import to_rfc3339

log = structlog.get_logger(__name__)

# Extra keys named like this (and `until`) holding integers are times in ms in storage,
# RFC 3339 on the wire.
_TIME_SUFFIX = "_at"


def _times(extra: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in extra.items():
        if (
            (key.endswith(_TIME_SUFFIX) or key == "until")
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and value > 0
        ):
            value = to_rfc3339(int(value))
        out[key] = value
    return out


def _text(value: Any) -> str:
    """A stored hash value as Redis holds it (cjson may have turned "12" into 12 or 12.0)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _enrollment(raw: dict[str, Any]) -> dict[str, Any] | None:
    """The API form of an enrollment-shaped `data`, or None when it is not one."""
    eid, fields = raw.get("id"), raw.get("fields")
    if not (isinstance(eid, str) and eid.startswith(ids.ENROLLMENT + "_")):
        return None
    if not isinstance(fields, dict):
        return None
    try:
        enrollment = codec.enrollment(eid, {k: _text(v) for k, v in fields.items()})
    except (KeyError, ValueError, msgspec.DecodeError):
        return None
    out: dict[str, Any] = msgspec.to_builtins(enrollment)
    return out


def shape(etype: str, raw: dict[str, Any]) -> dict[str, Any]:
    """The API `data` of an event of type `etype` from its stored `data`.

    - `sequence.enrollment.*`: the enrollment itself (`id` is the enrollment's), with the
      event's extras (`step`, `error` of a failure) beside its fields.
    - any other enrollment-shaped data (steps, and types this module does not know yet):
      the extras, plus `enrollment_id`, `sequence_id`, `contact_id` and the `enrollment`.
    - anything else: as stored.
    In every case integer extras named `*_at` (ms) become RFC 3339 times.
    """
    extra = _times({k: v for k, v in raw.items() if k not in ("id", "fields")})
    enrollment = _enrollment(raw)
    if enrollment is None:
        return _times(raw)
    if etype in ENROLLMENT_TYPES:
        return {**extra, **enrollment}
    return {
        **extra,
        "enrollment_id": enrollment["id"],
        "sequence_id": enrollment["sequence_id"],
        "contact_id": enrollment["contact_id"],
        "enrollment": enrollment,
    }


def shape_or_raw(etype: str, raw: dict[str, Any]) -> dict[str, Any]:
    """`shape`, and the stored data as it is if that fails: a shape bug must not
    stop the outbox or hide an event."""
    try:
        return shape(etype, raw)
    except Exception:
        log.exception("event.shape_failed", type=etype)
        return raw


# Types whose data `id` is the caller's own name for the event, not a seqd object.
USER_IDS = frozenset({"contact.event_recorded"})


def refs(raw: dict[str, Any], etype: str = "") -> tuple[str, str]:
    """(enrollment id, contact id) an event is about, "" where none: the log's filters."""
    fields = raw.get("fields")
    eid = raw.get("enrollment_id") or ""
    cid = raw.get("contact_id") or ""
    own = raw.get("id")
    if isinstance(own, str) and etype not in USER_IDS:
        if own.startswith(ids.ENROLLMENT + "_"):
            eid = own
        elif own.startswith(ids.CONTACT + "_"):
            cid = cid or own
    if isinstance(fields, dict) and not cid:
        cid = fields.get("c") or ""
    return (eid if isinstance(eid, str) else ""), (cid if isinstance(cid, str) else "")


def matches(patterns: list[str], etype: str) -> bool:
    """Whether an endpoint subscribed to `patterns` receives an event of type `etype`."""
    return WILDCARD in patterns or etype in patterns


def check_subscription(values: list[str], path: str = "events") -> list[FieldError]:
    """Errors of an endpoint's `events` list: known types, or `["*"]` alone."""
    errors = []
    if WILDCARD in values and len(values) > 1:
        errors.append(FieldError(path, '"*" stands alone: it already means every type'))
    for i, value in enumerate(values):
        if value != WILDCARD and value not in KNOWN:
            errors.append(FieldError(f"{path}[{i}]", f"unknown event type {value!r}"))
    return errors
