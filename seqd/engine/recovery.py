"""A dispatching process's heartbeat, and the taking back of leases no process will settle.

Every `heartbeat_seconds` the process records its id with the time (store/dispatch.py
`Workers`) and, in one round trip (`reclaimLeases` per shard), takes back the leases of
the processes not heard from for DEAD_AFTER heartbeats and those past their end. So the
steps of a process that died come back within about DEAD_AFTER + 1 heartbeats (BullMQ's
lock renewal and Sidekiq's super_fetch recover a dead worker's jobs the same way), not
after a whole lease; its fencing tokens no longer hold, so if it was only stalled its
late advances are stale. A process that starts under the id of one that died (a
restart) takes that one's leases back at once.

A step whose send had started (the lease's token in `lease_starts`, written right before
the first send) comes back as a send that may have happened (`dispatch.on_unknown`); one
never handed to a channel comes back as a plain due step, no attempt counted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import structlog

from seqd.config import DispatchConfig
from seqd.loop import Loop
from seqd.store.db import Store
from seqd.store.dispatch import Dispatch, Reclaimed, Workers
from seqd.times import now_ms

log = structlog.get_logger(__name__)

# Heartbeats missed before a process counts as gone: a loop stalled for a moment (a GC
# pause, a slow round) is not a dead process.
DEAD_AFTER = 3


class Recovery:
    def __init__(
        self,
        store: Store,
        config: DispatchConfig,
        worker: str,
        *,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.dispatch = Dispatch(store)
        self.workers = Workers(store)
        self.worker = worker
        self.clock = clock
        self.interval = config.heartbeat_seconds
        self.dead_after = int(DEAD_AFTER * config.heartbeat_seconds * 1000)
        # A failed beat (Redis away) is tried again after the interval, then back-off; the
        # leases wait for the next beat (or their end).
        self.loop = Loop(
            "dispatch.recovery",
            self._turn,
            idle_seconds=self.interval,
            deadline_seconds=DEAD_AFTER * self.interval,
            failed_event="dispatch.recovery_failed",
        )

    async def start(self) -> None:
        """Beat, take back this id's previous leases (its process is gone: this one has its
        id), then beat on in the background."""
        now = self.clock()
        await self.workers.beat(self.worker, now)
        got = await self.dispatch.reclaim(now, [self.worker])
        self._report(got, [self.worker])
        self.loop.start()

    async def stop(self) -> None:
        """Stop beating and leave the registry (the dispatcher has settled or released its
        leases by now)."""
        await self.loop.stop(self.interval)
        with contextlib.suppress(Exception):
            await self.workers.forget([self.worker], self.clock() + 1)

    async def run_once(self) -> Reclaimed:
        """Beat, and take back the leases of gone processes and those past their end."""
        now = self.clock()
        await self.workers.beat(self.worker, now)
        dead = [w for w in await self.workers.dead(now, self.dead_after) if w != self.worker]
        got = await self.dispatch.reclaim(now, dead)
        if dead:
            await self.workers.forget(dead, now - self.dead_after)
        self._report(got, dead)
        return got

    def _report(self, got: Reclaimed, dead: list[str]) -> None:
        if got.plain or got.unknown or dead:
            log.info(
                "dispatch.leases_reclaimed",
                workers=dead,
                leases=got.leases,
                not_started=got.plain,
                started=got.unknown,
            )

    async def _turn(self) -> float:
        await self.run_once()
        return self.interval
