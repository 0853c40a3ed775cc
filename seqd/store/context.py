"""What every store facade works with: the Redis client, the deployment's key builder and
the script runner, and the two listing reads they share.

The facades take a `StoreContext` (the `Store` is one) rather than the `Store`, so they
import nothing back from `db.py`, which builds them.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence

from seqd.store.client import Client
from seqd.store.keys import Keys
from seqd.store.scripts import Runner


class StoreContext:
    def __init__(self, client: Client, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self.shards = keys.shards
        self.runner = Runner(client)
        # Called (in this process) when this process has just made steps due now: the
        # dispatcher's wake, so an enrollment due at once is sent without an idle poll.
        self.due_now: list[Callable[[], None]] = []
        # And told to the processes that share this one's work (a supervisor's workers,
        # whose dispatchers each take their own share of the shards), if any.
        self.due_elsewhere: Callable[[], None] | None = None

    def made_due(self) -> None:
        self.woken()
        if self.due_elsewhere is not None:
            self.due_elsewhere()

    def woken(self) -> None:
        """Steps are due now (made by this process or a sibling): wake the dispatcher."""
        for wake in self.due_now:
            wake()

    async def merged_range(
        self, index_keys: Sequence[str], after: str | None, limit: int
    ) -> tuple[list[str], bool]:
        """Ids from several lex-ordered ZSETs (scores all 0), merged, after a cursor.

        Returns up to `limit` ids and whether more follow.
        """
        start = f"({after}" if after else "-"
        pipe = self.client.pipeline(transaction=False)
        for key in index_keys:
            pipe.zrange(key, start, "+", bylex=True, offset=0, num=limit + 1)
        ranges: list[list[str]] = await pipe.execute()
        merged = list(heapq.merge(*ranges))
        return merged[:limit], len(merged) > limit

    async def total(self, index_keys: Sequence[str]) -> int:
        pipe = self.client.pipeline(transaction=False)
        for key in index_keys:
            pipe.zcard(key)
        return sum(await pipe.execute())
