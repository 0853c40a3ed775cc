"""Conversion between Redis hashes (storage field names, ms integers) and API Structs.

Enrollment hashes use one- and two-letter field names: they are the one record per
active enrollment, and every byte there is multiplied by the number of enrollments. For
the same reason enrolled_at is not stored: it is the time in the enrollment's id, which
`enroll` makes at the time it passes the script (`ids.time_of`).
"""

from __future__ import annotations

from typing import Any

import msgspec

from seqd import ids, models
from seqd.times import to_rfc3339

# Storage field -> meaning, for enrollment hashes (documented in docs/architecture.md).
ENROLLMENT_FIELDS = {
    "t": "tenant",
    "s": "sequence_id",
    "c": "contact_id",
    "st": "status",
    "i": "current_step",
    "n": "next_run_at (ms)",
    "ua": "updated_at (ms); absent until the first change after enrolling (enrolled_at)",
    "md": "metadata (JSON), absent when empty",
    "pr": "paused_reason",
    "pv": "paused_variable: the template variable a missing_variable pause waits for",
    "ra": "resume_at (ms): a pause that ends by itself (out_of_office) resumes then",
    "cr": "cancel_reason",
    "ca": "completed_at (ms)",
    "a": "send attempts of the current step; absent means 0",
    "sm": "set once an SMS step was sent to the contact",
    "ys": "the sms sender (POST /v1/senders) the contact is pinned to (sticky rotation)",
    "ye": "the email sender the contact is pinned to (sticky rotation)",
    "sv": "the version of the sequence's steps it runs on; absent means 1",
    "p<step>": "the provider's message id of a sent step",
    "v<step>": "the A/B variant a step was sent as",
    "d<step>": "delivery report of a sent step: <rank>:<status>[:<error code>] (recordDelivery)",
    "k<step>": "ms of the first click (not a scanner's) on a tracked link of the step",
    "cq": "completed_reason: goal (a contact event met the sequence's exit_on)",
    "gl": "goal: the name of the event that completed it",
    "o": "what became of each step, one letter per step, read by step conditions "
    "(seqd/conditions.py): skipped (advance), a final receipt (recordDelivery), a reply, "
    "not run (a step passed before a move to another version of the steps)",
    "mv": "after a move to another version of the steps: each step sent before it, its "
    "index in `o` (-1: none), comma-separated (recordDelivery)",
    "z": "the zone its times are read in: <source letter>:<timezone_used> (zone_field)",
    "dr": "the last send-time deferral: <step>:<reason>",
}

# `z`'s source as one letter (timezone_source contact, phone, default): the field is written
# on every enrollment whose zone mattered, and 5-6 B less there keeps the enrollment hash
# in a smaller allocation. A hash written before holds the whole word, read the same.
ZONE_SOURCES = {"contact": "c", "phone": "p", "default": "d"}
_ZONE_SOURCE_NAMES = {letter: name for name, letter in ZONE_SOURCES.items()}

CONTACT_TEXT_FIELDS = ("first_name", "last_name", "phone", "email", "timezone", "external_id")

_json_decode = msgspec.json.Decoder().decode
_json_encode = msgspec.json.Encoder().encode


def pairs(flat: list[Any]) -> dict[str, str]:
    """A flat HGETALL reply from a script as a dict."""
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def _timed(status: str, h: dict[str, str]) -> bool:
    """Whether the enrollment's `n` is a time it waits for: an active one's next step, or
    the due time of the task a blocking task step holds it for (includes/tasks.lua)."""
    if status == models.EnrollmentStatus.ACTIVE:
        return True
    return h.get("pr") == models.PausedReason.AWAITING_TASK and "n" in h


def zone_field(source: str, zone: str) -> str:
    """The enrollment's `z`: the zone that decided its times, and where that zone came from."""
    return f"{ZONE_SOURCES[source]}:{zone}"


def zone_of(field: str) -> tuple[str | None, str | None]:
    """(timezone_source, timezone_used) of a `z` field ("": neither); the whole source word
    of a hash written before `zone_field` is read as it is."""
    source, _, zone = field.partition(":")
    return _ZONE_SOURCE_NAMES.get(source, source) or None, zone or None


def enrollment(eid: str, h: dict[str, str]) -> models.Enrollment:
    status = models.EnrollmentStatus(h["st"])
    md = h.get("md")
    enrolled_at = ids.time_of(eid)
    source, zone = zone_of(h.get("z", ""))
    # `dr` is "<step>:<reason>" of the last deferral: it tells of the current step only.
    deferred_step, _, deferred = h.get("dr", "").partition(":")
    return models.Enrollment(
        id=eid,
        sequence_id=h["s"],
        contact_id=h["c"],
        current_step=int(h["i"]),
        status=status,
        next_run_at=to_rfc3339(int(h["n"])) if _timed(status, h) else None,
        enrolled_at=to_rfc3339(enrolled_at),
        metadata=_json_decode(md) if md else {},
        paused_reason=h.get("pr"),
        paused_variable=h.get("pv"),
        resume_at=to_rfc3339(int(h["ra"])) if "ra" in h else None,
        cancel_reason=h.get("cr"),
        completed_at=to_rfc3339(int(h["ca"])) if "ca" in h else None,
        completed_reason="goal" if h.get("cq") == "goal" else None,
        goal=h.get("gl"),
        # `enroll` does not write `ua`: until the first change it is the enrollment time.
        updated_at=to_rfc3339(int(h.get("ua") or enrolled_at)),
        timezone_used=zone,
        timezone_source=source,  # type: ignore[arg-type]
        deferred_reason=deferred if deferred_step == h["i"] else None,
        sequence_version=int(h.get("sv") or 1),
        variants={k[1:]: v for k, v in h.items() if k[0] == "v" and k[1:].isdigit()} or None,
    )


def contact(cid: str, h: dict[str, str]) -> models.Contact:
    """A contact from its hash. A contact stores no `created_at` (the time in its id, which
    is made at its creation) and no `updated_at` until its first update; one stored before
    they were left out has both, and they are read."""
    attrs = h.get("attributes")
    created = int(h["created_at"]) if "created_at" in h else ids.time_of(cid)
    return models.Contact(
        id=cid,
        attributes=_json_decode(attrs) if attrs else {},
        created_at=to_rfc3339(created),
        updated_at=to_rfc3339(int(h.get("updated_at", created))),
        **{f: h.get(f) for f in CONTACT_TEXT_FIELDS},
    )


def contact_values(fields: dict[str, Any]) -> list[str]:
    """Field/value pairs for putContact; None clears a field ("\\0")."""
    out: list[str] = []
    for name, value in fields.items():
        if name == "attributes":
            out += [name, _json_encode(value).decode() if value else "\0"]
        else:
            out += [name, "\0" if value is None else str(value)]
    return out


def encode_json(value: Any) -> str:
    return _json_encode(value).decode()


def decode_json(text: str | bytes) -> Any:
    return _json_decode(text)
