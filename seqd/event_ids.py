"""Ids derived from where an event sits, not drawn at random: events, their payloads, and
their deliveries.

An event id is derived from its outbox entry (shard and stream id, and the event's place in
a batched entry): a reader that handles an entry twice (it died before acknowledging it)
makes the same events, so the log and the receivers see one id however often it is
retried. The same holds for a delivery's id, derived from its event and endpoint.
"""

from __future__ import annotations

import hashlib

from seqd import ids

# Stream sequence numbers within one millisecond never come near these bounds, which keep
# the random part inside the id's 60 bits: an entry of one event takes seq * shards (below
# 2**59), the events of a batched entry 2**59 + (seq * 2**12 + index) * shards, so the
# two never meet and both name the shard.
_SEQ_LIMIT = 1 << 49
_BATCH_SEQ_LIMIT = 1 << 37
BATCH_INDEX_BITS = 12
_BATCH = 1 << 59


def event_id(shard: int, entry_id: str, shards: int, index: int | None = None) -> str:
    """`evt_` + the entry's ms + a random part made of (sequence, `index` in a batched entry,
    shard): unique, time-sorted, stable. `index` None: the entry's one event."""
    ms, _, seq = entry_id.partition("-")
    if index is None:
        part = (int(seq) % _SEQ_LIMIT) * shards
    else:
        part = _batch_base(seq, shards) + index * shards
    return ids.new_in_shard(ids.EVENT, shard, shards, int(ms), random_part=part)


def _batch_base(seq: str, shards: int) -> int:
    """The random part of a batched entry's event 0; event `index` adds `index * shards`."""
    return _BATCH + ((int(seq) % _BATCH_SEQ_LIMIT) << BATCH_INDEX_BITS) * shards


def batch_event_ids(shard: int, entry_id: str, shards: int, count: int) -> list[str]:
    """`event_id(shard, entry_id, shards, index)` for each index below `count`: the ids of a
    batched entry's events, made together."""
    ms, _, seq = entry_id.partition("-")
    base = _batch_base(seq, shards)
    parts = [base + index * shards for index in range(count)]
    return ids.many_derived(ids.EVENT, shard, shards, int(ms), parts)


def delivery_id(event: str, endpoint_id: str, shards: int) -> str:
    """`dlv_` + the event's ms + a hash of (event, endpoint), in the event's shard."""
    digest = hashlib.sha256(f"{event}/{endpoint_id}".encode()).digest()
    seed = int.from_bytes(digest[:8], "big") >> (64 - ids.RANDOM_BITS)
    return ids.new_in_shard(
        ids.DELIVERY, ids.shard_of(event, shards), shards, ids.time_of(event), random_part=seed
    )


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
    index = ((rnd - base) // shards) & ((1 << BATCH_INDEX_BITS) - 1)
    return ids.with_random(event_id, rnd - index * shards)
