"""The outbox reader: every event into its tenant's log and its endpoints' delivery queues.

For a batch of outbox entries (new ones, and ones a dead reader left pending past the
lease), the reader
  1. turns each into its events (`envelope.convert`: ids derived from the entry; an entry
     of a script's hot path holds many events, store/outbox.py),
  2. appends them to the tenants' logs (`recordEvents`, once per payload: one event's, or
     a batched entry's events together),
  3. acknowledges each entry and schedules one delivery per event and matching enabled
     endpoint in one shard script (`fanoutEvents`).
Steps 2 and 3 are in different slots (tenant, shard). A crash between them leaves the
entry pending: the next reader repeats step 2 (a no-op) and does step 3. Step 3 is atomic
and skips an entry already acknowledged, so deliveries are written exactly once.
"""

from __future__ import annotations

import contextlib
from collections import Counter, defaultdict
from collections.abc import Callable

import structlog

from seqd import event_ids
from seqd.config import WebhooksConfig
from seqd.events import envelope
from seqd.events.envelope import Converted
from seqd.loop import Heart, Loop
from seqd.store import groups
from seqd.store.db import Store
from seqd.store.events import LogItem
from seqd.store.outbox import Entry, Fanout, ScheduledDelivery
from seqd.store.scripts import OUTBOX_ITEMS
from seqd.times import now_ms

log = structlog.get_logger(__name__)

NAME = "events.reader"
# Housekeeping (trimming the tenants' logs, forgetting dead consumers) runs this often, in ms.
MAINTENANCE_MS = 60_000


class Reader:
    """Moves outbox entries into the event log and the delivery schedule."""

    def __init__(
        self,
        store: Store,
        config: WebhooksConfig,
        *,
        consumer: str | None = None,
        clock: Callable[[], int] = now_ms,
        liveness: Heart | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.consumer = consumer or groups.consumer_name()
        self.clock = clock
        self.lease_ms = int(config.lease_seconds * 1000)
        self.retention_ms = config.events_retention_hours * 3_600_000
        self._next_reclaim = 0
        self._next_maintenance = 0
        self._group_ready = False
        idle_s = config.idle_poll_ms / 1000
        self.loop = Loop(
            NAME,
            self._turn,
            idle_seconds=idle_s,
            deadline_seconds=config.lease_seconds + 10 * idle_s + 30,
            failed_event="events.read_failed",
            liveness=liveness,
        )
        # Events per entry, as the last read found them. Until then a guess between one
        # event and a full batch: a first read after a long outage holds at most
        # batch_size * OUTBOX_ITEMS / 50 events per shard.
        self._per_entry = OUTBOX_ITEMS // 4
        # Whether the last read may have left entries behind.
        self.more = False

    async def run_once(self, now: int | None = None) -> int:
        """Handle one read of every shard; returns the number of events handled (an entry
        with none counts as one)."""
        now = self.clock() if now is None else now
        if not self._group_ready:
            await self.store.outbox.ensure_group()
            self._group_ready = True
        # Entries to read per shard so that a read is about `batch_size` events, by how
        # many the last read's entries held.
        count = max(1, self.config.batch_size // self._per_entry)
        reclaimed: list[Entry] = []
        if now >= self._next_reclaim:
            # Idle time is measured by the store: entries pending longer than the lease.
            reclaimed = await self.store.outbox.reclaim(self.consumer, self.lease_ms, count)
            # Until the pending lists give no more, look again on the next read.
            if not _filled(reclaimed, count):
                self._next_reclaim = now + self.lease_ms // 4
        read = await self.store.outbox.read(self.consumer, count)
        entries = reclaimed + read
        # A shard that gave all that was asked may have more: the loop reads again at once.
        self.more = _filled(reclaimed, count) or _filled(read, count)
        handled = 0
        if entries:
            handled = await self.handle(entries, now)
            self._per_entry = max(1, min(OUTBOX_ITEMS, round(handled / len(entries))))
        if now >= self._next_maintenance:
            self._next_maintenance = now + MAINTENANCE_MS
            await self.store.events.trim(now=now, retention_ms=self.retention_ms)
            gone = await self.store.outbox.prune(groups.dead_after_ms(self.lease_ms))
            if gone:
                log.info("events.consumers_pruned", consumers=gone)
        return handled

    async def handle(self, entries: list[Entry], now: int) -> int:
        """Log, acknowledge and fan out `entries`; returns the events handled (an entry
        with none counts as one)."""
        shards = self.store.shards
        converted: list[Converted] = []
        by_shard: dict[int, list[Fanout]] = defaultdict(list)
        handled = 0
        # Per entry, its events (in order); an entry with none is only acknowledged.
        of_entry: list[tuple[Entry, list[Converted]]] = []
        for entry in entries:
            events = envelope.convert(entry, shards)
            handled += len(events) or 1
            converted += events
            of_entry.append((entry, events))
        await self.store.events.record(
            [
                LogItem(
                    tenant=events[0].tenant,
                    type=events[0].type,
                    created_at=events[0].created,
                    # A batched entry's events share one payload.
                    payload=(
                        envelope.logged_batch(events)
                        if "items" in entry.fields
                        else events[0].logged()
                    ),
                    events=[(c.id, c.enrollment_id, c.contact_id) for c in events],
                )
                for entry, events in of_entry
                if events
            ],
            now=now,
            retention_ms=self.retention_ms,
        )
        endpoints = await self.store.webhooks.of_tenants({c.tenant for c in converted})
        due = now + self.config.retry_schedule_seconds[0] * 1000
        for entry, events in of_entry:
            tenant = events[0].tenant if events else ""
            wanting = endpoints.get(tenant, []) if events else []
            deliveries = []
            for c in events if wanting else []:
                body = None  # shaped only for an event some endpoint wants
                for ep in wanting:
                    if ep.wants(c.type):
                        body = body or c.payload()
                        deliveries.append(
                            ScheduledDelivery(
                                event_ids.delivery_id(c.id, ep.id, shards),
                                ep.id,
                                c.id,
                                c.type,
                                body,
                            )
                        )
            by_shard[entry.shard].append(Fanout(entry.id, tenant, due, deliveries))
        written = await self.store.outbox.fanout(by_shard, now)
        log.debug("events.handled", entries=len(entries), events=handled, deliveries=written)
        return handled

    # -- the loop -------------------------------------------------------------------------
    def start(self) -> None:
        self.loop.start()

    async def stop(self) -> None:
        """Stop reading; what was read and not handled comes back to a reader after the lease."""
        await self.loop.stop(self.config.timeout_seconds)
        with contextlib.suppress(Exception):
            await self.store.outbox.drop(self.consumer)

    async def _turn(self) -> float:
        """One read; at once again while shards may hold more (a failed read's entries stay
        pending and come back after the lease)."""
        self.more = False
        await self.run_once()
        return 0.0 if self.more else self.config.idle_poll_ms / 1000


def _filled(entries: list[Entry], count: int) -> bool:
    """Whether some shard gave `count` entries (all that was asked)."""
    per_shard = Counter(e.shard for e in entries)
    return bool(per_shard) and max(per_shard.values()) >= count
