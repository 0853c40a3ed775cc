"""Helpers of the dispatcher tests: seeding, a recording sender, an injected clock, events."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import msgspec

from seqd import ids, models
from seqd.channels.base import OutboundMessage, SendResult
from seqd.config import DispatchConfig
from seqd.engine.dispatcher import Dispatcher
from seqd.store.claims import ClaimBatch, Leased
from seqd.store.db import Store
from seqd.store.dispatch import Dispatch
from seqd.store.enrollments import EnrollItem
from seqd.store.outbox import Entry
from seqd.store.settles import Settled
from seqd.times import from_rfc3339, now_ms

TENANT = "acme"
# The worker id the tests' leases are recorded under (keys.workers).
WORKER = "test-worker"


def sms(body: str = "Hi {{first_name|there}}", wait: int = 0) -> models.StepIn:
    return models.StepIn(kind="sms", body=body, wait_minutes=wait)


def email(
    subject: str = "Hello {{first_name|there}}", body: str = "Body", wait: int = 0, **kw: Any
) -> models.StepIn:
    return models.StepIn(kind="email", subject=subject, body=body, wait_minutes=wait, **kw)


async def sequence(store: Store, *steps: models.StepIn, status: str = "active") -> models.Sequence:
    body = models.SequenceCreate(name="s", status=status, steps=list(steps))  # type: ignore[arg-type]
    return await store.sequences.create(TENANT, body)


_numbers = itertools.count()


async def contacts_in_shard(store: Store, n: int, shard: int = 0) -> list[str]:
    """`n` contacts of TENANT in one shard, written directly: only their owner, all the
    enroll script reads (fills one shard's batches fast)."""
    cids = [ids.new_in_shard(ids.CONTACT, shard, store.shards) for _ in range(n)]
    pipe = store.client.pipeline(transaction=False)
    for cid in cids:
        pipe.hset(store.keys.contact(shard, cid), "tenant", TENANT)
    await pipe.execute()
    return cids


async def contacts(store: Store, n: int, **fields: Any) -> list[str]:
    """`n` contacts with distinct phones and addresses; `fields` overrides (None clears)."""
    out = []
    for i in range(n):
        number = next(_numbers) % 10_000
        values = {
            "first_name": f"n{i}",
            "phone": f"+1415555{number:04d}",
            "email": f"p{number}@example.com",
            **fields,
        }
        values = {k: v for k, v in values.items() if v is not None}
        out.append((await store.contacts.create(TENANT, values)).id)
    return out


async def enroll(
    store: Store, seq: models.Sequence, cids: list[str], metadata: dict[str, Any] | None = None
) -> list[models.Enrollment]:
    results = await store.enrollments.enroll(
        TENANT, seq, [EnrollItem(c, metadata or {}) for c in cids]
    )
    out = [r.enrollment for r in results]
    assert all(e is not None for e in out), results
    return out  # type: ignore[return-value]


class Clock:
    """ms, moved by the test."""

    def __init__(self, at: int | None = None) -> None:
        self.at = now_ms() if at is None else at

    def __call__(self) -> int:
        return self.at

    def advance(self, ms: int) -> int:
        self.at += ms
        return self.at


class Recorder:
    """A sender that records every message and answers what `answer` says (default sent)."""

    def __init__(
        self,
        name: str = "recorder",
        answer: Callable[[OutboundMessage], SendResult] | None = None,
        delay: float = 0.0,
    ) -> None:
        self.name = name
        self.messages: list[OutboundMessage] = []
        self.answer = answer
        self.delay = delay
        self.closed = False

    async def send(self, message: OutboundMessage) -> SendResult:
        self.messages.append(message)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.answer is not None:
            return self.answer(message)
        return SendResult(outcome="sent", provider_id=f"pid-{message.key}")

    async def close(self) -> None:
        self.closed = True


class OneSender:
    """A SenderSource handing out one sender for every tenant and kind."""

    def __init__(self, sender: Recorder) -> None:
        self.sender = sender

    def get(self, tenant: str, kind: str) -> Recorder:
        return self.sender

    async def close(self) -> None:
        await self.sender.close()


def dispatcher(store: Store, sender: Recorder, clock: Clock, **config: Any) -> Dispatcher:
    return Dispatcher(store, DispatchConfig(**config), OneSender(sender), clock=clock)


async def events(store: Store, shard: int | None = None) -> list[dict[str, Any]]:
    """Every outbox event of the store (all shards; a batched entry's one by one), in each
    shard's order: its data with `type`."""
    shards = range(store.shards) if shard is None else [shard]
    out = []
    for s in shards:
        for sid, fields in await store.client.xrange(store.keys.outbox(s)):
            for data in Entry(s, sid, fields).events() or []:
                out.append({"type": fields["type"], **data})
    return out


async def read(store: Store, eid: str, tenant: str = TENANT) -> models.Enrollment:
    """The enrollment as the store's API reads it."""
    return await store.enrollments.get(tenant, eid)


def due_ms(enrollment: models.Enrollment) -> int:
    """An active enrollment's next_run_at, in ms."""
    assert enrollment.next_run_at is not None, enrollment
    return from_rfc3339(enrollment.next_run_at)


async def raw(store: Store, eid: str) -> dict[str, str]:
    """The enrollment's hash: for tests of the layout and of fields the API does not show
    (attempts `a`, provider ids `p<step>`)."""
    from seqd import ids

    shard = ids.shard_of(eid, store.shards)
    return await store.client.hgetall(store.keys.enrollment(shard, eid))  # type: ignore[no-any-return]


async def due_score(store: Store, eid: str) -> float | None:
    """The enrollment's score in its sequence's queue (None: not in it)."""
    from seqd import ids

    shard = ids.shard_of(eid, store.shards)
    seq = await store.client.hget(store.keys.enrollment(shard, eid), "s")
    if seq is None:
        return None
    return await store.client.zscore(store.keys.queue(shard, seq), eid)  # type: ignore[no-any-return]


async def queued(store: Store) -> int:
    """Members of every sequence queue of every shard."""
    from seqd.store.keys import SHARD_TEMPLATES

    pattern = SHARD_TEMPLATES["queue"].format(tag="{" + store.keys.prefix + ":*}", sequence_id="*")
    total = 0
    async for key in store.client.scan_iter(match=pattern):
        total += await store.client.zcard(key)
    return total


async def unsettled(store: Store, eid: str) -> bool:
    """Whether the enrollment's due member is a claim not settled yet (a lease score)."""
    from seqd.store.claims import is_unsettled

    return is_unsettled(await due_score(store, eid))


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait for `condition` (checked every ms), failing after `seconds`."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - polling a plain condition
            await asyncio.sleep(0.001)


async def peek(
    store: Store, shard: int, now: int, *, limit: int = 100, on_unknown: str = "resend"
) -> ClaimBatch:
    """claimDue (it only reads) of one shard, as the dispatcher calls it."""
    trip = Dispatch(store).trip(now=now, max_attempts=3)
    handle = trip.peek([shard], now=now, limit=limit, on_unknown=on_unknown)
    await trip.run()
    return handle.claims[shard]


async def lease(
    store: Store,
    shard: int,
    now: int,
    batch: ClaimBatch,
    *,
    lease_ms: int,
    max_attempts: int = 3,
    worker: str = WORKER,
) -> Leased:
    """leasePeeked of every item of `batch` (of `shard`), as the dispatcher leases a peek."""
    request: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    for item in batch.items:
        seq = item.enrollment.sequence
        request.setdefault(seq, (batch.m[seq], []))[1].append((item.id, item.enrollment.token))
    trip = Dispatch(store).trip(now=now, max_attempts=max_attempts)
    handle = trip.lease({shard: request}, lease_ms=lease_ms, worker=worker)
    await trip.run()
    return handle.leased[shard]


async def claim(
    store: Store,
    shard: int,
    now: int,
    *,
    limit: int = 100,
    lease_ms: int = 60_000,
    on_unknown: str = "resend",
    max_attempts: int = 3,
    worker: str = WORKER,
    started: bool = True,
) -> ClaimBatch:
    """The dispatcher's claim of a shard's due steps: the leases past their end taken back
    (as every process's recovery loop does), a peek, then the lease of what it found (in
    one go here), and, when `started`, the mark that their sends start. The items leased,
    with their tokens (and attempts counted)."""
    await Dispatch(store).reclaim(now)
    batch = await peek(store, shard, now, limit=limit, on_unknown=on_unknown)
    if not batch.items:
        return batch
    got = await lease(
        store, shard, now, batch, lease_ms=lease_ms, max_attempts=max_attempts, worker=worker
    )
    lost = set(got.lost)
    items = []
    for item in batch.items:
        if item.id in lost:
            continue
        item.enrollment.token = got.token
        if item.id in got.attempts:
            item.enrollment.attempts = got.attempts[item.id]
        items.append(item)
    if started and items:
        await Dispatch(store).started({shard: [got.token]})
    return ClaimBatch(batch.seen, batch.m, items)


def settled(**fields: Any) -> Settled:
    """An outcome from its fields, `outcome` naming its kind (store/settles.py)."""
    return msgspec.convert(fields, Settled)  # type: ignore[return-value]
