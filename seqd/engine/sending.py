"""Sending a piece's jobs: bounded concurrency per channel, a bounded wait, and the sends
that outlive it.

A lane leases no more of a channel's steps than its send slots not held by sends in
flight (`room`), so what it leases starts at once: a step counts as a send that may have
happened only once its piece's sends are about to go out.

A round waits at most `send_wait_seconds` for its sends: slower ones (a provider that
hangs) finish in the background, their outcomes wait here for a later round's advance
(`take_late`), and they keep their slots, so one slow provider holds up only its own
channel.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from seqd.channels.base import SendResult
from seqd.config import DispatchConfig
from seqd.engine.compose import Job
from seqd.engine.ports import Observer, SenderSource
from seqd.engine.slots import Slots
from seqd.store.settles import Settled

log = structlog.get_logger(__name__)

# Steps composed or sent between two yields to the event loop (about 1-2 ms of work), so
# HTTP requests served by the same loop wait that long at most, not a whole batch.
YIELD_EVERY = 64


class Sending:
    def __init__(
        self,
        config: DispatchConfig,
        senders: SenderSource,
        observer: Observer,
        clock: Callable[[], int],
        aborted: Callable[[], asyncio.Future[None] | None],
    ) -> None:
        self.config = config
        self.senders = senders
        self.observer = observer
        self.clock = clock
        # Set when the drain timeout passes: sends in flight are given up and released.
        self._aborted = aborted
        self._limits: dict[str, Slots] = {}
        # Sends a round stopped waiting for: their outcomes, per shard, wait here for the
        # next round's advance; `busy` counts them per channel.
        self.late: dict[int, list[Settled]] = defaultdict(list)
        self.stragglers: set[asyncio.Task[None]] = set()
        self.busy: dict[str, int] = defaultdict(int)
        # Jobs admitted whose send has not started yet, per channel, and the lanes waiting
        # for them to start.
        self.pending: dict[str, int] = defaultdict(int)
        self._started: list[asyncio.Future[None]] = []

    def take_late(self) -> dict[int, list[Settled]]:
        late, self.late = self.late, defaultdict(list)
        return late

    async def drain(self) -> None:
        """On stop: let background sends finish until the drain times out, then give up on
        the rest (their outcomes then say so: released, kept as a claim when a send had
        started)."""
        if not self.stragglers:
            return
        waiting = asyncio.gather(*self.stragglers, return_exceptions=True)
        watch: set[asyncio.Future[Any]] = {waiting}
        abort = self._aborted()
        if abort is not None:
            watch.add(abort)
        await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
        for task in self.stragglers:
            task.cancel()
        await asyncio.wait(self.stragglers)

    def _limit(self, kind: str) -> Slots:
        slots = self._limits.get(kind)
        if slots is None:
            slots = self._limits[kind] = Slots(self.config.concurrency)
        return slots

    def room(self, kind: str) -> int:
        """Send slots of `kind` not held by a send in flight (a slot is held for the time
        of a send)."""
        return self._limit(kind).free

    def least_room(self) -> int:
        """The fewest free send slots of any channel (every slot of one not sent on yet)."""
        return min((slots.free for slots in self._limits.values()), default=self.config.concurrency)

    async def admit(self, jobs: list[Job]) -> tuple[list[Job], list[Job], list[Job]]:
        """Jobs to send now, those put back at once and those put back for a moment.

        A channel admits no more jobs than its free slots not promised to jobs admitted
        before (`pending`, other lanes' pieces about to start), so a job admitted, and so
        marked as started, never waits for a slot: it starts at once. While other lanes'
        admitted jobs and this round's sends hold the slots it needs, it waits for them
        (they end as fast as they start with a fast provider), at most send_wait_seconds;
        what still finds no slot then is put back, and for a moment when sends that
        outlived their round hold every slot. (It waits holding nothing, so no two lanes
        wait on each other.)"""
        by_kind: dict[str, list[Job]] = {}
        for job in jobs:
            by_kind.setdefault(job.kind, []).append(job)
        loop = asyncio.get_running_loop()
        for kind in sorted(by_kind):
            slots, want = self._limit(kind), len(by_kind[kind])
            # Other lanes' admitted jobs about to start, and this round's sends, hold the
            # other slots: wait for them (at most as long as a round waits for its sends)
            # rather than put jobs back. A job put back was leased and composed, and is
            # released, peeked and leased again: a quarter of a burst's steps were, 4
            # lanes of 200 steps sharing 256 slots. (Sends that outlive their round count
            # in `busy`, and their slots are not waited for.)
            fits = min(want, self.config.concurrency - self.busy[kind])
            until = loop.time() + self.config.send_wait_seconds
            while slots.free - self.pending[kind] < fits and (
                self.pending[kind] or self._sending(kind, slots)
            ):
                left = until - loop.time()
                if left <= 0:
                    break
                waiter = loop.create_future()
                self._started.append(waiter)
                await asyncio.wait({waiter}, timeout=left)
        admitted: list[Job] = []
        now: list[Job] = []
        later: list[Job] = []
        for kind, group in by_kind.items():
            if self.busy[kind] >= self.config.concurrency:
                later += group
                continue
            room = max(0, self._limit(kind).free - self.pending[kind])
            now += group[room:]
            group = group[:room]
            self.pending[kind] += len(group)
            for job in group:
                job.pending = True
            admitted += group
        return admitted, now, later

    def _sending(self, kind: str, slots: Slots) -> bool:
        """Whether sends of this round (not stragglers) hold slots of `kind`."""
        return self.config.concurrency - slots.free - self.busy[kind] > 0

    def _settled_pending(self, job: Job) -> None:
        """`job` is no longer admitted-and-waiting: wake the lanes waiting to admit."""
        job.pending = False
        self.pending[job.kind] -= 1
        self._wake_admit()

    def _wake_admit(self) -> None:
        waiters, self._started = self._started, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def not_sent(self, jobs: list[Job]) -> None:
        """Admitted jobs whose send will not start (given up, or their mark failed)."""
        for job in jobs:
            if job.pending:
                self._settled_pending(job)

    async def send(self, jobs: list[Job]) -> tuple[set[Job], asyncio.Task[None] | None]:
        """Send every job, waiting at most `send_wait_seconds`; returns the jobs whose send
        is still running then (they go on in the background, awaited by the task returned
        with them). On abort (drain timeout), gives up on those in flight."""
        if not jobs:
            return set(), None
        sending = asyncio.ensure_future(self._send_all(jobs))
        watch: set[asyncio.Future[Any]] = {sending}
        abort = self._aborted()
        if abort is not None:
            watch.add(abort)
        try:
            await asyncio.wait(
                watch, timeout=self.config.send_wait_seconds, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            sending.cancel()
            raise
        if sending.done():
            sending.result()
            return set(), None
        if abort is not None and abort.done():
            sending.cancel()
            await asyncio.wait({sending})
            return set(), None
        running = {job for job in jobs if job.result is None}
        task = asyncio.ensure_future(self._finish_later(sending))
        self.stragglers.add(task)
        return running, task

    async def _finish_later(self, sending: asyncio.Future[None]) -> None:
        """Await a round's remaining sends; cancelled on abort, which cancels the sends."""
        try:
            await asyncio.shield(sending)
        except asyncio.CancelledError:
            sending.cancel()
            await asyncio.wait({sending})
            raise
        except Exception:
            log.exception("dispatch.background_send_failed")

    def leave_running(
        self,
        task: asyncio.Task[None],
        running: set[Job],
        outcome: Callable[[Job], Settled],
        shard_of: Mapping[str, int],
    ) -> None:
        """Record `running` jobs when their sends end (or are given up), in a later round."""
        for job in running:
            self.busy[job.kind] += 1

        def done(_: asyncio.Future[None]) -> None:
            self.stragglers.discard(task)
            for job in running:
                self.busy[job.kind] -= 1
                self.late[shard_of[job.id]].append(outcome(job))

        task.add_done_callback(done)

    async def _send_all(self, jobs: list[Job]) -> None:
        """Workers pull jobs in order; a new worker starts only while the others wait on
        a send, so a sender that never suspends runs the batch in one task, and a slow
        one gets up to `concurrency` sends in flight."""
        count = len(jobs)
        position = 0

        async def worker() -> None:
            nonlocal position
            while position < count:
                job = jobs[position]
                position += 1
                await self._send_one(job)
                if position % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # a sender that never suspends: let the API in

        workers: list[asyncio.Task[None]] = []
        try:
            while position < count and len(workers) < self.config.concurrency:
                workers.append(asyncio.ensure_future(worker()))
                await asyncio.sleep(0)
            await asyncio.gather(*workers)
        except BaseException:
            for task in workers:
                task.cancel()
            if workers:
                await asyncio.wait(workers)
            raise
        finally:
            self.not_sent(jobs)

    async def _send_one(self, job: Job) -> None:
        message = job.message
        slots = self._limit(job.kind)
        if not slots.try_take():
            await slots.take()
        if job.pending:
            self._settled_pending(job)
        try:
            start = self.clock()
            job.started = True
            self.observer.lateness((start - job.due) / 1000)
            try:
                origin = message.sender
                if origin is not None and origin.smtp_profile is not None:
                    sender = self.senders.get(message.tenant, job.kind, origin.smtp_profile)
                else:
                    sender = self.senders.get(message.tenant, job.kind)
                result = await sender.send(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Senders answer for the provider and raise only for a bug: the message may
                # or may not have gone out.
                log.exception("dispatch.sender_error", enrollment_id=job.id, step=job.step)
                result = SendResult(outcome="unknown", error=f"{type(exc).__name__}: {exc}")
            job.result = result
            job.at = self.clock()
            # By channel (sms, email), whichever provider sends it: what operators watch.
            self.observer.step_sent(job.kind, result.outcome)
        finally:
            slots.give()
            if self._started:  # a lane waits for a slot to admit its jobs
                self._wake_admit()
