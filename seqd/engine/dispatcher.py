"""The dispatcher: claim due steps, render, send, advance; one class, one loop.

A round (`run_once`) polls every shard's earliest due score and due count in one
pipeline, cuts the due shards into pieces of about one batch each, and `lanes` lanes
(engine/lane.py) take the pieces in turn, each as peek (`claimDue` per shard: read,
nothing leased) → lease and screen (`leasePeeked` per shard and the suppression reads) →
compose → send (engine/sending.py: bounded concurrency per channel) → advance (one
`advance` call per shard). A lane's wait on Redis does one piece's advance, the next
one's lease and screen and the one after's peek: one round trip per piece. Lanes
interleave so that Python composes one piece while Redis runs another's scripts; when
little is due every due shard is in one piece, which keeps a round to a few round trips
(redis-py's cost per call is what a lightly loaded round spends its time on).

Between rounds the loop sleeps until the earliest due time, at most `idle_poll_ms`
(jittered, so several processes do not poll in step); `stop()` wakes it at once. A step
fires a few ms after its due time when the loop knew of it in advance; one enrolled due
at once through this process wakes the loop (`StoreContext.due_now`), and one enrolled by
another process sharing the store is seen within one idle poll.

Processes sharing the store each work their own share of the shards (`shard_share`: the
workers of `seqd serve --workers N` split them) and another's only once its due steps
have waited `idle_poll_ms`: without it both workers peeked at the same steps, and about a
third of the steps they read were read twice (one read wasted, its lease refused). A
step in another's shard is still sent within about one idle poll: by that process, or
by this one when that one is busy or gone.

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

Shutdown (SIGTERM: `Liveness.drain()` quiets the loop at once, then `stop()`): no new
claims; the batch in flight and the background sends may finish for up to
`drain_timeout_seconds`; what has not been sent by then is released (due again at once,
token bumped) and what has been sent is advanced.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
from collections.abc import AsyncIterator, Callable, Mapping

import structlog

from seqd import clicks
from seqd.channels.base import OutboundMessage
from seqd.config import Config, DispatchConfig
from seqd.engine.budgets import Budgets
from seqd.engine.compose import Job
from seqd.engine.lane import Crew, Lane, Work, total
from seqd.engine.plans import Plans
from seqd.engine.ports import Observer, Quiet, SenderSource
from seqd.engine.recovery import Recovery
from seqd.engine.rounds import Round, cut_pieces
from seqd.engine.sending import Sending
from seqd.engine.timetable import Timetable
from seqd.loop import Heart, Loop
from seqd.store.db import Store
from seqd.store.dispatch import Dispatch
from seqd.times import now_ms
from seqd.timing.policy import Policy

log = structlog.get_logger(__name__)

NAME = "dispatcher"


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
        track_links: Callable[[OutboundMessage, int], str] | None = None,
        worker: str = "",
        budgets: Budgets | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.senders = senders
        self.clock = clock
        self.observer: Observer = observer or Quiet()
        self.dispatch = Dispatch(store)
        self.plans = Plans(store)
        # The shards this process works first (config.shard_share); None: all.
        self._own = config.own_shards(store.shards)
        idle_s = config.idle_poll_ms / 1000
        self.loop = Loop(
            NAME,
            self._turn,
            idle_seconds=idle_s,
            # A turn may take the drain timeout (slow provider) plus a few polls.
            deadline_seconds=config.drain_timeout_seconds + 10 * idle_s + 30,
            failed_event="dispatch.round_failed",
            liveness=liveness,
            finish=self._finish,
            quiet_on_drain=True,
        )
        self._stopping = self.loop.stopping
        # Set when the drain timeout passes: sends in flight are given up and released.
        self._abort: asyncio.Future[None] | None = None
        self.sending = Sending(config, senders, self.observer, clock, lambda: self._abort)
        self.crew = Crew(
            dispatch=self.dispatch,
            plans=self.plans,
            config=config,
            sending=self.sending,
            observer=self.observer,
            clock=clock,
            stopping=self._stopping,
            email_headers=email_headers,
            report_opt_outs=self._report_opt_outs,
            lease_ms=int(config.lease_seconds * 1000),
            backoff_ms=[s * 1000 for s in config.retry_backoff_seconds],
            worker=worker or config.worker_id or default_worker(),
            # Sender budgets and frequency caps (engine/budgets.py).
            budgets=budgets or Budgets(store),
            # Windows and quiet hours (none without a policy: every step at wait_minutes).
            timetable=Timetable(store, policy, clock=clock) if policy is not None else None,
            track_links=track_links,
        )

    @property
    def email_headers(self) -> Callable[[OutboundMessage], Mapping[str, str]] | None:
        """Headers added to every email (List-Unsubscribe: lifecycle.unsubscribe)."""
        return self.crew.email_headers

    @email_headers.setter
    def email_headers(self, value: Callable[[OutboundMessage], Mapping[str, str]] | None) -> None:
        self.crew.email_headers = value

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._abort = asyncio.get_running_loop().create_future()
        log.info("dispatch.started", batch_size=self.config.batch_size)
        self.store.due_now.append(self.loop.wake)
        self.loop.start()

    async def stop(self) -> None:
        """Stop claiming, let the batch in flight finish (bounded), release the rest."""
        timeout = self.config.drain_timeout_seconds
        with contextlib.suppress(ValueError):
            self.store.due_now.remove(self.loop.wake)

        def give_up() -> None:
            # Releasing is one script call per shard; it gets the same time again at most.
            log.warning("dispatch.drain_timeout", seconds=timeout)
            if self._abort is not None and not self._abort.done():
                self._abort.set_result(None)

        await self.loop.stop(timeout, give_up=give_up)

    async def _turn(self) -> float:
        """One round, then at once again while there is more; else sleep until the next
        due time, at most the idle poll (jittered: a known due time is slept to exactly)."""
        done = await self.run_once(self.clock())
        if done.more or done.claimed:
            return 0.0
        cap = self.config.idle_poll_ms / 1000 * (0.75 + 0.25 * random.random())
        if done.next_due is None:
            return cap
        return min(cap, max(0.0, (done.next_due - self.clock()) / 1000))

    async def _finish(self) -> None:
        await self._drain_stragglers()
        log.info("dispatch.stopped")

    async def _drain_stragglers(self) -> None:
        """On stop: let background sends finish until the drain times out, then give up on
        the rest, and record them all."""
        await self.sending.drain()
        await self._flush_late()

    async def _flush_late(self) -> None:
        """Advance the outcomes of background sends that have finished since the last round."""
        late = self.sending.take_late()
        if not late:
            return
        await asyncio.shield(
            self.dispatch.advance_many(
                late, now=self.clock(), max_attempts=self.config.max_attempts
            )
        )
        self.observer.settled(sum(len(items) for items in late.values()))

    # -- one round ------------------------------------------------------------------------
    async def run_once(self, now: int) -> Round:
        """Poll, then peek → lease and screen → send → advance every due shard, in
        batch-sized pieces worked by `lanes` concurrent lanes (engine/lane.py)."""
        await self._flush_late()
        due, later = self._share(await self.dispatch.heads(now), now)
        result = Round(next_due=min(later) if later else None)
        if not due or self._stopping.is_set():
            return result
        # In an order of this round's own: processes sharing the store then mostly peek at
        # different shards (two peeks of the same steps lease them for one of them only).
        random.shuffle(due)
        work = Work(cut_pieces(due, self.config.batch_size), result, now, self.clock())
        lanes = [Lane(self.crew, work) for _ in range(min(self.config.lanes, len(work.pieces)))]
        outcomes = await asyncio.gather(*(lane.run() for lane in lanes), return_exceptions=True)
        total(lanes, result)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        # Left in the queue (stopping, a failed lane): more may be due.
        result.more = result.more or bool(work.pieces)
        return result

    def _share(
        self, heads: list[tuple[int | None, int]], now: int
    ) -> tuple[list[tuple[int, int]], list[int]]:
        """The shards to work now (with their due counts), and the due times of the rest:
        another process's shard once its first due step has waited `idle_poll_ms` (that
        process is busy or gone; it polls at least that often)."""
        own, grace = self._own, self.config.idle_poll_ms
        due: list[tuple[int, int]] = []
        later: list[int] = []
        for shard, (at, count) in enumerate(heads):
            if at is None:
                continue
            if own is not None and shard not in own:
                at += grace
            if at <= now:
                due.append((shard, count))
            else:
                later.append(at)
        return due, later

    async def _report_opt_outs(self, jobs: list[Job]) -> None:
        """A provider's "recipient unsubscribed" is an opt-out like a STOP keyword."""
        for job in jobs:
            result = job.result
            kind = job.kind
            # (Only a kind with a suppression list can be opted out of: kinds.Channel.)
            if result is None or not result.suppress or (kind != "sms" and kind != "email"):
                continue
            from seqd.lifecycle import optout

            message = job.message
            try:
                await optout.opt_out(
                    self.store,
                    message.tenant,
                    kind,
                    message.to,
                    source="provider",
                    contact_id=message.contact_id,
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatch.opt_out_failed", enrollment_id=job.id)


def default_worker(port: int | None = None) -> str:
    """`<hostname>:<port>` (the HTTP listener's): the same after a restart, so the new
    process takes its predecessor's leases back at once; without a port, the pid."""
    return f"{socket.gethostname()}:{port if port is not None else os.getpid()}"


@contextlib.asynccontextmanager
async def background(
    config: Config, store: Store, *, liveness: Heart, observer: Observer
) -> AsyncIterator[None]:
    """The dispatcher as a background part of `seqd serve` (service.BACKGROUND), with its
    heartbeat and the taking back of leases of processes that stopped beating
    (engine/recovery.py)."""
    if not config.dispatch.enabled:
        yield
        return
    from seqd.channels import registry
    from seqd.engine import actions
    from seqd.lifecycle import unsubscribe

    secret = await unsubscribe.signing_secret(config, store)
    worker = config.dispatch.worker_id or default_worker(config.http.port)
    recovery = Recovery(store, config.dispatch, worker)
    # Before the first lease: what this id leased before a crash comes back now.
    await recovery.start()
    senders = actions.ActionSenders(registry.build(config), store, config)
    dispatcher = Dispatcher(
        store,
        config.dispatch,
        senders,
        observer=observer,
        liveness=liveness,
        email_headers=unsubscribe.message_headers(config, secret),
        track_links=clicks.message_links(config, secret),
        worker=worker,
        budgets=Budgets(store, config.senders, config.frequency_caps_for),
        policy=Policy(config),
    )
    dispatcher.start()
    try:
        yield
    finally:
        try:
            await dispatcher.stop()
        finally:
            try:
                await recovery.stop()
            finally:
                await senders.close()
