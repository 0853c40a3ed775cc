"""Backlogs as Redis sees them: due steps per shard and what the streams' readers owe.

Read straight from the keys (not from a process's memory), so `/metrics` of any process
and `seqd status` agree, whichever process does the work. One pipeline per read.
"""

from __future__ import annotations

from typing import Any

import msgspec
from redis.exceptions import ResponseError

from seqd.store.context import StoreContext


class ShardDue(msgspec.Struct, kw_only=True):
    shard: int
    # Every item of the queues of the shard's unpaused sequences: waiting for its time, due,
    # or claimed (lease pending).
    scheduled: int
    # Items whose time has come (score <= now) and that no process holds.
    due: int
    # Due time of the earliest of those, if any.
    oldest_due_ms: int | None = None


class StreamBacklog(msgspec.Struct, kw_only=True):
    """What the slowest consumer group of a stream (or several, summed) has not done yet."""

    length: int = 0
    # Entries not yet read by the group plus those read and not acknowledged; with no
    # group at all, every entry (nothing consumes the stream yet).
    backlog: int = 0
    groups: int = 0

    def __add__(self, other: StreamBacklog) -> StreamBacklog:
        return StreamBacklog(
            length=self.length + other.length,
            backlog=self.backlog + other.backlog,
            groups=max(self.groups, other.groups),
        )


class WebhookBacklog(msgspec.Struct, kw_only=True):
    # Deliveries waiting for their first attempt or a retry (in flight ones included).
    queued: int = 0
    # Deliveries that used every attempt and wait for a manual retry (dead letters).
    failed: int = 0


class Snapshot(msgspec.Struct, kw_only=True):
    at_ms: int
    shards: list[ShardDue]
    intake: StreamBacklog
    # Intake entries that could not be enrolled, kept with their reason.
    intake_rejected: int = 0
    # The outbox streams of all shards, as the outbox reader (events, webhooks) sees them.
    outbox: StreamBacklog
    webhooks: WebhookBacklog = msgspec.field(default_factory=WebhookBacklog)

    @property
    def scheduled(self) -> int:
        return sum(s.scheduled for s in self.shards)

    @property
    def due(self) -> int:
        return sum(s.due for s in self.shards)

    @property
    def oldest_overdue_seconds(self) -> float:
        """Age of the oldest step that is due and unclaimed: how late the dispatcher runs."""
        oldest = [s.oldest_due_ms for s in self.shards if s.oldest_due_ms is not None]
        return max(0.0, (self.at_ms - min(oldest)) / 1000) if oldest else 0.0


def stream_backlog(length: Any, groups: Any) -> StreamBacklog:
    """From XLEN and XINFO GROUPS (an error when the stream does not exist)."""
    size = int(length) if isinstance(length, int) else 0
    if isinstance(groups, Exception) or not groups:
        return StreamBacklog(length=size, backlog=size, groups=0)
    worst = 0
    for group in groups:
        lag = group.get("lag")
        # Redis gives no lag when it cannot tell (entries deleted mid-stream): assume all.
        unread = size if lag is None else int(lag)
        worst = max(worst, unread + int(group.get("pending") or 0))
    return StreamBacklog(length=size, backlog=worst, groups=len(groups))


async def _execute(pipe: Any) -> list[Any]:
    """Results of a pipeline; a missing stream's XINFO error is a value, others raise."""
    rows: list[Any] = await pipe.execute(raise_on_error=False)
    for row in rows:
        if isinstance(row, Exception) and not isinstance(row, ResponseError):
            raise row
    return rows


async def read(store: StoreContext, now_ms: int) -> Snapshot:
    """Two round trips: everything countable directly, then each sequence queue's and each
    endpoint queue's size."""
    keys = store.keys
    n = store.shards
    pipe = store.client.pipeline(transaction=False)
    for shard in range(n):
        # Sequences with a head: their queues are the shard's scheduled steps (a paused
        # sequence's queue waits without one).
        pipe.zrange(keys.heads(shard), 0, -1)
        # Endpoints with queued deliveries in this shard, and its dead letters.
        pipe.zrange(keys.delivery_due(shard), 0, -1)
        pipe.zcard(keys.failed_all(shard))
    intakes = keys.intake_streams()
    for stream in [*(keys.intake(i) for i in intakes), *(keys.outbox(s) for s in range(n))]:
        pipe.xlen(stream)
        pipe.xinfo_groups(stream)
    for i in intakes:
        pipe.xlen(keys.intake_rejected(i))
    rows = await _execute(pipe)
    sequences: list[tuple[int, str]] = []
    queues = []
    failed = 0
    for shard in range(n):
        heads, endpoints, dead = rows[shard * 3 : shard * 3 + 3]
        sequences += [(shard, str(seq)) for seq in heads]
        queues += [keys.delivery_queue(shard, str(e)) for e in endpoints]
        failed += int(dead)
    streams = rows[n * 3 : -len(intakes)]
    intake, outbox = StreamBacklog(), StreamBacklog()
    for i in range(0, len(streams), 2):
        backlog = stream_backlog(streams[i], streams[i + 1])
        if i < 2 * len(intakes):
            intake = intake + backlog
        else:
            outbox = outbox + backlog
    pipe = store.client.pipeline(transaction=False)
    for shard, seq in sequences:
        queue = keys.queue(shard, seq)
        pipe.zcard(queue)
        pipe.zcount(queue, "-inf", now_ms)
        pipe.zrange(queue, 0, 0, withscores=True)
    for queue in queues:
        pipe.zcard(queue)
    counts = await _execute(pipe) if sequences or queues else []
    shards = [ShardDue(shard=shard, scheduled=0, due=0) for shard in range(n)]
    for i, (shard, _) in enumerate(sequences):
        scheduled, due, first = counts[i * 3 : i * 3 + 3]
        row = shards[shard]
        row.scheduled += int(scheduled)
        row.due += int(due)
        if first and int(due) > 0:
            oldest = int(first[0][1])
            if row.oldest_due_ms is None or oldest < row.oldest_due_ms:
                row.oldest_due_ms = oldest
    queued = sum(int(c) for c in counts[len(sequences) * 3 :])
    return Snapshot(
        at_ms=now_ms,
        shards=shards,
        intake=intake,
        intake_rejected=sum(int(r) for r in rows[-len(intakes) :]),
        outbox=outbox,
        webhooks=WebhookBacklog(queued=queued, failed=failed),
    )
