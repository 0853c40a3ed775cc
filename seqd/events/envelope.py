"""An outbox entry as events: their payloads and the ids the log filters on (the events'
own ids are derived in `seqd/event_ids.py`, so a reader that handles an entry twice makes
the same events)."""

from __future__ import annotations

from typing import Any

import msgspec
import structlog

from seqd import event_ids
from seqd.event_models import Event
from seqd.store import event_types
from seqd.store.events import Logged
from seqd.store.outbox import Entry
from seqd.times import to_rfc3339

log = structlog.get_logger(__name__)

_encode = msgspec.json.Encoder().encode


def logged_batch(events: list[Converted]) -> bytes:
    """The log's payload of a batched entry's events (`Converted.logged` of one event).

    The entry's own `items` text goes in as it is (not decoded data encoded again) unless
    `convert` had to mend an item."""
    first = events[0]
    text = first.entry.fields.get("items")
    items: Any = (
        msgspec.Raw(text)
        if text is not None and all(c.verbatim for c in events)
        else [c.raw for c in events]
    )
    return _encode(Logged(first.id, first.type, to_rfc3339(first.created), None, items, False))


class Converted(msgspec.Struct, frozen=True):
    """One event of an outbox entry, with its data as stored (`raw`)."""

    entry: Entry
    tenant: str
    id: str
    type: str
    # ms, the time the change was made (the event's created_at)
    created: int
    raw: dict[str, Any]
    enrollment_id: str
    contact_id: str
    # `raw` is the entry's data as it was (False: it was not an object, and is {} here).
    verbatim: bool = True

    def event(self) -> Event:
        """The event in its API form."""
        data = event_types.shape_or_raw(self.type, self.raw)
        return Event(id=self.id, type=self.type, created_at=to_rfc3339(self.created), data=data)

    def payload(self) -> bytes:
        """The webhook body (the bytes signed)."""
        return _encode(self.event())

    def logged(self) -> bytes:
        """The log's payload of this one event (read back by `read_logged`)."""
        return _encode(Logged(self.id, self.type, to_rfc3339(self.created), self.raw, None, False))


def convert(entry: Entry, shards: int) -> list[Converted]:
    """The events of an outbox entry; none (logged) for an entry no tenant can receive."""
    fields = entry.fields
    tenant = fields.get("tenant") or ""
    etype = fields.get("type") or ""
    if not tenant or not etype:
        log.warning("event.unroutable", shard=entry.shard, entry=entry.id)
        return []
    batched = "items" in fields
    events = entry.events()
    if events is None or (batched and len(events) > 1 << event_ids.BATCH_INDEX_BITS):
        log.warning("event.bad_data", shard=entry.shard, entry=entry.id, type=etype)
        # A bad single event still goes out, with empty data: it says something happened.
        if batched:
            return []
        events = [{}]
    at = fields.get("at") or ""
    created = int(at) if at.isdigit() else int(entry.id.partition("-")[0])
    if batched:
        id_list = event_ids.batch_event_ids(entry.shard, entry.id, shards, len(events))
    else:
        id_list = [event_ids.event_id(entry.shard, entry.id, shards)]
    out = []
    for event_id, raw in zip(id_list, events, strict=True):
        verbatim = isinstance(raw, dict)
        if not verbatim:
            log.warning("event.bad_data", shard=entry.shard, entry=entry.id, type=etype)
            raw = {}
        enrollment_id, contact_id = event_types.refs(raw, etype)
        out.append(
            Converted(
                entry=entry,
                tenant=tenant,
                id=event_id,
                type=etype,
                created=created,
                raw=raw,
                enrollment_id=enrollment_id,
                contact_id=contact_id,
                verbatim=verbatim,
            )
        )
    return out
