"""An outbox entry as events: their ids, payloads, and the ids the log filters on.

An event id is derived from where its entry sits (shard and stream id, and the event's
place in a batched entry), not drawn at random: a reader that handles an entry twice (it
died before acknowledging it) makes the same events, so the log and the receivers see one
id however often it is retried. The same holds for a delivery's id, derived from its event
and endpoint.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import structlog

from seqd import ids
from seqd.events import types
from seqd.events.models import Event
from seqd.store.outbox import Entry
from seqd.times import to_rfc3339

log = structlog.get_logger(__name__)

# Stream sequence numbers within one millisecond never come near these bounds, which keep
# the random part inside the id's 60 bits: an entry of one event takes seq * shards (below
# 2**59), the events of a batched entry 2**59 + (seq * 2**12 + index) * shards, so the
# two never meet and both name the shard.
_SEQ_LIMIT = 1 << 49
_BATCH_SEQ_LIMIT = 1 << 37
_BATCH_INDEX_BITS = 12
_BATCH = 1 << 59
_encode = msgspec.json.Encoder().encode


class Logged(msgspec.Struct, frozen=True):
    """A payload of the log: one event (`data`), or every event of a batched outbox entry
    (`items`, each event's data in order; `id` is the first event's, the others' follow
    from it, `batch_event_id`). The reader logs data as the outbox had it (`shaped`
    false) and it is shaped when read, so events nobody reads are never shaped; payloads
    logged before that hold one event in the API form (no `shaped`)."""

    id: str
    type: str
    created_at: str
    data: dict[str, Any] | None = None
    items: list[Any] | None = None
    shaped: bool = True

    def event(self, event_id: str, shards: int) -> Event | None:
        """Event `event_id` of this payload; None when it holds no such event."""
        if self.items is None:
            data = self.data if self.data is not None and event_id == self.id else None
            if data is None:
                return None
        else:
            index = (ids.random_of(event_id) - ids.random_of(self.id)) // shards
            if not 0 <= index < len(self.items) or event_id != batch_event_id(
                self.id, index, shards
            ):
                return None
            data = self.items[index] if isinstance(self.items[index], dict) else {}
        if not self.shaped:
            data = shape(self.type, data)
        return Event(id=event_id, type=self.type, created_at=self.created_at, data=data)


_decode_logged = msgspec.json.Decoder(Logged).decode


def read_logged(payload: bytes | str) -> Logged:
    return _decode_logged(payload)


def logged_batch(events: list[Converted]) -> bytes:
    """The log's payload of a batched entry's events (`Converted.logged` of one event)."""
    first = events[0]
    items = [c.raw for c in events]
    return _encode(Logged(first.id, first.type, to_rfc3339(first.created), None, items, False))


def batch_event_id(first: str, index: int, shards: int) -> str:
    """The id of event `index` of the batched entry whose first event is `first`."""
    return ids.with_random(first, ids.random_of(first) + index * shards)


def payload_id(event_id: str, shards: int) -> str:
    """The id that names an event's payload in the log: its own, or for an event of a
    batched entry (a random part from _BATCH on, less the shard residue) the entry's first
    event's."""
    rnd = ids.random_of(event_id)
    base = _BATCH - _BATCH % shards
    if rnd < base:
        return event_id
    index = ((rnd - base) // shards) & ((1 << _BATCH_INDEX_BITS) - 1)
    return ids.with_random(event_id, rnd - index * shards)


def shape(etype: str, raw: dict[str, Any]) -> dict[str, Any]:
    """`types.shape`, and the stored data as it is if that fails: a shape bug must not
    stop the outbox or hide an event."""
    try:
        return types.shape(etype, raw)
    except Exception:
        log.exception("event.shape_failed", type=etype)
        return raw


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

    def event(self) -> Event:
        """The event in its API form."""
        data = shape(self.type, self.raw)
        return Event(id=self.id, type=self.type, created_at=to_rfc3339(self.created), data=data)

    def payload(self) -> bytes:
        """The webhook body (the bytes signed)."""
        return _encode(self.event())

    def logged(self) -> bytes:
        """The log's payload of this one event (read back by `read_logged`)."""
        return _encode(Logged(self.id, self.type, to_rfc3339(self.created), self.raw, None, False))


def event_id(shard: int, entry_id: str, shards: int, index: int | None = None) -> str:
    """`evt_` + the entry's ms + a random part made of (sequence, `index` in a batched entry,
    shard): unique, time-sorted, stable. `index` None: the entry's one event."""
    ms, _, seq = entry_id.partition("-")
    if index is None:
        part = (int(seq) % _SEQ_LIMIT) * shards
    else:
        part = _BATCH + (((int(seq) % _BATCH_SEQ_LIMIT) << _BATCH_INDEX_BITS | index) * shards)
    return ids.new_in_shard(ids.EVENT, shard, shards, int(ms), random_part=part)


def delivery_id(event: str, endpoint_id: str, shards: int) -> str:
    """`dlv_` + the event's ms + a hash of (event, endpoint), in the event's shard."""
    digest = hashlib.sha256(f"{event}/{endpoint_id}".encode()).digest()
    seed = int.from_bytes(digest[:8], "big") >> (64 - ids.RANDOM_BITS)
    return ids.new_in_shard(
        ids.DELIVERY, ids.shard_of(event, shards), shards, ids.time_of(event), random_part=seed
    )


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
    if events is None or (batched and len(events) > 1 << _BATCH_INDEX_BITS):
        log.warning("event.bad_data", shard=entry.shard, entry=entry.id, type=etype)
        # A bad single event still goes out, with empty data: it says something happened.
        if batched:
            return []
        events = [{}]
    at = fields.get("at") or ""
    created = int(at) if at.isdigit() else int(entry.id.partition("-")[0])
    out = []
    for index, raw in enumerate(events):
        if not isinstance(raw, dict):
            log.warning("event.bad_data", shard=entry.shard, entry=entry.id, type=etype)
            raw = {}
        enrollment_id, contact_id = types.refs(raw)
        out.append(
            Converted(
                entry=entry,
                tenant=tenant,
                id=event_id(entry.shard, entry.id, shards, index if batched else None),
                type=etype,
                created=created,
                raw=raw,
                enrollment_id=enrollment_id,
                contact_id=contact_id,
            )
        )
    return out
