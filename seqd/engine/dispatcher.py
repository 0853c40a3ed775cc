"""The dispatcher: claim due steps, render, send, advance; one class, one loop.

A round (`run_once`) polls every shard's earliest due score and due count in one
pipeline, cuts the due shards into pieces of about one batch each, and `lanes` workers
take the pieces in turn, each as peek (`claimDue` in peek mode per shard: read, nothing
leased) → lease and screen (`leasePeeked` per shard and the suppression reads) → compose
→ send (bounded concurrency per channel) → advance (one `advance` call per shard). A
worker's wait on Redis does one piece's advance, the next one's lease and screen and the
one after's peek: one round trip per piece. Workers interleave so that Python composes
one piece while Redis runs another's scripts; when little is due every due shard is in
one piece, which keeps a round to a few round trips (redis-py's cost per call is what a
lightly loaded round spends its time on).

Between rounds the loop sleeps until the earliest due time, at most `idle_poll_ms`
(jittered, so several processes do not poll in step); `stop()` wakes it at once. A step
fires a few ms after its due time when the loop knew of it in advance, and within one
idle poll when it was enrolled due immediately.

Delivery promise: at least once. A claim leases the step (its due score moves to now +
lease - 0.5 ms, which is also the claim's fencing token); a worker that dies leaves the
step to come back when the lease passes, and a late worker's advance is ignored (stale
token). So a step is sent twice at most per crash that hits it between its send and its
advance. A step is leased only in the round trip right before its send, so a piece a
dead worker had only peeked at comes back at once, with no attempt counted.

A round waits at most `send_wait_seconds` for its sends: slower ones (a provider that
hangs) finish in the background and a later round advances them, and a channel whose
slots are all held that way gets its due steps put back for a moment, so one slow
provider holds up only its own channel.

Shutdown (`stop()`): no new claims; the batch in flight and the background sends may
finish for up to `drain_timeout_seconds`; what has not been sent by then is released
(due again at once, token bumped) and what has been sent is advanced.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from seqd import models
from seqd.appkeys import LIVENESS, METRICS, POLICY, STORE
from seqd.backoff import Backoff
from seqd.channels.base import OutboundMessage, SendResult
from seqd.config import Config, DispatchConfig
from seqd.engine.compose import Job, compose, suppressed_reason
from seqd.engine.plans import Plan, Plans
from seqd.engine.ports import Observer, Quiet, SenderSource
from seqd.engine.rounds import Lane, Round, cut_pieces
from seqd.engine.slots import Slots
from seqd.engine.timetable import Timetable
from seqd.errors import NotFound
from seqd.health import Heart
from seqd.kinds import ADDRESS_FIELD
from seqd.store.db import Store
from seqd.store.dispatch import (
    Advanced,
    ClaimBatch,
    Claimed,
    Dispatch,
    Leased,
    Outcome,
    Settle,
    SuppressionRecord,
    Trip,
)
from seqd.store.mirrors import version_of
from seqd.times import now_ms
from seqd.timing.policy import Policy

log = structlog.get_logger(__name__)

NAME = "dispatcher"
# A step of a channel whose every slot is busy is put back this long (no attempt counted).
DEFER_MS = 1000
# How long a round goes on taking the next batch of shards whose claim was full.
ROUND_MS = 1000
# Steps composed or sent between two yields to the event loop (about 1-2 ms of work), so
# HTTP requests served by the same loop wait that long at most, not a whole batch.
YIELD_EVERY = 64
_NO_SUPPRESSIONS: Mapping[str, SuppressionRecord] = {}


class Dispatcher:
    def __init__(
        self,
        store: Store,
        config: DispatchConfig,
        senders: SenderSource,
        *,
        clock: Callable[[], int] = now_ms,
        observer: Observer | None = None,
        liveness: Heart | None = None,
        email_headers: Callable[[OutboundMessage], Mapping[str, str]] | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.store = store
        # Headers added to every email (List-Unsubscribe: lifecycle.unsubscribe).
        self.email_headers = email_headers
        self.config = config
        self.senders = senders
        self.clock = clock
        self.observer: Observer = observer or Quiet()
        self.liveness = liveness
        self.dispatch = Dispatch(store)
        self.plans = Plans(store)
        # Windows and quiet hours (none without a policy: every step at its wait_minutes).
        self.timetable = Timetable(store, policy, clock=clock) if policy is not None else None
        self._lease_ms = int(config.lease_seconds * 1000)
        self._backoff_ms = [s * 1000 for s in config.retry_backoff_seconds] or [0]
        self._limits: dict[str, Slots] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        # Set when the drain timeout passes: sends in flight are given up and released.
        self._abort: asyncio.Future[None] | None = None
        # Sends a round stopped waiting for (send_wait_seconds): their outcomes, per shard,
        # wait here for the next round's advance; `_busy` counts them per channel.
        self._late: dict[int, list[Settle]] = defaultdict(list)
        self._stragglers: set[asyncio.Task[None]] = set()
        self._busy: dict[str, int] = defaultdict(int)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._stopping.clear()
        self._abort = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(), name=NAME)

    async def stop(self) -> None:
        """Stop claiming, let the batch in flight finish (bounded), release the rest."""
        self._stopping.set()
        task = self._task
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), self.config.drain_timeout_seconds)
        except TimeoutError:
            log.warning("dispatch.drain_timeout", seconds=self.config.drain_timeout_seconds)
            if self._abort is not None and not self._abort.done():
                self._abort.set_result(None)
            # Releasing is one script call per shard; it gets the same time again at most.
            try:
                await asyncio.wait_for(asyncio.shield(task), self.config.drain_timeout_seconds)
            except TimeoutError:
                task.cancel()
                await asyncio.wait({task})
        finally:
            self._task = None
            if self.liveness is not None:
                self.liveness.stopped(NAME)

    async def _run(self) -> None:
        idle_s = self.config.idle_poll_ms / 1000
        # A turn may legitimately take the drain timeout (slow provider) plus a few polls.
        deadline = self.config.drain_timeout_seconds + 10 * idle_s + 30
        log.info("dispatch.started", batch_size=self.config.batch_size)
        backoff = Backoff(idle_s)
        while not self._stopping.is_set():
            if self.liveness is not None:
                self.liveness.beat(NAME, deadline)
            now = self.clock()
            try:
                done = await self.run_once(now)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Redis away, a bug in one batch: claimed steps come back after their
                # lease, so the loop only has to survive and try again shortly.
                log.exception("dispatch.round_failed")
                await self._sleep(backoff.failed())
                continue
            backoff.reset()
            if done.more or done.claimed:
                continue
            # Jitter only the idle cap: a known due time is slept to exactly.
            cap = idle_s * (0.75 + 0.25 * random.random())
            wait = cap
            if done.next_due is not None:
                wait = min(cap, max(0.0, (done.next_due - self.clock()) / 1000))
            await self._sleep(wait)
        await self._drain_stragglers()
        log.info("dispatch.stopped")

    async def _drain_stragglers(self) -> None:
        """On stop: let background sends finish until the drain times out, then give up on
        the rest (released, the claim kept when a send had started), and record them all."""
        if self._stragglers:
            waiting = asyncio.gather(*self._stragglers, return_exceptions=True)
            watch: set[asyncio.Future[Any]] = {waiting}
            if self._abort is not None:
                watch.add(self._abort)
            await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
            for task in self._stragglers:
                task.cancel()
            await asyncio.wait(self._stragglers)
        await self._flush_late()

    async def _flush_late(self) -> None:
        """Advance the outcomes of background sends that have finished since the last round."""
        if not self._late:
            return
        late, self._late = self._late, defaultdict(list)
        await asyncio.shield(
            self.dispatch.advance_many(
                late, now=self.clock(), max_attempts=self.config.max_attempts
            )
        )
        self.observer.settled(sum(len(items) for items in late.values()))

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- one round ------------------------------------------------------------------------
    async def run_once(self, now: int) -> Round:
        """Poll, then claim → send → advance every due shard, in batch-sized pieces worked
        by `lanes` concurrent workers."""
        await self._flush_late()
        heads = await self.dispatch.heads(now)
        due = [(s, n) for s, (at, n) in enumerate(heads) if at is not None and at <= now]
        later = [at for at, _ in heads if at is not None and at > now]
        result = Round(next_due=min(later) if later else None)
        if not due or self._stopping.is_set():
            return result
        config = self.config
        # In an order of this round's own: processes sharing the store then mostly peek at
        # different shards (two peeks of the same steps lease them for one of them only).
        random.shuffle(due)
        pieces = cut_pieces(due, config.batch_size)
        done: list[Lane] = []
        started = self.clock()

        async def worker() -> None:
            # Pieces are taken in turn, so one worker composes while another waits on Redis.
            # A worker holds up to two pieces: one peeked at (its due steps read, nothing
            # written) and one sent (waiting for its advance). Each wait on Redis settles
            # the sent one, leases the peeked one and screens its addresses, and peeks at
            # the next (one round trip per batch, the screening included); then the leased
            # piece is composed and sent. The shards whose peek was full are the worker's
            # next piece (peeked at right after their lease, in the same round trip) while
            # the round is under ROUND_MS old: a backlog is worked through without a wait
            # of its own, and the loop still gets its turn (liveness, late outcomes, a
            # fresh `now`) that often.
            owed: _Owed | None = None
            held: _Held | None = None
            full: list[int] = []  # the shards of the last peek that was a full batch
            while True:
                shards: list[int] = []
                if full and not self._stopping.is_set():
                    if self.clock() - started < ROUND_MS:
                        shards = full
                    else:
                        result.more = True
                if not shards and pieces and not self._stopping.is_set():
                    shards = pieces.pop()
                if self._stopping.is_set():
                    held = None  # peeked at, not leased: nothing of it is ours to send
                if not shards and owed is None and held is None:
                    return
                trip = await self._trip(owed, held, shards, now)
                if owed is not None:
                    done.append(await self._settled(owed, trip.advanced))
                owed = None
                taken: set[int] = set()
                if held is not None:
                    taken = _leased(held, trip.leased)
                    if held.items:
                        owed = await self._work(held, self._hits(held, trip.found), now)
                # (Not a shard where another worker, another process, leased some of the
                # peek first: it works that shard, and chasing it would peek at the same
                # steps as it again.)
                full = [
                    shard
                    for shard, batch in trip.claims.items()
                    if batch.seen >= config.batch_size and shard not in taken
                ]
                held = await self._held(trip.claims)

        workers = min(config.lanes, len(pieces))
        outcomes = await asyncio.gather(*(worker() for _ in range(workers)), return_exceptions=True)
        for lane in done:
            result.claimed += lane.claimed
            result.sent += lane.sent
            result.settled += lane.settled
            result.stale += lane.stale
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        # Left in the queue (stopping, a failed lane): more may be due.
        result.more = result.more or bool(pieces)
        return result

    async def _trip(
        self, owed: _Owed | None, held: _Held | None, shards: list[int], now: int
    ) -> Trip:
        """Advance what `owed` sent, lease `held` and read the suppressions of its
        addresses, peek at `shards`: one round trip. The sends happened: recording them
        must not be interrupted by a cancellation. (When a script of the trip fails, the
        store releases what the trip leased; when the connection fails, what it may have
        leased comes back when the lease passes.)"""
        config = self.config
        return await asyncio.shield(
            self.dispatch.advance_and_claim(
                owed.settles if owed is not None else {},
                now=self.clock(),
                max_attempts=config.max_attempts,
                claimed=owed.claimed if owed is not None else None,
                shards=shards,
                claim_now=now,
                lease_ms=self._lease_ms,
                limit=config.batch_size,
                on_unknown=config.on_unknown,
                lookups=held.lookups if held is not None else None,
                lease=held.lease if held is not None else None,
                peek=True,
            )
        )

    async def _held(self, batches: Mapping[int, ClaimBatch]) -> _Held | None:
        """What a peek found, with its plans, the addresses to screen and what to lease;
        None if nothing."""
        items: list[Claimed] = []
        shard_of: dict[str, int] = {}
        mirrors: dict[str, str] = {}
        for shard, batch in batches.items():
            items += batch.items
            for item in batch.items:
                shard_of[item.id] = shard
            for sid, mirror in batch.m.items():
                if version_of(mirror) > version_of(mirrors.get(sid, "")):
                    mirrors[sid] = mirror
        if not items:
            return None
        plans = await self._plans(items, mirrors)
        if self.timetable is not None:
            await self.timetable.load(plans, items)
        # The address of each channel a remaining step uses, per (tenant, channel).
        lookups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for item in items:
            plan = plans.get(item.e["s"])
            if plan is None:
                continue
            for kind in plan.kinds_from(int(item.e["i"])):
                value = item.c.get(ADDRESS_FIELD[kind])
                if value:
                    lookups[(item.e["t"], kind)].append(value)
        lease: dict[int, dict[str, tuple[str, list[tuple[str, str]]]]] = defaultdict(dict)
        for item in items:
            shard, seq = shard_of[item.id], item.e["s"]
            queue = lease[shard].get(seq)
            if queue is None:
                queue = lease[shard][seq] = (batches[shard].m[seq], [])
            queue[1].append((item.id, item.e["k"]))
        return _Held(items, shard_of, plans, lookups, lease)

    def _hits(
        self, held: _Held, found: Mapping[tuple[str, str], Mapping[str, SuppressionRecord]]
    ) -> dict[str, dict[str, SuppressionRecord]]:
        """item id -> {channel: record} of the held items' suppressed addresses."""
        if not found:
            return {}
        out: dict[str, dict[str, SuppressionRecord]] = {}
        for item in held.items:
            tenant = item.e["t"]
            for kind, field in ADDRESS_FIELD.items():
                hits = found.get((tenant, kind))
                value = item.c.get(field)
                if hits and value and value in hits:
                    out.setdefault(item.id, {})[kind] = hits[value]
        return out

    async def _work(
        self, held: _Held, suppressed: Mapping[str, Mapping[str, SuppressionRecord]], now: int
    ) -> _Owed:
        """Compose and send a leased and screened piece: what its advance will need."""
        items, shard_of, plans = held.items, held.shard_of, held.plans
        self.observer.claimed(len(items))
        settles: dict[int, list[Settle]] = defaultdict(list)
        jobs: list[Job] = []
        for n, item in enumerate(items, 1):
            if n % YIELD_EVERY == 0:
                # The API shares this event loop: let its requests in between.
                await asyncio.sleep(0)
            plan = plans.get(item.e["s"])
            if plan is None:
                settles[shard_of[item.id]].append(self._unavailable(item, now))
                continue
            if self.timetable is not None:
                closed = self.timetable.deferral(item, plan, now)
                if closed is not None:
                    self.observer.step_deferred(closed.reason or "")
                    settles[shard_of[item.id]].append(closed)
                    continue
            composed = compose(item, plan, suppressed.get(item.id, _NO_SUPPRESSIONS), now)
            if isinstance(composed, Settle) and composed.wait is not None and composed.wait >= 0:
                if self.timetable is not None:  # a skipped step: the next one's time
                    composed.wait = self.timetable.wait_after(
                        plan, item.e, item.c, composed.step, composed.at
                    )
            if isinstance(composed, Job):
                if composed.kind == "email" and self.email_headers is not None:
                    composed.message.headers.update(self.email_headers(composed.message))
                jobs.append(composed)
            else:
                settles[shard_of[item.id]].append(composed)
        if jobs:
            jobs, deferred = self._admit(jobs)
            for job in deferred:
                settles[shard_of[job.id]].append(_of(job, now, "release", delay=DEFER_MS))
            running, task = await self._send(jobs)
            for job in jobs:
                if job in running:
                    continue
                plan = plans[job.message.sequence_id]
                settles[shard_of[job.id]].append(self._settle(job, plan, suppressed))
            if task is not None:
                self._leave_running(task, running, plans, suppressed, shard_of)
        claimed = {item.id: item.e for item in items}
        return _Owed(len(items), settles, claimed, jobs)

    async def _settled(self, owed: _Owed, advanced: Mapping[int, Advanced]) -> Lane:
        """What a piece came to, once its advance is done."""
        self.observer.settled(owed.count)
        stale = sum(len(a.stale) for a in advanced.values())
        if stale:
            log.info("dispatch.stale", shards=sorted(advanced), count=stale)
        await self._report_opt_outs(owed.jobs)
        sent = sum(1 for job in owed.jobs if job.started)
        settled = sum(a.applied + a.late for a in advanced.values())
        return Lane(owed.count, sent, settled, stale)

    async def _plans(self, items: list[Claimed], mirrors: Mapping[str, str]) -> dict[str, Plan]:
        """The plan of each sequence in the batch, at least at its mirror's version."""
        out: dict[str, Plan] = {}
        missing: dict[str, tuple[str, int]] = {}
        tenants = {item.e["s"]: item.e["t"] for item in items}
        for sid, mirror in mirrors.items():
            version = version_of(mirror)
            plan = self.plans.cached(sid, version)
            if plan is not None:
                out[sid] = plan
            else:
                missing[sid] = (tenants[sid], version)
        if missing:
            loaded = await asyncio.gather(
                *(self.plans.load(t, sid, v) for sid, (t, v) in missing.items()),
                return_exceptions=True,
            )
            for sid, got in zip(missing, loaded, strict=True):
                if isinstance(got, NotFound):
                    log.error("dispatch.sequence_missing", sequence_id=sid)
                elif isinstance(got, BaseException):
                    raise got
                else:
                    out[sid] = got
        return out

    def _unavailable(self, item: Claimed, now: int) -> Settle:
        # The mirror says the sequence exists but its document cannot be read: retry, so a
        # transient fault heals and a permanent one ends as failed after max_attempts.
        return Settle(
            id=item.id,
            token=item.e["k"],
            step=int(item.e["i"]),
            kind="",
            at=now,
            outcome="retry",
            error="sequence document not found",
            delay=self._delay(int(item.e.get("a") or 0), None),
        )

    # -- sending --------------------------------------------------------------------------
    def _limit(self, kind: str) -> Slots:
        slots = self._limits.get(kind)
        if slots is None:
            slots = self._limits[kind] = Slots(self.config.concurrency)
        return slots

    def _admit(self, jobs: list[Job]) -> tuple[list[Job], list[Job]]:
        """Jobs to send now, and those of a channel whose every slot is taken by sends still
        running from earlier rounds: they are put back for a moment rather than queued
        behind a provider that hangs (where their lease could run out)."""
        full = {kind for kind, n in self._busy.items() if n >= self.config.concurrency}
        if not full:
            return jobs, []
        return [j for j in jobs if j.kind not in full], [j for j in jobs if j.kind in full]

    async def _send(self, jobs: list[Job]) -> tuple[set[Job], asyncio.Task[None] | None]:
        """Send every job, waiting at most `send_wait_seconds`; returns the jobs whose send
        is still running then (they go on in the background, awaited by the task returned
        with them). On abort (drain timeout), gives up on those in flight."""
        if not jobs:
            return set(), None
        sending = asyncio.ensure_future(self._send_all(jobs))
        watch: set[asyncio.Future[Any]] = {sending}
        if self._abort is not None:
            watch.add(self._abort)
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
        if self._abort is not None and self._abort.done():
            sending.cancel()
            await asyncio.wait({sending})
            return set(), None
        running = {job for job in jobs if job.result is None}
        task = asyncio.ensure_future(self._finish_later(sending))
        self._stragglers.add(task)
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

    def _leave_running(
        self,
        task: asyncio.Task[None],
        running: set[Job],
        plans: Mapping[str, Plan],
        suppressed: Mapping[str, Mapping[str, SuppressionRecord]],
        shard_of: Mapping[str, int],
    ) -> None:
        """Record `running` jobs when their sends end (or are given up), in a later round."""
        for job in running:
            self._busy[job.kind] += 1

        def done(_: asyncio.Future[None]) -> None:
            self._stragglers.discard(task)
            for job in running:
                self._busy[job.kind] -= 1
                plan = plans[job.message.sequence_id]
                self._late[shard_of[job.id]].append(self._settle(job, plan, suppressed))

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

    async def _send_one(self, job: Job) -> None:
        message = job.message
        slots = self._limit(job.kind)
        if not slots.try_take():
            await slots.take()
        try:
            start = self.clock()
            job.started = True
            self.observer.lateness((start - job.due) / 1000)
            try:
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

    # -- settling -------------------------------------------------------------------------
    def _delay(self, attempts: int, retry_after: float | None) -> int:
        base = self._backoff_ms[min(attempts, len(self._backoff_ms) - 1)]
        delay = int(base * (0.9 + 0.2 * random.random()))
        if retry_after is not None:
            delay = max(delay, int(retry_after * 1000))
        return delay

    def _settle(
        self, job: Job, plan: Plan, suppressed: Mapping[str, Mapping[str, SuppressionRecord]]
    ) -> Settle:
        result = job.result
        if result is None:
            return _of(job, self.clock(), "release", started=job.started)
        at = job.at
        outcome = result.outcome
        if outcome == "sent":
            # Spelled out (no **fields): this is the one per step of a burst.
            return Settle(
                id=job.id, token=job.token, step=job.step, kind=job.kind, at=at,
                outcome="sent", provider_id=result.provider_id, wait=self._wait_after(job, plan),
            )  # fmt: skip
        if result.suppress:
            # The provider says the recipient unsubscribed: this step is not sent, and the
            # enrollment goes on as it would with the address suppressed before the send.
            now_suppressed = dict(suppressed.get(job.id, _NO_SUPPRESSIONS))
            now_suppressed[job.kind] = SuppressionRecord(reason=models.CancelReason.OPTED_OUT.value)
            if any(s.kind not in now_suppressed for s in plan.steps[job.step + 1 :]):
                return _of(
                    job, at, "skipped", reason="suppressed", wait=self._wait_after(job, plan)
                )
            reason = suppressed_reason(now_suppressed[job.kind], job.kind)
            return _of(job, at, "cancel", reason=reason, error=result.error)
        if outcome == "failed":
            return _of(job, at, "failed", error=result.error or "failed")
        if outcome == "unknown" and self.config.on_unknown == "hold":
            reason = models.PausedReason.DELIVERY_UNKNOWN.value
            return _of(job, at, "pause", reason=reason, error=result.error)
        delay = self._delay(job.attempts, result.retry_after)
        return _of(job, at, "retry", error=result.error or outcome, delay=delay)

    def _wait_after(self, job: Job, plan: Plan) -> int:
        """ms from the end of `job`'s send to the next step's due time; -1 after the last."""
        if self.timetable is None or job.item is None:
            return plan.wait_after(job.step)
        return self.timetable.wait_after(plan, job.item.e, job.item.c, job.step, job.at)

    async def _report_opt_outs(self, jobs: list[Job]) -> None:
        """A provider's "recipient unsubscribed" is an opt-out like a STOP keyword."""
        for job in jobs:
            result = job.result
            if result is None or not result.suppress:
                continue
            from seqd.lifecycle import optout

            message = job.message
            try:
                await optout.opt_out(
                    self.store,
                    message.tenant,
                    job.kind,
                    message.to,
                    source="provider",
                    contact_id=message.contact_id,
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatch.opt_out_failed", enrollment_id=job.id)


@dataclass(slots=True)
class _Held:
    """A piece peeked at and not yet sent: its items (with their shards), the plans of their
    sequences, the addresses to screen, per (tenant, channel), and what to lease."""

    items: list[Claimed]
    shard_of: dict[str, int]
    plans: dict[str, Plan]
    lookups: dict[tuple[str, str], list[str]]
    # shard -> {sequence id: (its mirror, [(enrollment id, its score as peeked), ...])}
    lease: dict[int, dict[str, tuple[str, list[tuple[str, str]]]]]


def _leased(held: _Held, leased: Mapping[int, Leased]) -> set[int]:
    """Give `held`'s items the lease tokens they got (and the attempts counted of leases run
    out), and drop those not leased (changed since the peek, or claimed by another worker:
    nothing of theirs may be sent). Returns the shards of those dropped."""
    lost = {eid for got in leased.values() for eid in got.lost}
    for item in held.items:
        got = leased.get(held.shard_of[item.id])
        if got is not None:
            item.e["k"] = got.token
            if got.attempts:
                attempts = got.attempts.get(item.id)
                if attempts is not None:
                    item.e["a"] = attempts
    if not lost:
        return set()
    held.items = [item for item in held.items if item.id not in lost]
    return {held.shard_of[eid] for eid in lost}


@dataclass(slots=True)
class _Owed:
    """A piece sent and not yet advanced: `count` steps claimed, their outcomes by shard,
    the claimed fields (advance builds the step events from them), the jobs sent."""

    count: int
    settles: dict[int, list[Settle]]
    claimed: dict[str, dict[str, str]]
    jobs: list[Job]


def _of(job: Job, at: int, outcome: Outcome, **fields: Any) -> Settle:
    return Settle(
        id=job.id, token=job.token, step=job.step, kind=job.kind, at=at, outcome=outcome, **fields
    )


def background(
    config: Config,
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    """The dispatcher as an aiohttp cleanup_ctx part of `seqd serve`."""

    @contextlib.asynccontextmanager
    async def part(app: web.Application) -> AsyncIterator[None]:
        if not config.dispatch.enabled:
            yield
            return
        from seqd.channels import registry
        from seqd.lifecycle import unsubscribe

        secret = await unsubscribe.signing_secret(config, app[STORE])
        senders = registry.build(config)
        dispatcher = Dispatcher(
            app[STORE],
            config.dispatch,
            senders,
            observer=app.get(METRICS),
            liveness=app.get(LIVENESS),
            email_headers=unsubscribe.message_headers(config, secret),
            policy=app[POLICY],
        )
        dispatcher.start()
        try:
            yield
        finally:
            try:
                await dispatcher.stop()
            finally:
                await senders.close()

    return part
