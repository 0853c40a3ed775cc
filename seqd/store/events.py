"""The tenant's event log behind GET /v1/events.

Per tenant a STREAM of small entries (event id, type, time, enrollment and contact ids) in
the order the reader recorded them, trimmed by age (XTRIM MINID), and per event a STRING
with the payload (`Logged`: shaped when read), expiring after the retention.
Filters scan the stream in bounded steps, so a page costs at most `SCAN_MAX` entries read
however selective the filter is.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from seqd import event_ids, ids
from seqd.errors import Invalid, NotFound
from seqd.event_models import Event
from seqd.store import calls, event_types
from seqd.store.context import StoreContext

# Entries read per XRANGE while filtering, and at most per page.
SCAN_CHUNK = 500
SCAN_MAX = 5000
# `since` compares an event's time (the clock of the process that made it) with stream
# ids (the store's clock): the scan starts this much earlier so skew loses nothing.
CLOCK_SLACK_MS = 300_000
STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
_U64_MAX = 2**64 - 1
# Events per `recordEvents` call at most (unless one batch has more), so a call holds the
# server for a few ms at most.
RECORD_BATCH = 200


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
            if not 0 <= index < len(self.items) or event_id != event_ids.batch_event_id(
                self.id, index, shards
            ):
                return None
            data = self.items[index] if isinstance(self.items[index], dict) else {}
        if not self.shaped:
            data = event_types.shape_or_raw(self.type, data)
        return Event(id=event_id, type=self.type, created_at=self.created_at, data=data)


_decode_logged = msgspec.json.Decoder(Logged).decode


def read_logged(payload: bytes | str) -> Logged:
    return _decode_logged(payload)


class LogItem(msgspec.Struct, frozen=True):
    """One payload for a tenant's log and the events it holds: one event, or those of a
    batched outbox entry (`Logged`); the payload's key is its first event's id."""

    tenant: str
    type: str
    created_at: int
    payload: bytes
    # (event id, enrollment id, contact id) of each event, in order ("" where none)
    events: list[tuple[str, str, str]]


class EventFilter(msgspec.Struct, frozen=True):
    types: frozenset[str] | None = None
    enrollment_id: str | None = None
    contact_id: str | None = None
    since: int | None = None

    @property
    def empty(self) -> bool:
        return self == EventFilter()

    def admits(self, f: dict[str, str]) -> bool:
        return (
            (self.types is None or f.get("y") in self.types)
            and (self.enrollment_id is None or f.get("e") == self.enrollment_id)
            and (self.contact_id is None or f.get("c") == self.contact_id)
            and (self.since is None or int(f.get("at", 0)) >= self.since)
        )


def _next_id(stream_id: str) -> str:
    ms, _, seq = stream_id.partition("-")
    return f"{ms}-{int(seq) + 1}"


def check_position(after: str) -> str:
    """A page token's stream position, or a 422 naming the page token. Both parts are
    64-bit in Redis, and the page goes on from the next sequence number, so that one
    stops one short of the limit."""
    ms, _, seq = after.partition("-")
    if not STREAM_ID.match(after) or int(ms) > _U64_MAX or int(seq) >= _U64_MAX:
        raise Invalid.field("query.page_token", "not a page token from this API")
    return after


class Events:
    def __init__(self, store: StoreContext) -> None:
        self.store = store
        self.keys = store.keys

    async def record(self, items: list[LogItem], *, now: int, retention_ms: int) -> int:
        """Append events to their tenants' logs (each payload at most once); returns how
        many events were new.

        One `recordEvents` call per tenant and up to `RECORD_BATCH` events (a batch's
        events are in one call), all in one round trip; a tenant's events keep their order
        in its log."""
        if not items:
            return 0
        min_id = f"{max(now - retention_ms, 0)}-0"
        by_tenant: dict[str, list[LogItem]] = {}
        for it in items:
            by_tenant.setdefault(it.tenant, []).append(it)
        trip: list[calls.Call] = []
        for tenant, group in by_tenant.items():
            args: list[str | int | bytes] = []
            held = 0
            for it in group:
                if held and held + len(it.events) > RECORD_BATCH:
                    trip.append(calls.record_events(self.keys, tenant, retention_ms, min_id, args))
                    args, held = [], 0
                args += (it.type, it.created_at, it.payload, len(it.events))
                for event in it.events:
                    args += event
                held += len(it.events)
            if args:
                trip.append(calls.record_events(self.keys, tenant, retention_ms, min_id, args))
        results = await self.store.runner.call_many(trip)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return sum(int(r) for r in results)

    async def get(self, tenant: str, event_id: str) -> Event:
        event = None
        if ids.is_valid(event_id, ids.EVENT):
            key = self.keys.event(tenant, event_ids.payload_id(event_id, self.store.shards))
            raw = await self.store.client.get(key)
            if raw is not None:
                event = read_logged(raw).event(event_id, self.store.shards)
        if event is None:
            raise NotFound(f"no event {event_id}", field="id")
        return event

    async def list(
        self,
        tenant: str,
        *,
        limit: int,
        after: str | None,
        flt: EventFilter,
        now: int,
        retention_ms: int,
    ) -> tuple[list[Event], str | None, int | None]:
        """A page of the log in recorded order; returns (events, position to go on, total)."""
        key = self.keys.events(tenant)
        if after is not None:
            start = _next_id(check_position(after))
        else:
            lower = now - retention_ms
            if flt.since is not None:
                lower = max(lower, flt.since - CLOCK_SLACK_MS)
            start = f"{max(lower, 0)}-0"
        found: list[str] = []
        scanned, exhausted = 0, False
        last: str | None = None
        while len(found) < limit and scanned < SCAN_MAX:
            rows: list[tuple[str, dict[str, str]]] = await self.store.client.xrange(
                key, min=start, max="+", count=SCAN_CHUNK
            )  # type: ignore[assignment]
            if not rows:
                exhausted = True
                break
            for sid, fields in rows:
                scanned += 1
                last = sid
                if flt.admits(fields):
                    found.append(fields["v"])
                    if len(found) == limit:
                        break
            else:
                if len(rows) < SCAN_CHUNK:
                    exhausted = True
                    break
            start = _next_id(str(last))
        events = []
        if found:
            shards = self.store.shards
            # A batch's payload is read (and decoded) once for all its events on the page.
            keys = list(dict.fromkeys(event_ids.payload_id(e, shards) for e in found))
            bodies = await self.store.client.mget([self.keys.event(tenant, k) for k in keys])
            payloads = {k: read_logged(b) for k, b in zip(keys, bodies, strict=True) if b}
            for e in found:
                logged = payloads.get(event_ids.payload_id(e, shards))
                event = logged.event(e, shards) if logged is not None else None
                if event is not None:
                    events.append(event)
        total = None if not flt.empty else int(await self.store.client.xlen(key))
        return events, (None if exhausted else last), total

    async def trim(self, *, now: int, retention_ms: int) -> None:
        """Drop log entries past retention in every tenant's log (payloads expire by TTL).

        Exact trimming: run every minute it removes about a minute of entries per tenant.
        (`recordEvents` trims approximately, whole stream nodes only, so a node's older
        entries wait for this.)"""
        tenants: set[str] = await self.store.client.smembers(self.keys.tenants())  # type: ignore[assignment]
        min_id = f"{max(now - retention_ms, 0)}-0"
        pipe = self.store.client.pipeline(transaction=False)
        for tenant in sorted(tenants):
            pipe.xtrim(self.keys.events(tenant), minid=min_id, approximate=False)
        await pipe.execute()
