"""Helpers of the fault tests: seeding many enrollments, reading the log provider, invariants."""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from seqd import ids, models
from seqd.store.claims import is_unsettled
from seqd.store.db import Store
from tests.dispatchutil import TENANT, enroll, sequence


def size(name: str, default: int) -> int:
    """A fault test's size: small by default (CI), larger with `SEQD_FAULT_<NAME>`."""
    return int(os.environ.get(f"SEQD_FAULT_{name}", default))


async def seed(
    store: Store, steps: list[models.StepIn], n: int, first: int = 0
) -> tuple[str, list[str]]:
    """One active sequence of `steps` and `n` contacts (phone and email) enrolled in it;
    contacts are numbered from `first` (their phone and address follow the number)."""
    seq = await sequence(store, *steps)
    cids: list[str] = []
    for start in range(first, first + n, 50):
        batch = await asyncio.gather(
            *(
                store.contacts.create(
                    TENANT,
                    {"first_name": f"c{i}", "phone": f"+1415{i:07d}", "email": f"c{i}@example.com"},
                )
                for i in range(start, min(first + n, start + 50))
            )
        )
        cids += [c.id for c in batch]
    enrolled = []
    for start in range(0, n, 500):
        enrolled += await enroll(store, seq, cids[start : start + 500])
    return seq.id, [e.id for e in enrolled]


class LogTail:
    """The `log` channel's file, read incrementally: every whole line is one step at the
    provider. A line that does not parse was torn by a kill mid-write (the next sender
    closes it off with a newline): it is counted in `torn`, not as a send."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sent: Counter[tuple[str, int]] = Counter()
        self.lines = 0
        self.torn = 0
        self._offset = 0
        self._partial = b""

    def read(self) -> int:
        if not self.path.exists():
            return self.lines
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        self._offset += len(chunk)
        data = self._partial + chunk
        *whole, self._partial = data.split(b"\n")
        for line in whole:
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                self.torn += 1
                continue
            self.sent[(record["enrollment_id"], record["step"])] += 1
            self.lines += 1
        return self.lines


async def wait_for(predicate: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def unsettled(
    store: Store, eids: list[str], *, started_only: bool = False
) -> set[tuple[str, int]]:
    """(enrollment, step) of every claim left unsettled (a lease score in its queue):
    the steps a crash may have sent without recording it. `started_only`: only those
    whose sends had started (a lease whose token is in `lease_starts`, or a lease score
    with no lease record: a send released or taken back after it started)."""
    pipe = store.client.pipeline(transaction=False)
    for eid in eids:
        pipe.hget(store.keys.enrollment(ids.shard_of(eid, store.shards), eid), "s")
    seqs = await pipe.execute()
    pipe = store.client.pipeline(transaction=False)
    for eid, seq in zip(eids, seqs, strict=True):
        shard = ids.shard_of(eid, store.shards)
        pipe.zscore(store.keys.queue(shard, seq or ""), eid)
        pipe.hget(store.keys.enrollment(shard, eid), "i")
    rows = await pipe.execute()
    pipe = store.client.pipeline(transaction=False)
    for shard in range(store.shards):
        pipe.smembers(store.keys.lease_starts(shard))
        pipe.zrange(store.keys.leases(shard), 0, -1)
    marks = await pipe.execute()
    starts = [set(m) for m in marks[::2]]
    records = [set(m) for m in marks[1::2]]
    out = set()
    for eid, score, step in zip(eids, rows[::2], rows[1::2], strict=True):
        if not is_unsettled(score):
            continue
        if started_only:
            shard = ids.shard_of(eid, store.shards)
            token = f"{math.floor(score)}.5"
            if token in records[shard] and token not in starts[shard]:
                continue
        out.add((eid, int(step)))
    return out


async def counter_mismatches(store: Store, sid: str) -> list[str]:
    """Every shard's `n:<seq>` counter that differs from its listing index's ZCARD."""
    pipe = store.client.pipeline(transaction=False)
    statuses = [s.value for s in models.EnrollmentStatus]
    for shard in range(store.shards):
        pipe.hgetall(store.keys.counts(shard, sid))
        for status in statuses:
            pipe.zcard(store.keys.status_index(shard, sid, status))
    rows = await pipe.execute()
    out = []
    width = 1 + len(statuses)
    for shard in range(store.shards):
        counts, *cards = rows[shard * width : (shard + 1) * width]
        for status, card in zip(statuses, cards, strict=True):
            if int(counts.get(status, 0)) != card:
                out.append(f"shard {shard} {status}: n={counts.get(status, 0)} ix={card}")
    return out
