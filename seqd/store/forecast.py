"""What the due index says will go when: counts of queued steps per time bucket.

Read only. A step's queue score is the moment it will go, already moved by windows, quiet
hours, skip dates and jitter when it was scheduled, so counting scores per bucket is
exact for what is queued now; a send-time deferral (a sender out of budget, a frequency
cap) moves a step only when it comes due, and then shows in the next forecast.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from typing import Any

from seqd import models
from seqd.kinds import Kind
from seqd.store.context import StoreContext

# Members read per page when a step's kind must be looked up enrollment by enrollment.
_PAGE = 5000


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
        counts = [0] * (len(edges) - 1)
        overdue = 0
        wanted = {n for n, step in enumerate(seq.steps) if step.kind == kind}
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
                    pipe.hget(self.keys.enrollment(shard, str(eid)), "i")
                steps = await pipe.execute()
                for (_, score), step in zip(rows, steps, strict=True):
                    if step is None or int(step) not in wanted:
                        continue
                    at = bisect.bisect_right(edges, score) - 1
                    if at < 0:
                        overdue += 1
                    else:
                        counts[at] += 1
                if len(rows) < _PAGE:
                    break
        return overdue, counts
