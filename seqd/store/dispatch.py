"""The dispatcher's view of the store: due times (`peekDue`), and one round trip (`Trip`)
that advances a sent batch, leases and screens the next and peeks at the one after.

Every call here is batched per shard (one pipeline or one script call per shard), because
the dispatcher's cost per step is what bounds seqd's throughput.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import msgspec

from seqd import ids
from seqd.store import calls
from seqd.store.claims import ClaimBatch, ClaimedEnrollment, Leased, decode_claim, decode_leased
from seqd.store.context import StoreContext
from seqd.store.keys import Keys
from seqd.store.mirrors import CONTACT_READ
from seqd.store.settles import Deferrals, Release, Settled, advance_args


class Advanced(msgspec.Struct, frozen=True):
    applied: int
    late: int
    stale: list[str]


class Reclaimed(msgspec.Struct):
    """What `reclaimLeases` took back: leases, and their members made due as plain steps
    (never handed to a channel) and as sends that may have happened."""

    leases: int = 0
    plain: int = 0
    unknown: int = 0


class SuppressionRecord(msgspec.Struct, frozen=True):
    """The part of a suppression record the dispatcher reads (store/suppressions.py writes it)."""

    reason: str | None = None


# A peeked piece to lease: shard -> {sequence id: (its mirror, [(enrollment id, its score
# as peeked), ...])}.
LeaseRequest = Mapping[int, Mapping[str, tuple[str, Sequence[tuple[str, str]]]]]
# (tenant, channel) -> the addresses to look up on its suppression list.
Lookups = Mapping[tuple[str, str], Sequence[str]]
# (tenant, channel) -> {address: record} of the looked-up addresses that are suppressed.
Found = dict[tuple[str, str], dict[str, SuppressionRecord]]

_decode_record = msgspec.json.Decoder(SuppressionRecord).decode

T = TypeVar("T")

# Due members a poll counts per shard at most: the dispatcher needs no more than a batch.
PEEK_CAP = 1000


class AdvanceHandle:
    """`advance` per shard; after the trip, what each call did."""

    __slots__ = ("batches", "claimed", "done")

    def __init__(
        self,
        batches: Mapping[int, Sequence[Settled]],
        claimed: Mapping[str, ClaimedEnrollment] | None,
    ) -> None:
        self.batches = {shard: list(items) for shard, items in batches.items() if items}
        self.claimed = claimed
        self.done: dict[int, Advanced] = {}


class LeaseHandle:
    """`leasePeeked` per shard and the suppression reads of the leased piece; after the
    trip, what each lease took and the suppressed addresses found."""

    __slots__ = ("found", "lease_ms", "leased", "lookups", "request", "worker")

    def __init__(self, request: LeaseRequest, lease_ms: int, worker: str, lookups: Lookups) -> None:
        self.request = request
        self.lease_ms = lease_ms
        self.worker = worker
        self.lookups = [(group, list(values)) for group, values in lookups.items() if values]
        self.leased: dict[int, Leased] = {}
        self.found: Found = {}


class PeekHandle:
    """`claimDue` (it only reads: nothing leased) per shard; after the trip, its batches."""

    __slots__ = ("claims", "limit", "now", "on_unknown", "shards")

    def __init__(self, shards: Sequence[int], now: int, limit: int, on_unknown: str) -> None:
        self.shards = list(shards)
        self.now = now
        self.limit = limit
        self.on_unknown = on_unknown
        self.claims: dict[int, ClaimBatch] = {}


class ScriptsHandle:
    """Other script calls riding the trip (the senders' budgets and pins,
    engine/budgets.py); after it, their replies in order."""

    __slots__ = ("calls", "replies")

    def __init__(self, script_calls: Sequence[calls.Call]) -> None:
        self.calls = list(script_calls)
        self.replies: list[Any] = []


class Trip:
    """One round trip of script calls and suppression reads, built part by part: the
    advances, then the leases, then the peeks, then other scripts, then the reads (one
    pipeline).

    When a script or a read of the trip fails, what its leases took is released (due again
    at once, no attempt counted: nothing of it was sent) before the error is raised; a
    peek leased nothing, so nothing of it is given back.
    """

    def __init__(self, dispatch: Dispatch, *, now: int, max_attempts: int) -> None:
        self._dispatch = dispatch
        self.now = now
        self.max_attempts = max_attempts
        self._advance: AdvanceHandle | None = None
        self._lease: LeaseHandle | None = None
        self._peek: PeekHandle | None = None
        self._scripts: ScriptsHandle | None = None

    def advance(
        self,
        batches: Mapping[int, Sequence[Settled]],
        claimed: Mapping[str, ClaimedEnrollment] | None = None,
    ) -> AdvanceHandle:
        """Settle `batches` (shard -> outcomes). `claimed`: enrollment id -> what claimDue
        read of it, for the items the caller claimed itself: their step events are built
        in Python and the passed steps among them go as values (store/settles.py)."""
        self._advance = AdvanceHandle(batches, claimed)
        return self._advance

    def lease(
        self,
        request: LeaseRequest,
        *,
        lease_ms: int,
        worker: str,
        lookups: Lookups | None = None,
    ) -> LeaseHandle:
        """Lease what a peek found (request), for `worker` (its id: keys.workers), and read
        the suppressions of `lookups`."""
        self._lease = LeaseHandle(request, lease_ms, worker, lookups or {})
        return self._lease

    def peek(self, shards: Sequence[int], *, now: int, limit: int, on_unknown: str) -> PeekHandle:
        self._peek = PeekHandle(shards, now, limit, on_unknown)
        return self._peek

    def scripts(self, script_calls: Sequence[calls.Call]) -> ScriptsHandle:
        self._scripts = ScriptsHandle(script_calls)
        return self._scripts

    async def run(self) -> None:
        keys = self._dispatch.keys
        script_calls: list[calls.Call] = []
        advance, lease, peek = self._advance, self._lease, self._peek
        others = self._scripts
        # Per shard of the advance: its calls (advance, and deferSteps when it defers).
        made: list[int] = []
        if advance is not None:
            for shard, items in advance.batches.items():
                shard_calls = _advance_calls(
                    keys, shard, items, advance.claimed, self.now, self.max_attempts
                )
                script_calls += shard_calls
                made.append(len(shard_calls))
        if lease is not None:
            for shard, queues in lease.request.items():
                call = calls.lease_peeked(
                    keys, shard, self.now, lease.lease_ms, self.max_attempts, lease.worker, queues
                )
                script_calls.append(call)
        if peek is not None:
            for shard in peek.shards:
                script_calls.append(
                    calls.claim_due(
                        keys, shard, peek.now, peek.limit, peek.on_unknown, CONTACT_READ
                    )
                )
        if others is not None:
            script_calls += others.calls
        lookups = lease.lookups if lease is not None else []
        reads = [
            ("HMGET", keys.suppressions(tenant, channel), *values)
            for (tenant, channel), values in lookups
        ]
        if not script_calls and not reads:
            return
        replies = iter(await self._dispatch.store.runner.call_many(script_calls, reads))
        failed: list[Exception] = []

        def take(shards: Iterable[int], decode: Callable[[Any], T], into: dict[int, T]) -> None:
            for shard in shards:
                reply = next(replies)
                if isinstance(reply, Exception):
                    failed.append(reply)
                else:
                    into[shard] = decode(reply)

        if advance is not None:
            for shard, n in zip(advance.batches, made, strict=True):
                got = [next(replies) for _ in range(n)]
                errors = [r for r in got if isinstance(r, Exception)]
                if errors:
                    failed += errors
                else:
                    advance.done[shard] = _merged([_decode_advanced(r) for r in got])
        if lease is not None:
            take(lease.request, decode_leased, lease.leased)
        if peek is not None:
            take(peek.shards, decode_claim, peek.claims)
        if others is not None:
            others.replies = [next(replies) for _ in others.calls]
            failed += [r for r in others.replies if isinstance(r, Exception)]
        rows = list(replies)
        failed += [row for row in rows if isinstance(row, Exception)]
        if failed:
            if lease is not None:
                await self._dispatch.release(_taken(lease), now=self.now)
            raise failed[0]
        if lease is not None:
            lease.found = _found(lookups, rows)


def _decode_advanced(reply: list[Any]) -> Advanced:
    applied, late, stale = reply
    return Advanced(int(applied), int(late), [str(s) for s in stale])


def _merged(results: Sequence[Advanced]) -> Advanced:
    if len(results) == 1:
        return results[0]
    return Advanced(
        sum(a.applied for a in results),
        sum(a.late for a in results),
        [eid for a in results for eid in a.stale],
    )


def _advance_calls(
    keys: Keys,
    shard: int,
    items: list[Settled],
    claimed: Mapping[str, ClaimedEnrollment] | None,
    now: int,
    max_attempts: int,
) -> list[calls.Call]:
    """The calls that settle `items` of `shard`: `advance`, and `deferSteps` for the
    deferrals whose events are built here (store/settles.py)."""
    deferrals = Deferrals()
    general, groups, values = advance_args(items, claimed, now, deferrals)
    out = []
    if general != b"[]" or values or not deferrals.values:
        out.append(calls.advance(keys, shard, now, max_attempts, general, groups, values))
    if deferrals.values:
        out.append(calls.defer_steps(keys, shard, now, deferrals.encode_groups(), deferrals.values))
    return out


def _taken(lease: LeaseHandle) -> list[tuple[str, str, str]]:
    """(enrollment id, token, sequence id) of what `lease`'s calls took."""
    back = []
    for shard, (token, lost, _) in lease.leased.items():
        gone = set(lost)
        back += [
            (eid, token, seq)
            for seq, (_, members) in lease.request[shard].items()
            for eid, _ in members
            if eid not in gone
        ]
    return back


class Dispatch:
    def __init__(self, store: StoreContext) -> None:
        self.store = store
        self.keys = store.keys

    async def heads(self, now: int, cap: int = PEEK_CAP) -> list[tuple[int | None, int]]:
        """Per shard, (earliest due score or None, members due at `now`, at most `cap`): one
        round trip, one `peekDue` call per shard.

        The counts let the dispatcher cut the due shards into batch-sized pieces of work.
        """
        peeks = [calls.peek_due(self.keys, shard, now, cap) for shard in range(self.keys.shards)]
        out = []
        for reply in await self.store.runner.call_many(peeks):
            if isinstance(reply, Exception):
                raise reply
            first, count = reply
            # A lease score (half a ms before its due time) is claimable from the next ms.
            out.append((math.ceil(float(first)) if first else None, int(count)))
        return out

    def trip(self, *, now: int, max_attempts: int) -> Trip:
        """A round trip to build (`Trip.advance`, `.lease`, `.peek`) and `run`."""
        return Trip(self, now=now, max_attempts=max_attempts)

    async def advance_many(
        self,
        batches: Mapping[int, Sequence[Settled]],
        *,
        now: int,
        max_attempts: int,
        claimed: Mapping[str, ClaimedEnrollment] | None = None,
    ) -> dict[int, Advanced]:
        """`advance` for several shards in one round trip (one script call per shard)."""
        trip = self.trip(now=now, max_attempts=max_attempts)
        handle = trip.advance(batches, claimed)
        await trip.run()
        return handle.done

    async def advance(
        self, shard: int, items: Sequence[Settled], *, now: int, max_attempts: int
    ) -> Advanced:
        """One `advance` call settling `items` (all of `shard`)."""
        if not items:
            return Advanced(0, 0, [])
        advanced = await self.advance_many({shard: items}, now=now, max_attempts=max_attempts)
        return advanced[shard]

    async def started(
        self,
        tokens: Mapping[int, Iterable[str]],
        *,
        now: int = 0,
        max_attempts: int = 1,
        settles: Mapping[int, Sequence[Settled]] | None = None,
        claimed: Mapping[str, ClaimedEnrollment] | None = None,
    ) -> dict[int, Advanced]:
        """Record that the sends of these leases (shard -> tokens) start now: taken back
        after their worker is gone, their steps are then sends that may have happened.
        `settles` (the piece's steps that will not be sent, with `claimed` as for
        `Trip.advance`) are advanced first, in the same round trip, so that no step under
        a marked token is one that was never handed to a channel."""
        advances: list[tuple[int, calls.Call]] = []
        for shard, items in (settles or {}).items():
            if items:
                shard_calls = _advance_calls(
                    self.keys, shard, list(items), claimed, now, max_attempts
                )
                advances += [(shard, call) for call in shard_calls]
        marks = [
            ("SADD", self.keys.lease_starts(shard), *shard_tokens)
            for shard, shard_tokens in tokens.items()
        ]
        replies = await self.store.runner.call_many([call for _, call in advances], marks)
        failed = next((r for r in replies if isinstance(r, Exception)), None)
        if failed is not None:
            raise failed
        per_shard: dict[int, list[Advanced]] = {}
        for (shard, _), reply in zip(advances, replies, strict=False):
            per_shard.setdefault(shard, []).append(_decode_advanced(reply))
        return {shard: _merged(results) for shard, results in per_shard.items()}

    async def reclaim(self, now: int, dead: Sequence[str] = (), limit: int = 1000) -> Reclaimed:
        """`reclaimLeases` in every shard (one round trip): the leases of the `dead`
        workers, and those past their end, taken back."""
        reclaims = [
            calls.reclaim_leases(self.keys, shard, now, limit, dead)
            for shard in range(self.keys.shards)
        ]
        out = Reclaimed()
        for reply in await self.store.runner.call_many(reclaims):
            if isinstance(reply, Exception):
                raise reply
            leases, plain, unknown = reply
            out.leases += int(leases)
            out.plain += int(plain)
            out.unknown += int(unknown)
        return out

    async def release(self, items: Sequence[tuple[str, str, str]], *, now: int) -> None:
        """Give back claimed steps that will not be sent, each (enrollment id, token, sequence
        id): due again at `now`, no attempt counted (a lease left to run out would read as
        a send that may have happened)."""
        batches: dict[int, list[Settled]] = {}
        for eid, token, seq in items:
            batches.setdefault(ids.shard_of(eid, self.keys.shards), []).append(
                Release(id=eid, token=token, step=0, kind="", at=now, seq=seq)
            )
        if batches:
            # (max_attempts counts only for retries.)
            await self.advance_many(batches, now=now, max_attempts=1)


def _found(
    groups: Sequence[tuple[tuple[str, str], Sequence[str]]], rows: Sequence[Sequence[str | None]]
) -> Found:
    """The suppression records among HMGET `rows` of `groups` ((tenant, channel), values)."""
    out: Found = {}
    for (group, values), raw in zip(groups, rows, strict=True):
        hits = {}
        for value, record in zip(values, raw, strict=True):
            if record is not None:
                try:
                    hits[value] = _decode_record(record)
                except msgspec.DecodeError:
                    hits[value] = SuppressionRecord()
        if hits:
            out[group] = hits
    return out


class Workers:
    """The registry of dispatching processes: each beats (its id -> now) every
    `heartbeat` ms; one not heard from for `dead_after` ms is gone, and its leases are
    reclaimed by whoever notices first."""

    def __init__(self, store: StoreContext) -> None:
        self.store = store
        self.key = store.keys.workers()

    async def beat(self, worker: str, now: int) -> None:
        await self.store.client.zadd(self.key, {worker: now})

    async def dead(self, now: int, dead_after: int) -> list[str]:
        gone = await self.store.client.zrangebyscore(self.key, "-inf", f"({now - dead_after}")
        return [str(w) for w in gone]

    async def forget(self, workers: Sequence[str], before: int) -> None:
        """Take out `workers` unless one beat again since `before` (a restart of that id)."""
        for worker in workers:
            score = await self.store.client.zscore(self.key, worker)
            if score is not None and score < before:
                await self.store.client.zrem(self.key, worker)
