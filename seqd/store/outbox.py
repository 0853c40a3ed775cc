"""The shards' outbox streams, read by one consumer group shared by every seqd process.

Scripts append events to their shard's `outbox`; readers take entries with XREADGROUP,
take over entries a dead reader left pending with XAUTOCLAIM (after the lease), and
acknowledge each entry in the same script that schedules its webhook deliveries
(`fanoutEvents`), which also deletes it: the stream holds only unhandled events, so its
length is the reader's backlog (in entries).

An entry is one event (`data`: its JSON object) or, from the hot paths (`enroll`,
`advance`: `emit_batched` in Lua), several events of one type and tenant (`items`: a
JSON array of their data objects); `type`, `tenant` and `at` are the events'.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import msgspec
from redis.exceptions import ResponseError

from seqd.store import calls, groups
from seqd.store.context import StoreContext

GROUP = "seqd-events"
# One fanout call handles at most this many entries and, unless a single entry has more,
# this many deliveries: bounds its ARGV and how long it runs.
FANOUT_BATCH = 100
FANOUT_DELIVERIES = 400

_decode = msgspec.json.Decoder().decode


class Entry(msgspec.Struct, frozen=True):
    shard: int
    id: str
    fields: dict[str, str]

    def events(self) -> list[Any] | None:
        """The data of each event the entry holds (decoded JSON, maybe not an object);
        None when `data` or `items` is not JSON, or `items` not an array."""
        fields = self.fields
        try:
            if "items" in fields:
                items = _decode(fields["items"])
                return items if isinstance(items, list) else None
            return [_decode(fields.get("data") or "{}")]
        except msgspec.DecodeError:
            return None


class ScheduledDelivery(msgspec.Struct, frozen=True):
    """A webhook delivery to schedule: one event to one endpoint."""

    id: str
    endpoint_id: str
    event_id: str
    type: str
    body: bytes


class Fanout(msgspec.Struct, frozen=True):
    """One outbox entry to acknowledge, with the deliveries of its events to schedule."""

    entry_id: str
    tenant: str
    due: int
    deliveries: list[ScheduledDelivery]


def _stream_rows(reply: Any) -> list[tuple[str, dict[str, str] | None]]:
    """Entries of a one-stream XREADGROUP reply (RESP2 list or RESP3 dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        rows = next(iter(reply.values()))
        return list(rows[0] if rows and isinstance(rows[0], list) else rows)
    return list(reply[0][1])


class Outbox:
    def __init__(self, store: StoreContext) -> None:
        self.store = store
        self.keys = store.keys

    async def ensure_group(self) -> None:
        """Create the readers' group on every shard's outbox (from the start: nothing skipped)."""
        for shard in range(self.keys.shards):
            try:
                await self.store.client.xgroup_create(
                    self.keys.outbox(shard), GROUP, id="0", mkstream=True
                )
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def prune(self, idle_ms: int) -> list[str]:
        """Forget consumers of processes that are gone, on every shard (store/groups.py)."""
        gone: list[str] = []
        for shard in range(self.keys.shards):
            gone += await groups.prune(self.store.client, self.keys.outbox(shard), GROUP, idle_ms)
        return sorted(set(gone))

    async def drop(self, consumer: str) -> None:
        """Remove this reader from every shard's group where it holds nothing (clean stop)."""
        for shard in range(self.keys.shards):
            with contextlib.suppress(ResponseError):
                await groups.drop(self.store.client, self.keys.outbox(shard), GROUP, consumer)

    async def read(self, consumer: str, count: int) -> list[Entry]:
        """New entries of every shard, up to `count` per shard."""
        pipe = self.store.client.pipeline(transaction=False)
        for shard in range(self.keys.shards):
            pipe.xreadgroup(GROUP, consumer, {self.keys.outbox(shard): ">"}, count=count)
        replies = await pipe.execute(raise_on_error=False)
        out = []
        missing = False
        for shard, reply in enumerate(replies):
            if isinstance(reply, Exception):
                if "NOGROUP" not in str(reply):
                    raise reply
                missing = True
                continue
            for eid, fields in _stream_rows(reply):
                if fields is not None:
                    out.append(Entry(shard, eid, fields))
        if missing:
            # The stream was deleted (FLUSHDB, a restore): recreate the group for next time.
            await self.ensure_group()
        return out

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        """Entries another reader took more than `min_idle_ms` ago and never acknowledged."""
        pipe = self.store.client.pipeline(transaction=False)
        for shard in range(self.keys.shards):
            pipe.xautoclaim(
                self.keys.outbox(shard), GROUP, consumer, min_idle_ms, "0-0", count=count
            )
        replies = await pipe.execute(raise_on_error=False)
        out = []
        for shard, reply in enumerate(replies):
            if isinstance(reply, Exception):
                if "NOGROUP" not in str(reply):
                    raise reply
                continue
            for eid, fields in reply[1]:
                if fields is not None:
                    out.append(Entry(shard, eid, fields))
        return out

    async def fanout(self, by_shard: Mapping[int, list[Fanout]], now: int) -> int:
        """Acknowledge entries of each shard and schedule their deliveries, every call in one
        round trip; returns how many deliveries were written."""
        trip: list[calls.Call] = []
        for shard, items in by_shard.items():
            args: list[Any] = []
            entries = deliveries = 0
            for item in items:
                # An entry's deliveries are all in its call (acknowledged with them).
                if args and (
                    entries == FANOUT_BATCH or deliveries + len(item.deliveries) > FANOUT_DELIVERIES
                ):
                    trip.append(calls.fanout_events(self.keys, shard, GROUP, now, args))
                    args, entries, deliveries = [], 0, 0
                # Only acknowledged when it has no deliveries: its tenant is not sent.
                args += [item.entry_id, item.tenant if item.deliveries else "", item.due]
                args.append(len(item.deliveries))
                for d in item.deliveries:
                    args += [d.id, d.endpoint_id, d.event_id, d.type, d.body]
                entries += 1
                deliveries += len(item.deliveries)
            if args:
                trip.append(calls.fanout_events(self.keys, shard, GROUP, now, args))
        written = 0
        for result in await self.store.runner.call_many(trip) if trip else []:
            if isinstance(result, Exception):
                raise result
            written += int(result)
        return written

    async def backlog(self) -> int:
        """Entries not yet handled, over every shard."""
        pipe = self.store.client.pipeline(transaction=False)
        for shard in range(self.keys.shards):
            pipe.xlen(self.keys.outbox(shard))
        return int(sum(await pipe.execute()))
