"""One lane of a dispatcher round: pieces of due shards taken in turn, each peeked at, then
leased and screened, then composed and sent, then advanced, one round trip per piece.

A lane holds up to two pieces: one peeked at (its due steps read, nothing written) and
one sent (waiting for its advance). Each wait on Redis settles the sent one, leases the
peeked one and screens its addresses, and peeks at the next (one `Trip`); then the leased
piece is composed and sent. The shards whose peek was full are the lane's next piece
(peeked at right after their lease, in the same round trip) while the round is under
ROUND_MS old: a backlog is worked through without a wait of its own, and the loop still
gets its turn (liveness, late outcomes, a fresh `now`) that often.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from seqd import ids
from seqd.channels.base import OutboundMessage
from seqd.config import DispatchConfig
from seqd.engine import settle as outcomes
from seqd.engine.budgets import Asked, Budgets, Pick
from seqd.engine.compose import Job, compose
from seqd.engine.plans import Plan, Plans
from seqd.engine.ports import Observer
from seqd.engine.rounds import Round, Tally
from seqd.engine.sending import YIELD_EVERY, Sending
from seqd.engine.timetable import Timetable
from seqd.errors import NotFound
from seqd.kinds import ADDRESS_FIELD
from seqd.store.claims import ClaimBatch, Claimed, ClaimedEnrollment, Leased
from seqd.store.dispatch import Advanced, Dispatch, Found, SuppressionRecord
from seqd.store.mirrors import version_of
from seqd.store.settles import Defer, Sent, Settled, Skipped, TaskStep

log = structlog.get_logger(__name__)

# A step of a channel whose every slot is busy is put back this long (no attempt counted).
DEFER_MS = 1000
# How long a round goes on taking the next batch of shards whose claim was full.
ROUND_MS = 1000
_NO_SUPPRESSIONS: Mapping[str, SuppressionRecord] = {}


@dataclass(slots=True)
class Crew:
    """What every lane of a dispatcher works with."""

    dispatch: Dispatch
    plans: Plans
    config: DispatchConfig
    sending: Sending
    observer: Observer
    clock: Callable[[], int]
    stopping: asyncio.Event
    # Headers added to every email (List-Unsubscribe: lifecycle.unsubscribe).
    email_headers: Callable[[OutboundMessage], Mapping[str, str]] | None
    # A provider's "recipient unsubscribed": an opt-out like a STOP keyword.
    report_opt_outs: Callable[[list[Job]], Awaitable[None]]
    lease_ms: int
    backoff_ms: list[float]
    # This process's id (keys.workers): its leases are recorded under it.
    worker: str
    # Sender budgets and frequency caps (engine/budgets.py).
    budgets: Budgets
    # Windows and quiet hours (engine/timetable.py); None: every step at its wait_minutes.
    timetable: Timetable | None = None
    # The body of a step that tracks clicks, its links rewritten (seqd/clicks.py), at `now`.
    track_links: Callable[[OutboundMessage, int], str] | None = None

    def outcome(
        self, job: Job, plan: Plan, suppressed: Mapping[str, Mapping[str, SuppressionRecord]]
    ) -> Settled:
        settled = outcomes.settle(
            job,
            plan,
            suppressed,
            # (`now` counts only for a job with no result: read the clock only for one.)
            now=job.at if job.result is not None else self.clock(),
            on_unknown=self.config.on_unknown,
            backoff_ms=self.backoff_ms,
        )
        if job.pin is not None and job.started:
            # Whatever came of it, the provider may have it: the contact keeps the sender.
            settled.pin = job.pin
        # The next step's time in the contact's zone, from the end of this send.
        timetable = self.timetable
        if timetable is not None and job.item is not None and isinstance(settled, Sent | Skipped):
            if settled.wait >= 0:
                settled.wait = timetable.wait_after(plan, job.item, job.step, settled.at)
        return settled


@dataclass(slots=True)
class Work:
    """A round's shared state: the pieces left (taken from the end), what it did."""

    pieces: list[list[int]]
    result: Round
    now: int
    started: int


@dataclass(slots=True)
class _Closed:
    """Steps peeked at while their window or quiet hours are closed: deferred in the round
    trip that leases the rest of their piece (fenced by the peeked score, as a lease is),
    never leased, screened, asked for budget or composed. `recheck`: the steps whose peeked
    score was a lease come back, checked after their lease instead."""

    settles: dict[int, list[Settled]] = field(default_factory=dict)
    claimed: dict[str, ClaimedEnrollment] = field(default_factory=dict)
    recheck: set[str] = field(default_factory=set)


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
    # Shards of steps left out for want of free send slots (they stay due).
    trimmed: set[int]
    # The budget and frequency-cap asks of its steps (engine/budgets.py).
    asked: Asked | None = None
    # Its steps whose window or quiet hours were closed at the peek.
    closed: _Closed = field(default_factory=lambda: _Closed())


@dataclass(slots=True)
class _Owed:
    """A piece sent and not yet advanced: `count` steps claimed, their outcomes by shard,
    what was read of the claimed enrollments (advance builds the step events from it), the
    jobs sent."""

    count: int
    settles: dict[int, list[Settled]]
    claimed: dict[str, ClaimedEnrollment]
    jobs: list[Job]
    # What was advanced with the mark of the sends' start (the steps not sent).
    early: list[Advanced]


class Lane:
    def __init__(self, crew: Crew, work: Work) -> None:
        self.crew = crew
        self.work = work
        self.tallies: list[Tally] = []

    async def run(self) -> None:
        crew, work = self.crew, self.work
        stopping = crew.stopping
        owed: _Owed | None = None
        held: _Held | None = None
        full: list[int] = []  # the shards of the last peek that was a full batch
        while True:
            shards: list[int] = []
            if full and not stopping.is_set():
                if crew.clock() - work.started < ROUND_MS:
                    shards = full
                else:
                    work.result.more = True
            if not shards and work.pieces and not stopping.is_set():
                shards = work.pieces.pop()
            if stopping.is_set():
                held = None  # peeked at, not leased: nothing of it is ours to send
            if not shards and owed is None and held is None:
                return
            if held is not None and held.closed.settles:
                owed = self._with_closed(owed, held.closed)
            advanced, leased, found, claims, extra = await self._trip(owed, held, shards)
            if owed is not None:
                self.tallies.append(await self._settled(owed, advanced))
            owed = None
            taken: set[int] = set()
            if held is not None:
                taken = _leased(held, leased)
                if held.items:
                    picks = _picks(held, extra, crew.clock())
                    owed = await self._work(held, _hits(held, found), picks)
            # (Not a shard where another worker, another process, leased some of the peek
            # first: it works that shard, and chasing it would peek at the same steps as it
            # again.)
            full = [
                shard
                for shard, batch in claims.items()
                if batch.seen >= crew.config.batch_size and shard not in taken
            ]
            held = await self._held(claims)
            if held is not None:
                # Steps left out for want of send slots: peeked at again after the lease.
                full += [shard for shard in sorted(held.trimmed) if shard not in full]

    def _with_closed(self, owed: _Owed | None, closed: _Closed) -> _Owed:
        """`owed` with the deferrals of `closed` added: they settle in its advance."""
        observer = self.crew.observer
        count = sum(len(items) for items in closed.settles.values())
        observer.claimed(count)
        for items in closed.settles.values():
            for d in items:
                if isinstance(d, Defer):
                    observer.step_deferred(d.reason or "window")
        if owed is None:
            return _Owed(count, closed.settles, closed.claimed, [], [])
        owed.count += count
        for shard, items in closed.settles.items():
            owed.settles.setdefault(shard, []).extend(items)
        owed.claimed.update(closed.claimed)
        return owed

    async def _trip(
        self, owed: _Owed | None, held: _Held | None, shards: list[int]
    ) -> tuple[dict[int, Advanced], dict[int, Leased], Found, dict[int, ClaimBatch], list[object]]:
        """Advance what `owed` sent (pinning sticky contacts to their senders), lease `held`
        and read the suppressions of its addresses, peek at `shards`, take `held`'s budgets:
        one round trip. The sends happened: recording them must not be interrupted by a
        cancellation. (When a script of the trip fails, the trip releases what it leased;
        when the connection fails, what it may have leased comes back when the lease
        passes.)"""
        crew = self.crew
        config = crew.config
        trip = crew.dispatch.trip(now=crew.clock(), max_attempts=config.max_attempts)
        advance = trip.advance(owed.settles, owed.claimed) if owed is not None else None
        lease = None
        if held is not None:
            lease = trip.lease(
                held.lease, lease_ms=crew.lease_ms, worker=crew.worker, lookups=held.lookups
            )
        peek = trip.peek(
            shards, now=self.work.now, limit=config.batch_size, on_unknown=config.on_unknown
        )
        extra = held.asked.calls if held is not None and held.asked is not None else None
        scripts = trip.scripts(extra) if extra else None
        await asyncio.shield(trip.run())
        return (
            advance.done if advance is not None else {},
            lease.leased if lease is not None else {},
            lease.found if lease is not None else {},
            peek.claims,
            scripts.replies if scripts is not None else [],
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
        closed = _Closed()
        if self.crew.timetable is not None:
            await self.crew.timetable.load(plans, items)
            items = self._closed(items, plans, shard_of, closed)
        items, trimmed = self._room(items, plans, shard_of)
        # The address of each channel a remaining step uses, per (tenant, channel); and
        # what to lease, per shard and sequence.
        lookups: dict[tuple[str, str], list[str]] = defaultdict(list)
        lease: dict[int, dict[str, tuple[str, list[tuple[str, str]]]]] = defaultdict(dict)
        for item in items:
            e = item.enrollment
            plan = plans.get(item.plan_key)
            if plan is not None:
                contact = item.contact
                for kind in plan.kinds_from(int(e.index)):
                    value = contact.get(ADDRESS_FIELD[kind])
                    if value:
                        lookups[(e.tenant, kind)].append(value)
            shard, seq = shard_of[item.id], e.sequence
            queues = lease[shard]
            queue = queues.get(seq)
            if queue is None:
                queue = queues[seq] = (batches[shard].m[seq], [])
            queue[1].append((item.id, e.token))
        asked = await self.crew.budgets.ask(items, plans, shard_of, self.crew.clock())
        return _Held(items, shard_of, plans, lookups, lease, trimmed, asked, closed)

    def _closed(
        self,
        items: list[Claimed],
        plans: Mapping[str, Plan],
        shard_of: Mapping[str, int],
        closed: _Closed,
    ) -> list[Claimed]:
        """`items` but the steps whose window or quiet hours are closed now, which go into
        `closed` as deferrals. A step whose peeked score is a lease come back (its send may
        have happened) is leased as before and checked after its lease, which counts it."""
        timetable = self.crew.timetable
        assert timetable is not None
        now = self.work.now
        kept: list[Claimed] = []
        for item in items:
            e = item.enrollment
            plan = plans.get(e.sequence)
            if plan is None:
                kept.append(item)
                continue
            if "." in e.token:
                closed.recheck.add(item.id)
                kept.append(item)
                continue
            defer = timetable.deferral(item, plan, now)
            if defer is None:
                kept.append(item)
                continue
            closed.settles.setdefault(shard_of[item.id], []).append(defer)
            closed.claimed[item.id] = e
        return kept

    def _room(
        self, items: list[Claimed], plans: Mapping[str, Plan], shard_of: Mapping[str, int]
    ) -> tuple[list[Claimed], set[int]]:
        """`items` but those beyond their channel's send slots not held by sends in flight,
        and the shards of those left out (they stay due, and are peeked at again): only what
        will be sent soon is leased, not the backlog. (A channel with every slot held has
        its steps leased all the same, and put back for a moment when sends that outlived
        their round hold them: `Sending.admit`.)"""
        sending = self.crew.sending
        if sending.least_room() >= len(items):
            return items, set()
        room: dict[str, int] = {}
        kept: list[Claimed] = []
        trimmed: set[int] = set()
        for item in items:
            e = item.enrollment
            plan = plans.get(item.plan_key)
            index = int(e.index)
            if plan is not None and index < len(plan.steps):
                kind = plan.steps[index].kind
                left = room.get(kind)
                if left is None:
                    left = room[kind] = sending.room(kind) or -1
                if left == 0:
                    trimmed.add(shard_of[item.id])
                    continue
                room[kind] = left - 1
            kept.append(item)
        return kept, trimmed

    async def _work(
        self,
        held: _Held,
        suppressed: Mapping[str, Mapping[str, SuppressionRecord]],
        picks: Mapping[str, Pick],
    ) -> _Owed:
        """Compose and send a leased and screened piece: what its advance will need.
        `picks`: the senders (or the deferrals) of its steps that budgets or caps hold."""
        crew, now = self.crew, self.work.now
        items, shard_of, plans = held.items, held.shard_of, held.plans
        crew.observer.claimed(len(items))
        settles: dict[int, list[Settled]] = defaultdict(list)
        jobs: list[Job] = []
        early: dict[int, Advanced] = {}
        # (Read once per piece, not once per step: this loop is the dispatcher's hot path.)
        timetable = crew.timetable
        recheck = held.closed.recheck
        email_headers, track_links = crew.email_headers, crew.track_links
        # The plan of each job, by enrollment id, for its outcome.
        plan_of: dict[str, Plan] = {}
        for n, item in enumerate(items, 1):
            if n % YIELD_EVERY == 0:
                # The API shares this event loop: let its requests in between.
                await asyncio.sleep(0)
            plan = plans.get(item.plan_key)
            if plan is None:
                settles[shard_of[item.id]].append(outcomes.unavailable(item, now, crew.backoff_ms))
                continue
            if timetable is not None and item.id in recheck:
                closed = timetable.deferral(item, plan, now)
                if closed is not None:
                    crew.observer.step_deferred(closed.reason or "window")
                    settles[shard_of[item.id]].append(closed)
                    continue
            composed = compose(item, plan, suppressed.get(item.id, _NO_SUPPRESSIONS), now)
            if isinstance(composed, Job):
                pick = picks.get(item.id) if picks else None
                if pick is not None:
                    held_back = _held_back(composed, plan, pick, now)
                    if held_back is not None:
                        if isinstance(held_back, Defer):
                            crew.observer.step_deferred(held_back.reason or "sender_limit")
                        elif isinstance(held_back, Skipped) and timetable is not None:
                            # Skipped by the cap: the next step's time in the contact's zone.
                            held_back.wait = timetable.wait_after(plan, item, held_back.step, now)
                        settles[shard_of[item.id]].append(held_back)
                        continue
                    if pick.sender is not None:
                        composed.message.sender = pick.route
                        composed.sender = pick.sender.id
                        if pick.pin:
                            composed.pin = pick.sender.id
                if email_headers is not None and composed.kind == "email":
                    composed.message.headers.update(email_headers(composed.message))
                if track_links is not None and plan.steps[composed.step].track_clicks:
                    composed.message.body = track_links(composed.message, now)
                plan_of[composed.id] = plan
                jobs.append(composed)
                continue
            if isinstance(composed, TaskStep):
                # (Used only when its task is made: the enrollment names it from then on.)
                shards = crew.dispatch.store.shards
                composed.task_id = ids.new_in_shard(ids.TASK, shard_of[item.id], shards, now)
            if (
                timetable is not None
                and isinstance(composed, Skipped | TaskStep)
                and composed.wait >= 0
            ):
                composed.wait = timetable.wait_after(plan, item, composed.step, composed.at)
            settles[shard_of[item.id]].append(composed)
        claimed = {item.id: item.enrollment for item in items}
        if jobs:
            jobs, put_back, deferred = await crew.sending.admit(jobs)
            for job in put_back:
                settles[shard_of[job.id]].append(outcomes.released(job, now))
            for job in deferred:
                settles[shard_of[job.id]].append(outcomes.released(job, now, delay=DEFER_MS))
            if jobs:
                # Before the first send: from here on a lease taken back is a send that
                # may have happened; before it, a step no channel was handed. The rest of
                # the piece under the same tokens is settled first, in the same round trip.
                tokens: dict[int, set[str]] = defaultdict(set)
                for job in jobs:
                    tokens[shard_of[job.id]].add(job.token)
                now_settled = {shard: settles.pop(shard) for shard in tokens if shard in settles}
                try:
                    early = await crew.dispatch.started(
                        tokens,
                        now=crew.clock(),
                        max_attempts=crew.config.max_attempts,
                        settles=now_settled,
                        claimed=claimed,
                    )
                except BaseException:
                    crew.sending.not_sent(jobs)
                    raise
            running, task = await crew.sending.send(jobs)
            outcome = crew.outcome
            for job in jobs:
                if running and job in running:
                    continue
                settles[shard_of[job.id]].append(outcome(job, plan_of[job.id], suppressed))
            if task is not None:
                crew.sending.leave_running(
                    task,
                    running,
                    lambda job: outcome(job, plan_of[job.id], suppressed),
                    shard_of,
                )
        return _Owed(len(items), settles, claimed, jobs, list(early.values()))

    async def _settled(self, owed: _Owed, advanced: Mapping[int, Advanced]) -> Tally:
        """What a piece came to, once its advance is done."""
        crew = self.crew
        crew.observer.settled(owed.count)
        results = [*advanced.values(), *owed.early]
        stale = sum(len(a.stale) for a in results)
        if stale:
            log.info("dispatch.stale", shards=sorted(advanced), count=stale)
        await crew.report_opt_outs(owed.jobs)
        sent = sum(1 for job in owed.jobs if job.started)
        settled = sum(a.applied + a.late for a in results)
        return Tally(owed.count, sent, settled, stale)

    async def _plans(self, items: list[Claimed], mirrors: Mapping[str, str]) -> dict[str, Plan]:
        """The plan of each key (`Claimed.plan_key`) in the batch, at least at its
        sequence's mirror's version."""
        plans = self.crew.plans
        out: dict[str, Plan] = {}
        missing: dict[str, tuple[str, int]] = {}
        wanted = {item.plan_key: item.enrollment for item in items}
        for key, e in wanted.items():
            version = version_of(mirrors.get(e.sequence, ""))
            plan = plans.cached(key, version)
            if plan is not None:
                out[key] = plan
            else:
                missing[key] = (e.tenant, version)
        if missing:
            loaded = await asyncio.gather(
                *(plans.load(t, key, v) for key, (t, v) in missing.items()),
                return_exceptions=True,
            )
            for key, got in zip(missing, loaded, strict=True):
                if isinstance(got, NotFound):
                    log.error("dispatch.sequence_missing", sequence_id=key)
                elif isinstance(got, BaseException):
                    raise got
                else:
                    out[key] = got
        return out


def _picks(held: _Held, replies: Sequence[object], now: int) -> dict[str, Pick]:
    asked = held.asked
    if asked is None:
        return {}
    return Budgets.picks(asked, replies[: len(asked.calls)], now)


def _held_back(job: Job, plan: Plan, pick: Pick, now: int) -> Settled | None:
    """The outcome of a step its sender's budget or its contact's cap holds back: skipped
    (the cap's policy), or deferred to `pick.until`, no attempt counted; None: it goes."""
    if pick.skip:
        return Skipped(
            id=job.id, token=job.token, step=job.step, kind=job.kind, at=now,
            reason=pick.reason, wait=plan.wait_after(job.step),
        )  # fmt: skip
    if pick.until is None:
        return None
    return Defer(
        id=job.id, token=job.token, step=job.step, kind=job.kind, at=now,
        until=max(now, pick.until), reason=pick.reason,
    )  # fmt: skip


def _hits(held: _Held, found: Found) -> dict[str, dict[str, SuppressionRecord]]:
    """item id -> {channel: record} of the held items' suppressed addresses."""
    if not found:
        return {}
    out: dict[str, dict[str, SuppressionRecord]] = {}
    for item in held.items:
        tenant = item.enrollment.tenant
        for kind, name in ADDRESS_FIELD.items():
            hits = found.get((tenant, kind))
            value = item.contact.get(name)
            if hits and value and value in hits:
                out.setdefault(item.id, {})[kind] = hits[value]
    return out


def _leased(held: _Held, leased: Mapping[int, Leased]) -> set[int]:
    """Give `held`'s items the lease tokens they got (and the attempts counted of leases run
    out), and drop those not leased (changed since the peek, or claimed by another worker:
    nothing of theirs may be sent). Returns the shards of those dropped."""
    lost = {eid for got in leased.values() for eid in got.lost}
    for item in held.items:
        got = leased.get(held.shard_of[item.id])
        if got is not None:
            e = item.enrollment
            e.token = got.token
            if got.attempts:
                attempts = got.attempts.get(item.id)
                if attempts is not None:
                    e.attempts = attempts
    if not lost:
        return set()
    held.items = [item for item in held.items if item.id not in lost]
    return {held.shard_of[eid] for eid in lost}


def total(lanes: Sequence[Lane], result: Round) -> Round:
    """`result` with what `lanes` did added."""
    for lane in lanes:
        for tally in lane.tallies:
            result.claimed += tally.claimed
            result.sent += tally.sent
            result.settled += tally.settled
            result.stale += tally.stale
    return result
