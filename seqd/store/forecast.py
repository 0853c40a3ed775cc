"""What the due index says will go when: counts of queued steps per time bucket.

Read only. A step's queue score is the moment it will go, already moved by windows, quiet
hours, skip dates and jitter when it was scheduled, so counting scores per bucket is
exact for what is queued now; a send-time deferral (a sender out of budget, a frequency
cap) moves a step only when it comes due, and then shows in the next forecast. A step's
sender is known before it goes only where its pool has one sender or its contact is
pinned to one (sticky rotation); `count_sender` counts those, and the rest of a pool's
steps apart.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from seqd import models
from seqd.kinds import SPECS, Kind
from seqd.store.context import StoreContext

# Members read per page when a step's kind must be looked up enrollment by enrollment.
_PAGE = 5000
# What a member is to a count (`Forecasts._by_member`).
_COUNTED, _UNASSIGNED = "counted", "unassigned"


class Forecasts:
    def __init__(self, store: StoreContext) -> None:
        self.store = store
        self.keys = store.keys

    async def count(
        self,
        sequences: Sequence[models.Sequence],
        edges: Sequence[int],
        kind: Kind | None,
    ) -> tuple[int, list[int]]:
        """Steps of `sequences`' queues due before `edges[0]` (overdue) and in each
        [edges[i], edges[i+1]); with `kind`, only steps of that kind."""
        counts = [0] * (len(edges) - 1)
        overdue = 0
        mixed: list[models.Sequence] = []
        pipe = self.store.client.pipeline(transaction=False)
        for seq in sequences:
            kinds = {step.kind for step in seq.steps}
            if kind is not None and kind not in kinds:
                continue
            if kind is not None and kinds != {kind}:
                mixed.append(seq)
                continue
            for shard in range(self.keys.shards):
                queue = self.keys.queue(shard, seq.id)
                pipe.zcount(queue, "-inf", f"({edges[0]}")
                for lo, hi in itertools.pairwise(edges):
                    pipe.zcount(queue, lo, f"({hi}")
        replies = await pipe.execute() if len(pipe) else []
        width = len(edges)
        for row in range(0, len(replies), width):
            overdue += int(replies[row])
            for i in range(width - 1):
                counts[i] += int(replies[row + 1 + i])
        for seq in mixed:
            assert kind is not None
            o, c = await self._by_step(seq, edges, kind)
            overdue += o
            counts = [a + b for a, b in zip(counts, c, strict=True)]
        return overdue, counts

    async def _by_step(
        self, seq: models.Sequence, edges: Sequence[int], kind: Kind
    ) -> tuple[int, list[int]]:
        """`count` for a sequence whose steps are of several kinds: each queued member's
        next step read from its enrollment, a page at a time (memory bounded by `_PAGE`)."""
        wanted = {n for n, step in enumerate(seq.steps) if step.kind == kind}
        overdue, counts, _ = await self._by_member(
            seq, edges, ("i",), lambda got: _COUNTED if _step(got) in wanted else None
        )
        return overdue, counts

    async def count_sender(
        self,
        sequences: Sequence[models.Sequence],
        edges: Sequence[int],
        sender: str,
        kind: Kind,
        pools: Mapping[str, Sequence[str]],
    ) -> tuple[int, list[int], int]:
        """As `count`, for the steps known now to go from `sender` (of channel `kind`): of
        a sequence whose `kind` pool is `sender` alone, or whose contact a sticky rotation
        pinned to it. `pools`: sequence id -> its `kind` pool's senders that exist (as the
        dispatcher takes them). Also returns the steps before `edges[-1]` of a pool with
        `sender` whose sender is picked when they go (round robin, a sticky contact not
        pinned yet, or pinned to a sender gone from the pool): they may go from it."""
        counts = [0] * (len(edges) - 1)
        overdue = unassigned = 0
        pin_field = SPECS[kind].sender_field
        assert pin_field is not None
        for seq in sequences:
            pool = pools.get(seq.id, ())
            if sender not in pool:
                continue
            wanted = {n for n, step in enumerate(seq.steps) if step.kind == kind}
            classify = _sender_of(sender, pool, seq.rotation == "sticky", wanted)
            o, c, u = await self._by_member(seq, edges, ("i", pin_field), classify)
            overdue += o
            unassigned += u
            counts = [a + b for a, b in zip(counts, c, strict=True)]
        return overdue, counts, unassigned

    async def _by_member(
        self,
        seq: models.Sequence,
        edges: Sequence[int],
        fields: Sequence[str],
        classify: Callable[[Sequence[str | None]], str | None],
    ) -> tuple[int, list[int], int]:
        """Overdue and per-bucket counts of `seq`'s queued members that `classify` (given
        their enrollment's `fields`) counts, and how many it calls unassigned; read a page
        at a time (memory bounded by `_PAGE`)."""
        counts = [0] * (len(edges) - 1)
        overdue = unassigned = 0
        client = self.store.client
        for shard in range(self.keys.shards):
            queue = self.keys.queue(shard, seq.id)
            offset = 0
            while True:
                rows: list[Any] = await client.zrange(
                    queue,
                    "-inf",
                    f"({edges[-1]}",
                    byscore=True,
                    offset=offset,
                    num=_PAGE,
                    withscores=True,
                )
                if not rows:
                    break
                offset += len(rows)
                pipe = client.pipeline(transaction=False)
                for eid, _ in rows:
                    pipe.hmget(self.keys.enrollment(shard, str(eid)), fields)
                read = await pipe.execute()
                for (_, score), got in zip(rows, read, strict=True):
                    what = classify(got)
                    if what is None:
                        continue
                    if what == _UNASSIGNED:
                        unassigned += 1
                        continue
                    at = bisect.bisect_right(edges, score) - 1
                    if at < 0:
                        overdue += 1
                    else:
                        counts[at] += 1
                if len(rows) < _PAGE:
                    break
        return overdue, counts, unassigned


def _step(got: Sequence[str | None]) -> int | None:
    """The step index of an enrollment's `i` (first of the fields read); None when gone."""
    return None if got[0] is None else int(got[0])


def _sender_of(
    sender: str, pool: Sequence[str], sticky: bool, wanted: set[int]
) -> Callable[[Sequence[str | None]], str | None]:
    """What an enrollment (its `i` and its pin) is to `sender`'s count: its step is one
    of `wanted` and goes from `sender` (the pool is `sender` alone, or the contact is
    pinned to it), or its sender is picked when it goes (unassigned), or neither (None):
    senders.budget.ask's rule, read ahead."""
    alone = len(pool) == 1

    def classify(got: Sequence[str | None]) -> str | None:
        if _step(got) not in wanted:
            return None
        pinned = got[1] if sticky else None
        if alone or pinned == sender:
            return _COUNTED
        return None if pinned is not None and pinned in pool else _UNASSIGNED

    return classify
