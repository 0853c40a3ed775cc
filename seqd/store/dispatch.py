"""The dispatcher's view of the store: due times (`peekDue`), `claimDue` (claim or peek),
`leasePeeked`, `advance`, suppression reads, in one round trip (`advance_and_claim`).

Every call here is batched per shard (one pipeline or one script call per shard), because
the dispatcher's cost per step is what bounds seqd's throughput. A claim reply is one
JSON text per shard (sent in pieces, joined here), decoded straight into Structs: far
cheaper than a nested RESP array turned into Python lists item by item.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import msgspec

from seqd import ids
from seqd.store import calls
from seqd.store.context import StoreContext
from seqd.store.mirrors import CONTACT_READ, fields_of

Outcome = Literal[
    "sent", "skipped", "retry", "failed", "pause", "cancel", "complete", "release", "defer"
]


class Claimed(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One claimed step: enrollment id, its hash (storage field names), its contact's
    fields that its sequence's messages can use and that are set (store/mirrors.py)."""

    id: str
    e: dict[str, str]
    c: dict[str, str]


class ClaimBatch(msgspec.Struct, frozen=True, gc=False):
    # Due members looked at; equal to the limit when more may be due.
    seen: int
    # Sequence id -> its shard mirror (store/mirrors.py) for the items' sequences.
    m: dict[str, str]
    items: list[Claimed]


class _Item(msgspec.Struct, array_like=True, frozen=True, gc=False):
    id: str
    e: dict[str, str]
    # HMGET of its sequence's fields (`_Batch.f`, else CONTACT_READ): false where unset.
    c: list[str | bool]


class _Batch(msgspec.Struct, frozen=True, gc=False):
    seen: int
    m: dict[str, str]
    # Sequence id -> the contact fields read for its items (comma-separated), where the
    # claim read fewer than CONTACT_READ.
    f: dict[str, str]
    items: list[_Item]


class Settle(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What became of one claimed step; the fields each outcome needs are in advance-2.lua."""

    id: str
    token: str
    step: int
    kind: str
    at: int
    outcome: Outcome
    provider_id: str | None = None
    wait: int | None = None
    delay: int | None = None
    error: str | None = None
    reason: str | None = None
    variable: str | None = None
    started: bool = False
    # defer: when the step goes instead (ms), and the enrollment's zone then (`z`).
    until: int | None = None
    zone: str | None = None
    # The claimed enrollment's `s` (its queue): advance then need not read it.
    seq: str | None = None


# Passed steps in advance's ARGV[5..] (advance-2.lua): sent or skipped steps with a step
# after them, of a claim the caller read, whose events the caller built (`step_event`).
# What a claim's steps share is written once (a group, in one JSON array), each step as
# five plain values: decoding JSON was the script's largest cost after its writes, and a
# decoded step is one more table for Lua to make and collect.
PASSED_GROUP = ("token", "seq", "step", "kind", "outcome", "tenant", "attempts", "wait")
PASSED_STEP = ("id", "group", "due", "detail", "event")


class _Passed:
    """The passed steps of one advance call: their groups (ARGV[5]) and their values."""

    __slots__ = ("groups", "values")

    def __init__(self) -> None:
        # group -> its place in ARGV[5] (from 1), as text: converted once, not per step.
        self.groups: dict[tuple[str | int, ...], str] = {}
        self.values: list[str | bytes] = []

    def add(self, s: Settle, e: Mapping[str, str], event: bytes) -> None:
        wait = s.wait or 0
        group = (s.token, e["s"], s.step, s.kind, s.outcome, e["t"], e.get("a", ""), wait)
        place = self.groups.get(group)
        if place is None:
            place = self.groups[group] = str(len(self.groups) + 1)
        detail = (s.provider_id if s.outcome == "sent" else s.reason) or ""
        self.values += (s.id, place, str(s.at + wait), detail, event)

    def encode_groups(self) -> bytes:
        return _encode(list(self.groups))


class _StepFields(msgspec.Struct, omit_defaults=True):
    """The enrollment fields of a step event's data, as advance-2.lua's general path
    (`enrollment_event`) spells them for an active enrollment after the step."""

    s: str
    c: str
    st: str
    i: str
    n: str
    ua: str
    md: str | None = None


class _SentEvent(msgspec.Struct):
    id: str
    fields: _StepFields
    step: int
    kind: str
    provider_id: str | None
    sent_at: int


class _SkippedEvent(msgspec.Struct, omit_defaults=True):
    id: str
    fields: _StepFields
    step: int
    kind: str
    reason: str | None = None


_encode_event = msgspec.json.Encoder().encode


def step_event(s: Settle, e: Mapping[str, str], now: str) -> bytes:
    """The data of the `sequence.step.sent` / `.skipped` event advance's fast path writes
    for `s` (a passed step with a step after it), from the claimed enrollment `e` and the
    call's `now` (ms, as text); b"" for any other outcome. Built here because Redis is the
    bottleneck of a burst, and Python is not; advance uses it only while the claim's token
    holds, when `e` is still true."""
    if s.wait is None or s.wait < 0 or s.outcome not in ("sent", "skipped"):
        return b""
    fields = _StepFields(
        e["s"], e["c"], "active", str(s.step + 1), str(s.at + s.wait), now, e.get("md")
    )
    if s.outcome == "sent":
        return _encode_event(_SentEvent(s.id, fields, s.step, s.kind, s.provider_id, s.at))
    return _encode_event(_SkippedEvent(s.id, fields, s.step, s.kind, s.reason))


class Advanced(msgspec.Struct, frozen=True):
    applied: int
    late: int
    stale: list[str]


class SuppressionRecord(msgspec.Struct, frozen=True):
    """The part of a suppression record the dispatcher reads (store/suppressions.py writes it)."""

    reason: str | None = None


class Leased(NamedTuple):
    """What `leasePeeked` did in one shard."""

    token: str
    # The members not leased: changed since the peek (nothing of theirs may be sent).
    lost: list[str]
    # Leases run out that were leased again: their attempts, now counted.
    attempts: dict[str, str]


class Trip(NamedTuple):
    """What one `advance_and_claim` round trip did."""

    advanced: dict[int, Advanced]
    leased: dict[int, Leased]
    claims: dict[int, ClaimBatch]
    # (tenant, channel) -> {value: record} for the looked-up values that are suppressed.
    found: dict[tuple[str, str], dict[str, SuppressionRecord]]


_decode_batch = msgspec.json.Decoder(_Batch).decode


def is_unsettled(due_score: float | None) -> bool:
    """Whether a due score is a claim's lease not settled yet: leases end half a ms before
    a whole one (enrollment.lua `lease_token`), due times are whole ms."""
    return due_score is not None and not float(due_score).is_integer()


def _decode_claim(reply: list[str]) -> ClaimBatch:
    """A claimDue reply: its JSON text in pieces (the head, then one per item)."""
    raw = _decode_batch("".join((reply[0], ",".join(reply[1:]), "]}")))
    read = raw.f
    items = [
        Claimed(
            item.id,
            item.e,
            # Unset fields are false (an empty one reads as unset everywhere anyway); the
            # script answers one value per name, so no strict check on this hot path.
            {f: v for f, v in zip(fields_of(read.get(item.e["s"])), item.c, strict=False) if v},  # type: ignore[misc]
        )
        for item in raw.items
    ]
    return ClaimBatch(raw.seen, raw.m, items)


_encode = msgspec.json.Encoder().encode
_decode_record = msgspec.json.Decoder(SuppressionRecord).decode


# Due members a poll counts per shard at most: the dispatcher needs no more than a batch.
PEEK_CAP = 1000


class Dispatch:
    def __init__(self, store: StoreContext) -> None:
        self.store = store
        self.keys = store.keys

    def _shard_keys(self, shard: int) -> list[str]:
        return [self.keys.heads(shard), self.keys.outbox(shard)]

    def _claim_keys(self, shard: int) -> list[str]:
        return [self.keys.heads(shard), self.keys.outbox(shard), self.keys.mirrors(shard)]

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

    async def claim(
        self,
        shard: int,
        *,
        now: int,
        lease_ms: int,
        limit: int,
        on_unknown: str,
        max_attempts: int,
    ) -> ClaimBatch:
        """One `claimDue` call: up to `limit` due steps of `shard`, leased until now + lease."""
        claims = await self.claim_many(
            [shard],
            now=now,
            lease_ms=lease_ms,
            limit=limit,
            on_unknown=on_unknown,
            max_attempts=max_attempts,
        )
        return claims[shard]

    async def claim_many(
        self,
        shards: Sequence[int],
        *,
        now: int,
        lease_ms: int,
        limit: int,
        on_unknown: str,
        max_attempts: int,
    ) -> dict[int, ClaimBatch]:
        """`claim` for several shards in one round trip (one script call per shard)."""
        trip = await self.advance_and_claim(
            {},
            now=now,
            max_attempts=max_attempts,
            shards=shards,
            claim_now=now,
            lease_ms=lease_ms,
            limit=limit,
            on_unknown=on_unknown,
        )
        return trip.claims

    async def advance_many(
        self,
        batches: Mapping[int, Sequence[Settle]],
        *,
        now: int,
        max_attempts: int,
        claimed: Mapping[str, Mapping[str, str]] | None = None,
    ) -> dict[int, Advanced]:
        """`advance` for several shards in one round trip (one script call per shard).

        `claimed`: enrollment id -> its fields as claimDue returned them, for the items the
        caller claimed itself: their step events are built here (`step_event`), and the
        passed steps among them go as groups and values (PASSED_GROUP, PASSED_STEP).
        """
        trip = await self.advance_and_claim(
            batches, now=now, max_attempts=max_attempts, claimed=claimed
        )
        return trip.advanced

    async def advance_and_claim(
        self,
        batches: Mapping[int, Sequence[Settle]],
        *,
        now: int,
        max_attempts: int,
        claimed: Mapping[str, Mapping[str, str]] | None = None,
        shards: Sequence[int] = (),
        claim_now: int = 0,
        lease_ms: int = 0,
        limit: int = 0,
        on_unknown: str = "resend",
        lookups: Mapping[tuple[str, str], Sequence[str]] | None = None,
        lease: Mapping[int, Mapping[str, tuple[str, Sequence[tuple[str, str]]]]] | None = None,
        peek: bool = False,
    ) -> Trip:
        """`advance_many(batches)`, then `leasePeeked` for `lease` (shard -> {sequence id:
        (its mirror, [(enrollment id, score as peeked), ...])}), then `claim_many(shards)`
        (only peeking, when `peek`), then the suppression reads of `lookups` ((tenant,
        channel) -> values: one HMGET each), in one round trip: the dispatcher settles one
        batch, leases and screens the next and peeks at the one after with one wait on
        Redis.

        When a script or a read of the trip fails, the claims and leases that succeeded are
        released (due again at once, no attempt counted) before the error is raised:
        nothing of theirs was sent.
        """
        order = [shard for shard, items in batches.items() if items]
        calls = []
        now_text = str(now)
        for shard in order:
            tag = self.keys.shard_tag(shard)
            items = batches[shard]
            general: Sequence[Settle] = items
            passed = _Passed()
            if claimed is not None:
                general = []
                for s in items:
                    e = claimed.get(s.id)
                    if e is None:
                        general.append(s)
                        continue
                    event = step_event(s, e, now_text)
                    if event:
                        passed.add(s, e, event)
                    else:
                        s.seq = e["s"]
                        general.append(s)
            shared = passed.encode_groups()
            args = [tag, now, max_attempts, _encode(general), shared, *passed.values]
            calls.append(("advance", self._shard_keys(shard), args, tag))
        leasing = list((lease or {}).items())
        for shard, queues in leasing:
            tag = self.keys.shard_tag(shard)
            args = [tag, now, lease_ms, max_attempts]
            for seq, (mirror, members) in queues.items():
                args += (seq, mirror, len(members), ",".join([score for _, score in members]))
                args += [eid for eid, _ in members]
            calls.append(("leasePeeked", self._claim_keys(shard), args, tag))
        for shard in shards:
            tag = self.keys.shard_tag(shard)
            mode = "peek" if peek else "lease"
            args = [tag, claim_now, lease_ms, limit, on_unknown, max_attempts, mode, *CONTACT_READ]
            calls.append(("claimDue", self._claim_keys(shard), args, tag))
        groups = [(group, list(values)) for group, values in (lookups or {}).items() if values]
        reads = [
            ("HMGET", self.keys.suppressions(tenant, channel), *values)
            for (tenant, channel), values in groups
        ]
        replies = await self.store.runner.call_many(calls, reads) if calls or reads else []
        advanced: dict[int, Advanced] = {}
        failed: Exception | None = None
        for shard, reply in zip(order, replies, strict=False):
            if isinstance(reply, Exception):
                failed = failed or reply
                continue
            applied, late, stale = reply
            advanced[shard] = Advanced(int(applied), int(late), [str(s) for s in stale])
        leased: dict[int, Leased] = {}
        first = len(order)
        for (shard, _), reply in zip(leasing, replies[first : first + len(leasing)], strict=True):
            if isinstance(reply, Exception):
                failed = failed or reply
                continue
            token, lost, counted = reply
            attempts = dict(zip(counted[::2], counted[1::2], strict=True))
            leased[shard] = Leased(str(token), [str(m) for m in lost], attempts)
        claims: dict[int, ClaimBatch] = {}
        first += len(leasing)
        for shard, reply in zip(shards, replies[first : len(calls)], strict=True):
            if isinstance(reply, Exception):
                failed = failed or reply
                continue
            claims[shard] = _decode_claim(reply)
        rows = replies[len(calls) :]
        failed = failed or next((row for row in rows if isinstance(row, Exception)), None)
        if failed is not None:
            # (A peek leased nothing: its steps are as they were.)
            back = [
                (c.id, c.e["k"], c.e["s"])
                for batch in ({} if peek else claims).values()
                for c in batch.items
            ]
            for shard, (token, lost, _) in leased.items():
                back += [
                    (eid, token, seq)
                    for seq, (_, members) in (lease or {})[shard].items()
                    for eid, _ in members
                    if eid not in lost
                ]
            await self.release(back, now=claim_now or now)
            raise failed
        return Trip(advanced, leased, claims, _found(groups, rows))

    async def release(self, items: Sequence[tuple[str, str, str]], *, now: int) -> None:
        """Give back claimed steps that will not be sent, each (enrollment id, token, sequence
        id): due again at `now`, no attempt counted (a lease left to run out would read as
        a send that may have happened)."""
        batches: dict[int, list[Settle]] = {}
        for eid, token, seq in items:
            batches.setdefault(ids.shard_of(eid, self.keys.shards), []).append(
                Settle(id=eid, token=token, step=0, kind="", at=now, outcome="release", seq=seq)
            )
        if batches:
            # (max_attempts counts only for retries.)
            await self.advance_many(batches, now=now, max_attempts=1)

    async def advance(
        self, shard: int, items: Sequence[Settle], *, now: int, max_attempts: int
    ) -> Advanced:
        """One `advance` call settling `items` (all of `shard`)."""
        if not items:
            return Advanced(0, 0, [])
        advanced = await self.advance_many({shard: items}, now=now, max_attempts=max_attempts)
        return advanced[shard]


def _found(
    groups: Sequence[tuple[tuple[str, str], Sequence[str]]], rows: Sequence[Sequence[str | None]]
) -> dict[tuple[str, str], dict[str, SuppressionRecord]]:
    """The suppression records among HMGET `rows` of `groups` ((tenant, channel), values)."""
    out: dict[tuple[str, str], dict[str, SuppressionRecord]] = {}
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
