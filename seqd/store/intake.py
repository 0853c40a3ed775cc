"""The intake stream's Redis side: the consumer group, reads, reclaims, and finishing
entries (store the outcome, move a rejected entry, acknowledge) in one MULTI.

The stream is a queue: a finished entry is acknowledged in the same MULTI as its outcome
is written, and finished entries are then trimmed from the stream's head (`trimIntake`),
so `XLEN <prefix>:intake` is the backlog (plus entries finished after one still pending),
and an entry is either still to do (unread, or pending with a consumer) or done with its
outcome stored. Its companions share its slot (see `keys.py`), which is what lets one MULTI
touch them all on Redis Cluster.

Writers may put any bytes in a field. This module's client decodes with
`surrogateescape`, so a field that is not UTF-8 reaches the caller as text it can reject
(`has_bad_bytes`) and is written back to the rejected stream byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from seqd.store import calls, groups
from seqd.store.client import derive
from seqd.store.context import StoreContext
from seqd.store.scripts import Runner

IntakeEntry = tuple[str, dict[str, str]]


_ESCAPED = re.compile("[\udc80-\udcff]")


def has_bad_bytes(text: str) -> bool:
    """True when `text` came from bytes that are not UTF-8 (surrogate escapes)."""
    return not text.isascii() and _ESCAPED.search(text) is not None


@dataclass(frozen=True, slots=True)
class Finished:
    """What to write for one entry: its outcome under its request_id, and if it was
    rejected, the fields to append to the rejected stream."""

    entry_id: str
    result_key: str | None = None
    result: str = ""
    rejected: dict[str, str] | None = None


class IntakeStream:
    def __init__(
        self, store: StoreContext, group: str, *, block_ms: int, stream: int | None = None
    ) -> None:
        self.keys = store.keys
        self.group = group
        # Which of the intake streams (keys.intake_streams): None, the plain one.
        self.stream = stream
        self.name = store.keys.intake(stream)
        # A blocked read must not trip the socket timeout.
        self.client = derive(
            store.client,
            encoding_errors="surrogateescape",
            wait_longer=block_ms / 1000,
            max_connections=8,
        )
        self.runner = Runner(self.client)

    async def close(self) -> None:
        await self.client.aclose()

    async def ensure_group(self) -> None:
        """Create the group at the start of the stream: entries written before any seqd
        ever ran are enrolled too."""
        try:
            await self.client.xgroup_create(self.name, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, consumer: str, count: int, block_ms: int | None) -> list[IntakeEntry]:
        reply: Any = await self.client.xreadgroup(
            self.group, consumer, {self.name: ">"}, count=count, block=block_ms
        )
        if not reply:
            return []
        # RESP2 gives [[stream, entries]], RESP3 {stream: [entries]}.
        streams = reply.items() if isinstance(reply, dict) else reply
        return [(eid, fields or {}) for _, entries in streams for eid, fields in entries]

    async def reclaim(
        self, consumer: str, min_idle_ms: int, count: int, start: str
    ) -> tuple[str, list[IntakeEntry]]:
        """Entries idle longer than the lease (their consumer died), now ours; and the
        cursor to continue from ("0-0" once the whole pending list was scanned)."""
        reply = await self.client.xautoclaim(
            self.name, self.group, consumer, min_idle_ms, start_id=start, count=count
        )
        cursor, entries = str(reply[0]), list(reply[1])
        # An entry deleted from the stream while pending comes back as (id, None).
        return cursor, [(str(e[0]), dict(e[1])) for e in entries if e[1] is not None]

    async def deliveries(self, entry_ids: Sequence[str]) -> dict[str, int]:
        """How many times each of these pending entries has been delivered."""
        if not entry_ids:
            return {}
        ordered = sorted(entry_ids, key=_id_key)
        rows = await self.client.xpending_range(
            self.name, self.group, ordered[0], ordered[-1], len(ordered) * 4
        )
        wanted = set(entry_ids)
        return {
            str(r["message_id"]): int(r["times_delivered"])
            for r in rows
            if r["message_id"] in wanted
        }

    async def known_results(self, keys: Sequence[str]) -> list[str | None]:
        if not keys:
            return []
        found: list[Any] = await self.client.mget(list(keys))
        return [None if v is None else str(v) for v in found]

    async def finish(
        self, done: Sequence[Finished], *, result_ttl_ms: int, rejected_max_len: int
    ) -> None:
        """Store outcomes, append rejections, acknowledge: all or nothing; then delete the
        stream's finished head."""
        if not done:
            return
        pipe = self.client.pipeline(transaction=True)
        writes = [d for d in done if d.result_key or d.rejected is not None]
        # In stream order, so rejected entries keep the order they were written in.
        for item in sorted(writes, key=lambda d: _id_key(d.entry_id)):
            if item.result_key:
                # NX: the first outcome stands (a retried entry finds the same enrollment).
                pipe.set(item.result_key, item.result, nx=True, px=result_ttl_ms)
            if item.rejected is not None:
                pipe.xadd(
                    self.keys.intake_rejected(self.stream),
                    dict(item.rejected),  # type: ignore[arg-type]
                    maxlen=rejected_max_len,
                    approximate=True,
                )
        pipe.xack(self.name, self.group, *[item.entry_id for item in done])
        await pipe.execute()
        # Finished entries leave the stream's head together (trimIntake); a crash before
        # this leaves them to the next batch's trim.
        await self.runner.run(calls.trim_intake(self.keys, self.stream))

    async def drop_consumer(self, consumer: str) -> None:
        """Forget a consumer that holds nothing (a clean stop), so the group's list stays short."""
        await groups.drop(self.client, self.name, self.group, consumer)

    async def prune(self, idle_ms: int) -> list[str]:
        """Forget consumers of processes that are gone (store/groups.py)."""
        return await groups.prune(self.client, self.name, self.group, idle_ms)

    async def backlog(self) -> int:
        return int(await self.client.xlen(self.name))


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
