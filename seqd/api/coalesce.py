"""Single enrollment requests that arrive together share the bulk path's round trips.

Automation tools enroll one contact per request, many requests at once. Each request on
its own costs two round trips (the sequence and the suppression lists, then the `enroll`
script) and one script call, most of it fixed overhead in seqd and in Redis. Requests for
the same sequence that reach this point in the same turn of the event loop are enrolled
together, through `bulk.target` and `bulk.enroll`, at the end of that turn: the batch
endpoint's path, with each request answered from its own item's outcome.

Nothing waits for company: a request alone is sent at the end of the turn it arrived in,
as soon as it would have been without this. And the group's reads are sent after every
request in it arrived, so a suppression stored before a request began is always seen by
it, as with one read per request.
"""

from __future__ import annotations

import asyncio
import contextvars

from seqd import bulk
from seqd.store.db import Store
from seqd.timing.policy import Policy

# Items enrolled in one go at most; more arriving in the same turn start another group.
MAX_GROUP = 500
# Groups of one sequence being enrolled at once: requests that arrive meanwhile wait for
# one of them to finish (a round trip or two), then go together (group commit).
MAX_IN_FLIGHT = 2
# Requests waiting on one group: each item and its request's answer.
Group = list[tuple[bulk.Item, asyncio.Future[bulk.ItemOutcome]]]


class Coalescer:
    """Groups `bulk.Item`s by (tenant, sequence) until the end of the loop's turn."""

    __slots__ = ("_groups", "_in_flight", "_running", "policy", "store")

    def __init__(self, store: Store, policy: Policy | None = None) -> None:
        self.store = store
        self.policy = policy
        self._groups: dict[tuple[str, str], Group] = {}
        self._in_flight: dict[tuple[str, str], int] = {}
        # Strong references: the loop keeps only weak ones to tasks.
        self._running: set[asyncio.Task[None]] = set()

    def enroll(self, tenant: str, sid: str, item: bulk.Item) -> asyncio.Future[bulk.ItemOutcome]:
        """The item's outcome; a failure of its whole group (an unknown or inactive
        sequence, Redis unreachable) is raised by the future instead."""
        loop = asyncio.get_running_loop()
        key = (tenant, sid)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = []
            if self._in_flight.get(key, 0) < MAX_IN_FLIGHT:
                loop.call_soon(self._flush, key, group)
        future: asyncio.Future[bulk.ItemOutcome] = loop.create_future()
        group.append((item, future))
        if len(group) >= MAX_GROUP:
            self._flush(key, group)
        return future

    def _flush(self, key: tuple[str, str], group: Group) -> None:
        if self._groups.get(key) is not group:
            return  # it went already (it filled up, or was scheduled twice)
        del self._groups[key]
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        # In a context of its own: not the request id (logs) of whichever request came first.
        task = asyncio.get_running_loop().create_task(
            self._run(key, group), context=contextvars.Context()
        )
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def _finished(self, key: tuple[str, str]) -> None:
        left = self._in_flight.pop(key) - 1
        if left:
            self._in_flight[key] = left
        waiting = self._groups.get(key)
        if waiting is not None:
            asyncio.get_running_loop().call_soon(self._flush, key, waiting)

    async def _run(self, key: tuple[str, str], group: Group) -> None:
        tenant, sid = key
        try:
            into = await bulk.target(self.store, tenant, sid)
            outcomes = await bulk.enroll(
                self.store, tenant, into.seq, into.version, [item for item, _ in group],
                listed=into.listed, timing=into.timing(self.policy) if self.policy else None,
            )  # fmt: skip
            for (_, future), outcome in zip(group, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)
        except Exception as exc:
            # Whatever went wrong, every request still waiting gets an answer.
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
        except BaseException:
            for _, future in group:
                future.cancel()
            raise
        finally:
            self._finished(key)

    async def drain(self) -> None:
        """Wait for the groups being enrolled (on shutdown)."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
