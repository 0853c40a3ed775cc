"""An outbox entry as an event: its id, its payload, the ids the log filters on.

The event id is derived from where the entry sits (shard and stream id), not drawn at
random: a reader that handles an entry twice (it died before acknowledging it) makes the
same event, so the log and the receivers see one id however often it is retried. The
same holds for a delivery's id, derived from its event and endpoint.
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

# Stream sequence numbers within one millisecond never come near this; the bound keeps
# seq * shards inside the id's 60 random bits.
_SEQ_LIMIT = 1 << 50
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class Converted(msgspec.Struct, frozen=True):
    entry: Entry
    tenant: str
    event: Event
    payload: bytes
    enrollment_id: str
    contact_id: str
    # ms, the time the change was made (the event's created_at)
    created: int


def event_id(shard: int, entry_id: str, shards: int) -> str:
    """`evt_` + the entry's ms + (sequence * shards + shard): unique, time-sorted, stable."""
    ms, _, seq = entry_id.partition("-")
    return ids.new_in_shard(
        ids.EVENT, shard, shards, int(ms), random_part=(int(seq) % _SEQ_LIMIT) * shards
    )


def delivery_id(event: str, endpoint_id: str, shards: int) -> str:
    """`dlv_` + the event's ms + a hash of (event, endpoint), in the event's shard."""
    digest = hashlib.sha256(f"{event}/{endpoint_id}".encode()).digest()
    seed = int.from_bytes(digest[:8], "big") >> (64 - ids.RANDOM_BITS)
    return ids.new_in_shard(
        ids.DELIVERY, ids.shard_of(event, shards), shards, ids.time_of(event), random_part=seed
    )


def convert(entry: Entry, shards: int) -> Converted | None:
    """The event of an outbox entry; None (logged) for an entry no tenant can receive."""
    fields = entry.fields
    tenant = fields.get("tenant") or ""
    etype = fields.get("type") or ""
    if not tenant or not etype:
        log.warning("event.unroutable", shard=entry.shard, entry=entry.id)
        return None
    raw: Any
    try:
        raw = _decode(fields.get("data") or "{}")
    except msgspec.DecodeError:
        raw = None
    if not isinstance(raw, dict):
        log.warning("event.bad_data", shard=entry.shard, entry=entry.id, type=etype)
        raw = {}
    eid = event_id(entry.shard, entry.id, shards)
    at = fields.get("at") or ""
    created = int(at) if at.isdigit() else ids.time_of(eid)
    try:
        data = types.shape(etype, raw)
    except Exception:  # a shape bug must not stop the outbox: the stored data goes out as is
        log.exception("event.shape_failed", type=etype)
        data = raw
    event = Event(id=eid, type=etype, created_at=to_rfc3339(created), data=data)
    enrollment_id, contact_id = types.refs(raw)
    return Converted(
        entry=entry,
        tenant=tenant,
        event=event,
        payload=_encode(event),
        enrollment_id=enrollment_id,
        contact_id=contact_id,
        created=created,
    )
