"""Contact events: every way in (POST /v1/contacts/{id}/events, its batch, the intake
stream) meets here, as `bulk.py` is for enrollments.

An event is validated (`prepare`), then recorded in its contact's shard, where the goals
it meets complete enrollments in the same script (`Lifecycle.record_event`). Recording is
once per event id for the event log's retention (`webhooks.events_retention_hours`): a
repeat answers what the first recording did. An event without an id gets one, so only a
caller that gives ids can repeat a request safely.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from seqd import bulk, ids, models
from seqd.errors import FieldError, Invalid, SeqdError
from seqd.goals import EventName
from seqd.store.db import Store
from seqd.store.lifecycle import NewContactEvent, RecordedEvent
from seqd.times import from_rfc3339, now_ms, to_rfc3339

# Events of one batch recorded at once (each is a few round trips of its own).
CONCURRENCY = 32

Properties = Annotated[
    dict[str, Any],
    Meta(max_length=100, description="any JSON object; at most 16 KiB as JSON"),
]


class ContactEventCreate(models.Input, kw_only=True):
    # The caller's id for the event: recording the same id again changes nothing and
    # answers the first recording (idempotent). None: seqd gives one.
    id: models.Id | None = None
    name: EventName
    properties: Properties = msgspec.field(default_factory=dict)
    # When it happened (RFC 3339); absent: when seqd records it.
    occurred_at: models.Timestamp | None = None


class ContactEventItem(ContactEventCreate, kw_only=True):
    """One event of a batch: the contact it is about, and the event."""

    contact_id: models.Id


class ContactEvent(models.Output, kw_only=True):
    id: str
    contact_id: str
    name: str
    properties: dict[str, Any]
    occurred_at: models.Timestamp
    recorded_at: models.Timestamp


class ContactEventResult(models.Output, kw_only=True):
    event: ContactEvent
    # True: this id was recorded before; `event` and `completed` are that recording's.
    idempotent: bool = False
    # The enrollments the event completed as a goal (their sequence's exit_on).
    completed: list[str]


def prepare(body: ContactEventCreate, root: str = "") -> NewContactEvent:
    """The event to record; Invalid names each bad field under `root` (`items[3].`)."""
    errors = []
    occurred = now_ms()
    if body.occurred_at is not None:
        try:
            occurred = from_rfc3339(body.occurred_at)
            if occurred <= 0:
                raise ValueError("before 1970")
        except ValueError as exc:
            errors.append(FieldError(f"{root}occurred_at", f"not an RFC 3339 time: {exc}"))
    try:
        bulk.check_metadata(body.properties, f"{root}properties")
    except Invalid as exc:
        errors += exc.errors
    if errors:
        raise Invalid(errors)
    return NewContactEvent(
        id=body.id or ids.new(ids.CONTACT_EVENT),
        name=body.name,
        properties=body.properties,
        occurred_at=occurred,
    )


def result(recorded: RecordedEvent) -> ContactEventResult:
    data = recorded.data
    event = ContactEvent(
        id=data["id"],
        contact_id=data["contact_id"],
        name=data["name"],
        properties=data.get("properties") or {},
        occurred_at=to_rfc3339(int(data["occurred_at"])),
        recorded_at=to_rfc3339(int(data["recorded_at"])),
    )
    return ContactEventResult(
        event=event, idempotent=recorded.repeated, completed=list(data.get("completed") or [])
    )


async def record(
    store: Store, tenant: str, contact_id: str, event: NewContactEvent, retention_ms: int
) -> ContactEventResult:
    recorded = await store.lifecycle.record_event(
        tenant, contact_id, event, retention_ms=retention_ms
    )
    return result(recorded)


async def record_all(
    store: Store,
    tenant: str,
    items: list[tuple[str, NewContactEvent]],
    retention_ms: int,
) -> list[ContactEventResult | SeqdError]:
    """Each (contact id, event) recorded, at most CONCURRENCY at once; a refusal (no such
    contact) in the item's place."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(cid: str, event: NewContactEvent) -> ContactEventResult | SeqdError:
        async with gate:
            try:
                return await record(store, tenant, cid, event, retention_ms)
            except SeqdError as exc:
                return exc

    return list(await asyncio.gather(*(one(cid, event) for cid, event in items)))
