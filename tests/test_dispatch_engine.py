"""The dispatcher's rules, driven through `run_once` with an injected clock (no sleeping)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import msgspec
import pytest

from seqd import ids, models
from seqd.channels.base import OutboundMessage, SendResult
from seqd.config import DispatchConfig
from seqd.engine.dispatcher import Dispatcher
from seqd.models import SequenceStatus
from seqd.store.db import Store, connect
from seqd.store.dispatch import Dispatch
from seqd.times import from_rfc3339, now_ms
from tests.conftest import ValkeyProcess
from tests.dispatchutil import (
    TENANT,
    Clock,
    OneSender,
    Recorder,
    contacts,
    dispatcher,
    due_ms,
    due_score,
    email,
    enroll,
    events,
    raw,
    read,
    sequence,
    sms,
    unsettled,
    until,
)

MINUTE = 60_000


@pytest.fixture
async def one_shard(valkey: ValkeyProcess, prefix: str) -> AsyncIterator[Store]:
    """A store with a single shard: one claim sees every enrollment, in due order."""
    s = await Store.open(connect(valkey.url), prefix, 1)
    yield s
    await s.close()


async def test_first_step_fires_at_enrollment_plus_wait_later_ones_after_the_send(
    store: Store,
) -> None:
    seq = await sequence(store, sms("one", wait=2), sms("two", wait=3), sms("three"))
    (e,) = await enroll(store, seq, await contacts(store, 1))
    enrolled = ids.time_of(e.id)
    clock = Clock(enrolled)
    sender = Recorder()
    d = dispatcher(store, sender, clock)

    clock.at = enrolled + 2 * MINUTE - 1
    assert (await d.run_once(clock.at)).claimed == 0
    assert sender.messages == []
    clock.at = enrolled + 2 * MINUTE
    done = await d.run_once(clock.at)
    assert (done.claimed, done.sent, done.settled) == (1, 1, 1)
    assert [m.body for m in sender.messages] == ["one"]
    sent_at = clock.at
    assert due_ms(await read(store, e.id)) == sent_at + 3 * MINUTE

    clock.at = sent_at + 3 * MINUTE - 1
    assert (await d.run_once(clock.at)).claimed == 0
    clock.at = (
        sent_at + 3 * MINUTE + 40
    )  # the send itself takes 40 ms: the next wait counts from it
    await d.run_once(sent_at + 3 * MINUTE)
    assert [m.body for m in sender.messages] == ["one", "two"]
    got = await read(store, e.id)
    assert due_ms(got) == clock.at  # "three" waits 0 minutes after "two"'s send
    await d.run_once(clock.at)
    got = await read(store, e.id)
    assert got.status == "completed" and from_rfc3339(got.completed_at or "") == clock.at
    types = [ev["type"] for ev in await events(store) if ev["id"] == e.id]
    assert types == [
        "sequence.enrollment.created",
        "sequence.step.sent",
        "sequence.step.sent",
        "sequence.step.sent",
        "sequence.enrollment.completed",
    ]
    enrollment = await store.enrollments.get(TENANT, e.id)
    assert enrollment.status == models.EnrollmentStatus.COMPLETED
    assert enrollment.completed_at is not None


async def test_round_reports_the_next_due_time(store: Store) -> None:
    seq = await sequence(store, sms(wait=5))
    (e,) = await enroll(store, seq, await contacts(store, 1))
    due = due_ms(await read(store, e.id))
    d = dispatcher(store, Recorder(), Clock(due - 1000))
    done = await d.run_once(due - 1000)
    assert done.claimed == 0 and done.next_due == due


@pytest.mark.parametrize("lanes", [1, 3])
async def test_a_round_works_through_a_backlog_many_batches_deep(
    one_shard: Store, lanes: int
) -> None:
    # 23 steps due in one shard, batches of 5: the shard's full claims go back in the queue,
    # so one round sends all 23 (each once) and says nothing more is due.
    seq = await sequence(one_shard, sms("hi"), sms("later", wait=60))
    enrolled = await enroll(one_shard, seq, await contacts(one_shard, 23))
    clock = Clock(now_ms())
    sender = Recorder()
    done = await dispatcher(one_shard, sender, clock, batch_size=5, lanes=lanes).run_once(clock.at)
    assert (done.claimed, done.sent, done.settled, done.more) == (23, 23, 23, False)
    assert sorted(m.enrollment_id for m in sender.messages) == sorted(e.id for e in enrolled)
    assert {(await read(one_shard, e.id)).current_step for e in enrolled} == {1}


async def test_a_round_goes_on_past_a_full_batch_with_nothing_to_send(one_shard: Store) -> None:
    # The first 8 members of the queue are stale (their enrollments ended by hand), the
    # last 2 due steps; batches of 5. The first peek is full and has nothing to send: the
    # round still goes on with that shard and sends the 2 in the same round.
    seq = await sequence(one_shard, sms("hi"), sms("later", wait=60))
    enrolled = sorted(
        await enroll(one_shard, seq, await contacts(one_shard, 10)), key=lambda e: e.id
    )
    for e in enrolled[:8]:
        await one_shard.client.hset(one_shard.keys.enrollment(0, e.id), "st", "cancelled")
    clock = Clock(now_ms())
    sender = Recorder()
    done = await dispatcher(one_shard, sender, clock, batch_size=5, lanes=1).run_once(clock.at)
    assert (done.sent, done.more) == (2, False)
    assert sorted(m.enrollment_id for m in sender.messages) == [e.id for e in enrolled[8:]]


async def test_a_lane_waits_on_redis_once_per_batch(one_shard: Store) -> None:
    # 23 steps due in batches of 5, one lane: each wait settles the batch sent, leases and
    # screens the batch peeked at and peeks at the next (advance, leasePeeked, claimDue and
    # the suppression HMGET in one pipeline), then, right before a batch's sends, one more
    # marks its lease as started (SADD: engine/recovery.py), so 5 batches are 12 round
    # trips, where claim, screen and advance each waiting on their own took 15. The shard
    # is peeked at again right after its lease, in the same pipeline.
    seq = await sequence(one_shard, sms("hi"), sms("later", wait=60))
    await enroll(one_shard, seq, await contacts(one_shard, 23))
    clock = Clock(now_ms())
    trips: list[tuple[list[str], list[str]]] = []
    real = one_shard.runner.call_many

    async def counted(calls, reads=()):  # type: ignore[no-untyped-def]
        names = [name for name, *_ in calls]
        if "peekDue" not in names:
            trips.append((names, [r[0] for r in reads]))
        return await real(calls, reads)

    one_shard.runner.call_many = counted  # type: ignore[method-assign]
    sender = Recorder()
    d = dispatcher(one_shard, sender, clock, batch_size=5, lanes=1)
    done = await d.run_once(clock.at)
    assert (done.claimed, done.settled) == (23, 23)
    assert len(sender.messages) == 23
    started = ([], ["SADD"])
    assert trips == [
        (["claimDue"], []),
        (["leasePeeked", "claimDue"], ["HMGET"]),
        *[started, (["advance", "leasePeeked", "claimDue"], ["HMGET"])] * 3,
        started,
        (["advance", "leasePeeked"], ["HMGET"]),
        started,
        (["advance"], []),
    ]


async def test_a_round_hands_back_to_the_loop_after_a_second_of_backlog(one_shard: Store) -> None:
    # Each send takes 100 ms of the clock, a batch of 5 half a second. A lane peeks one
    # batch ahead of its sends: the first two at 0 ms, a third at 500 ms, but not a fourth
    # at 1000 ms; the round sends what it peeked at and says more is due; the next round
    # goes on from there.
    seq = await sequence(one_shard, sms("hi"), sms("later", wait=60))
    await enroll(one_shard, seq, await contacts(one_shard, 23))
    clock = Clock(now_ms())

    def slow(message: OutboundMessage) -> SendResult:
        clock.advance(100)
        return SendResult(outcome="sent", provider_id=f"pid-{message.key}")

    d = dispatcher(one_shard, Recorder(answer=slow), clock, batch_size=5, lanes=1)
    first = await d.run_once(clock.at)
    assert first.more and (first.claimed, first.sent) == (15, 15)
    second = await d.run_once(clock.at)
    assert not second.more and (second.claimed, second.sent) == (8, 8)


async def test_paused_sequence_waits_and_resume_fires_overdue_steps_in_due_order(
    one_shard: Store,
) -> None:
    store = one_shard
    seq = await sequence(store, sms("{{first_name}}"), sms("second", wait=1))
    cids = await contacts(store, 5)
    for cid in cids:  # distinct due times, in this order
        await enroll(store, seq, [cid])
        await asyncio.sleep(0.002)
    await store.sequences.change(TENANT, seq.id, status=SequenceStatus.PAUSED)
    clock = Clock()
    clock.advance(10 * MINUTE)
    sender = Recorder()
    d = dispatcher(store, sender, clock)
    assert (await d.run_once(clock.at)).sent == 0
    # The queue waits as it is, with no head: the poll finds nothing due.
    assert await store.client.zcard(store.keys.queue(0, seq.id)) == 5
    assert await store.client.zscore(store.keys.heads(0), seq.id) is None
    assert (await d.run_once(clock.at)).claimed == 0

    await store.sequences.change(TENANT, seq.id, status=SequenceStatus.ACTIVE)
    done = await d.run_once(clock.at)
    assert done.sent == 5
    assert [m.body for m in sender.messages] == [f"n{i}" for i in range(5)]
    # The second step waits a minute after these (late) sends, not after the original time.
    assert {due_ms(await read(store, eid)) for eid in await _ids(store, seq)} == {clock.at + MINUTE}


async def _ids(store: Store, seq: models.Sequence) -> list[str]:
    rows, _, _ = await store.enrollments.list(
        TENANT, seq.id, limit=100, after=None, statuses=["active"]
    )
    return [e.id for e in rows]


async def test_archived_sequence_cancels_instead_of_sending(store: Store) -> None:
    seq = await sequence(store, sms())
    (e,) = await enroll(store, seq, await contacts(store, 1))
    shard = ids.shard_of(e.id, store.shards)
    await store.client.hset(store.keys.mirrors(shard), seq.id, "archived:99:1")
    sender = Recorder()
    clock = Clock()
    await dispatcher(store, sender, clock).run_once(clock.at)
    assert sender.messages == []
    got = await read(store, e.id)
    assert got.status == "cancelled" and got.cancel_reason == "sequence_archived"


async def test_a_newer_sequence_version_is_read_before_sending(store: Store) -> None:
    seq = await sequence(store, sms("old text"))
    (_e,) = await enroll(store, seq, await contacts(store, 1))
    clock = Clock()
    sender = Recorder()
    d = dispatcher(store, sender, clock)
    # (apply_to "all": the enrollment moves to the new steps; by default it stays on its own.)
    patch = models.SequencePatch(steps=[models.StepIn(kind="sms", body="new text")], apply_to="all")
    await store.sequences.change(TENANT, seq.id, patch=patch)
    await d.run_once(clock.at)
    assert [m.body for m in sender.messages] == ["new text"]


async def test_an_edit_that_names_another_contact_field_sends_it(store: Store) -> None:
    # A claim reads the contact fields the sequence's mirror names: the edit's new mirror
    # must name last_name, or the message would pause for a variable the contact has.
    seq = await sequence(store, sms("Hi {{first_name}}"), sms("Bye {{first_name}}", wait=1))
    (e,) = await enroll(store, seq, await contacts(store, 1, last_name="Lovelace"))
    clock = Clock()
    sender = Recorder()
    d = dispatcher(store, sender, clock)
    await d.run_once(clock.at)
    patch = models.SequencePatch(
        steps=[sms("Hi {{first_name}}"), sms("Bye {{first_name}} {{last_name}}", wait=1)],
        apply_to="all",
    )
    await store.sequences.change(TENANT, seq.id, patch=patch)
    clock.advance(MINUTE)
    await d.run_once(clock.at)
    assert [m.body for m in sender.messages] == ["Hi n0", "Bye n0 Lovelace"]
    assert (await read(store, e.id)).status == "completed"


async def test_missing_variable_pauses_and_names_it(store: Store) -> None:
    seq = await sequence(store, sms("Hi {{first_name}} from {{attributes.company}}"))
    (e,) = await enroll(store, seq, await contacts(store, 1))
    sender = Recorder()
    clock = Clock()
    await dispatcher(store, sender, clock).run_once(clock.at)
    assert sender.messages == []
    got = await read(store, e.id)
    assert got.status == "paused" and got.paused_reason == "missing_variable"
    ev = (await events(store))[-1]
    assert ev["type"] == "sequence.enrollment.paused" and ev["variable"] == "attributes.company"


async def test_attributes_metadata_and_fallbacks_render(store: Store) -> None:
    seq = await sequence(
        store,
        sms("{{first_name}} at {{attributes.company}} via {{metadata.source}} {{last_name|x}}"),
    )
    cids = await contacts(store, 1, attributes={"company": "Acme"})
    await enroll(store, seq, cids, {"source": "web"})
    sender = Recorder()
    clock = Clock()
    await dispatcher(store, sender, clock).run_once(clock.at)
    assert [m.body for m in sender.messages] == ["n0 at Acme via web x"]


async def test_no_phone_pauses_with_the_field_as_the_missing_variable(store: Store) -> None:
    seq = await sequence(store, sms())
    (e,) = await enroll(store, seq, await contacts(store, 1, phone=None))
    clock = Clock()
    await dispatcher(store, Recorder(), clock).run_once(clock.at)
    assert (await read(store, e.id)).paused_reason == "missing_variable"
    assert (await events(store))[-1]["variable"] == "phone"


async def test_retry_backs_off_and_cancels_failed_when_attempts_run_out(store: Store) -> None:
    seq = await sequence(store, sms())
    (e,) = await enroll(store, seq, await contacts(store, 1))
    sender = Recorder(answer=lambda m: SendResult(outcome="retry", error="twilio 503"))
    clock = Clock()
    d = dispatcher(store, sender, clock, max_attempts=3, retry_backoff_seconds=[10, 100])
    await d.run_once(clock.at)
    first = await due_score(store, e.id)
    assert first is not None and 9_000 <= first - clock.at <= 11_000
    clock.at = int(first)
    await d.run_once(clock.at)
    second = await due_score(store, e.id)
    assert second is not None and 90_000 <= second - clock.at <= 110_000
    clock.at = int(second)
    await d.run_once(clock.at)
    assert len(sender.messages) == 3
    got = await read(store, e.id)
    assert got.status == "cancelled" and got.cancel_reason == "failed"
    assert await due_score(store, e.id) is None
    evs = [ev for ev in await events(store) if ev["id"] == e.id]
    assert [ev.get("retrying") for ev in evs if ev["type"] == "sequence.step.failed"] == [
        True,
        True,
        False,
    ]
    assert evs[-1]["cancel_reason"] == "failed" and evs[-1]["error"] == "twilio 503"


async def test_retry_after_from_the_provider_is_honoured(store: Store) -> None:
    seq = await sequence(store, sms())
    (e,) = await enroll(store, seq, await contacts(store, 1))
    sender = Recorder(answer=lambda m: SendResult(outcome="retry", retry_after=3600))
    clock = Clock()
    await dispatcher(store, sender, clock, retry_backoff_seconds=[1]).run_once(clock.at)
    assert await due_score(store, e.id) == clock.at + 3_600_000


async def test_permanent_failure_cancels_with_the_error(store: Store) -> None:
    seq = await sequence(store, sms(), sms())
    (e,) = await enroll(store, seq, await contacts(store, 1))
    sender = Recorder(answer=lambda m: SendResult(outcome="failed", error="twilio 400 code 21211"))
    clock = Clock()
    await dispatcher(store, sender, clock).run_once(clock.at)
    got = await read(store, e.id)
    assert got.status == "cancelled" and got.cancel_reason == "failed"
    assert (await events(store))[-1]["error"] == "twilio 400 code 21211"


async def test_unknown_outcome_resends_or_holds(store: Store) -> None:
    seq = await sequence(store, sms())
    a, b = await enroll(store, seq, await contacts(store, 2))
    sender = Recorder(answer=lambda m: SendResult(outcome="unknown", error="no answer in time"))
    clock = Clock()
    await dispatcher(store, sender, clock, retry_backoff_seconds=[5]).run_once(clock.at)
    for e in (a, b):
        h = await raw(store, e.id)
        assert h["st"] == "active" and h["a"] == "1"
    clock.advance(6_000)
    await dispatcher(store, sender, clock, on_unknown="hold").run_once(clock.at)
    for e in (a, b):
        got = await read(store, e.id)
        assert got.status == "paused" and got.paused_reason == "delivery_unknown"


async def test_a_sender_that_raises_is_an_unknown_outcome(store: Store) -> None:
    seq = await sequence(store, sms())
    (e,) = await enroll(store, seq, await contacts(store, 1))

    def boom(message: OutboundMessage) -> SendResult:
        raise RuntimeError("bug")

    clock = Clock()
    await dispatcher(store, Recorder(answer=boom), clock).run_once(clock.at)
    h = await raw(store, e.id)
    assert h["st"] == "active" and h["a"] == "1" and not await unsettled(store, e.id)


async def _suppress(store: Store, channel: str, value: str, reason: str | None) -> None:
    record = {"created_at": 1} | ({"reason": reason} if reason else {})
    await store.client.hset(store.keys.suppressions(TENANT, channel), value, json.dumps(record))


async def test_suppressed_step_is_skipped_when_another_channel_remains(store: Store) -> None:
    seq = await sequence(store, sms("text"), email(wait=1), sms("later"))
    (cid,) = await contacts(store, 1)
    contact = await store.contacts.get(TENANT, cid)
    assert contact.phone is not None
    await _suppress(store, "sms", contact.phone, "opted_out")
    (e,) = await enroll(store, seq, [cid])
    sender = Recorder()
    clock = Clock()
    d = dispatcher(store, sender, clock)
    await d.run_once(clock.at)
    assert sender.messages == []
    got = await read(store, e.id)
    assert got.current_step == 1 and got.status == "active"
    assert await due_score(store, e.id) == clock.at + MINUTE
    assert (await events(store))[-1]["type"] == "sequence.step.skipped"
    clock.advance(MINUTE)
    await d.run_once(clock.at)
    assert [m.kind for m in sender.messages] == ["email"]
    # Only suppressed SMS is left: cancelled as opted out.
    await d.run_once(clock.at)
    got = await read(store, e.id)
    assert got.status == "cancelled" and got.cancel_reason == "opted_out"


async def test_a_suppression_found_while_composing_decides_over_the_template(
    store: Store,
) -> None:
    # The batch is composed while its suppression lookup is in flight, then its items with
    # a hit again: a suppressed contact whose text lacks a variable is skipped (not paused
    # for the variable), and the others of the batch are sent.
    seq = await sequence(store, sms("Hi {{attributes.team}}"), email(wait=1))
    cids = await contacts(store, 3, attributes={"team": "blue"})
    (suppressed,) = await contacts(store, 1)
    contact = await store.contacts.get(TENANT, suppressed)
    assert contact.phone is not None
    await _suppress(store, "sms", contact.phone, "opted_out")
    enrolled = await enroll(store, seq, [*cids, suppressed])
    sender = Recorder()
    clock = Clock()
    await dispatcher(store, sender, clock).run_once(clock.at)
    assert sorted(m.contact_id for m in sender.messages) == sorted(cids)
    assert {m.body for m in sender.messages} == {"Hi blue"}
    got = await read(store, enrolled[-1].id)
    assert (got.status, got.current_step) == ("active", 1)
    skipped = [ev for ev in await events(store) if ev["type"] == "sequence.step.skipped"]
    assert [(ev["id"], ev["reason"]) for ev in skipped] == [(enrolled[-1].id, "suppressed")]


@pytest.mark.parametrize(
    ("channel", "reason", "expected"),
    [("sms", None, "opted_out"), ("email", None, "bounced"), ("email", "manual", "manual")],
)
async def test_all_remaining_steps_suppressed_cancels(
    store: Store, channel: str, reason: str | None, expected: str
) -> None:
    step = sms() if channel == "sms" else email()
    seq = await sequence(store, step, step)
    (cid,) = await contacts(store, 1)
    contact = await store.contacts.get(TENANT, cid)
    await _suppress(store, channel, contact.phone if channel == "sms" else contact.email, reason)  # type: ignore[arg-type]
    (e,) = await enroll(store, seq, [cid])
    sender = Recorder()
    clock = Clock()
    await dispatcher(store, sender, clock).run_once(clock.at)
    assert sender.messages == []
    got = await read(store, e.id)
    assert got.status == "cancelled" and got.cancel_reason == expected


async def test_email_threading_and_header_injection(store: Store) -> None:
    seq = await sequence(
        store,
        sms(),
        email(subject="Intro for {{first_name}}"),
        email(subject="ignored when threaded"),
        email(subject="Fresh start", thread=False),
    )
    (e,) = await enroll(store, seq, await contacts(store, 1))
    sender = Recorder()
    clock = Clock()
    d = dispatcher(store, sender, clock)
    for _ in range(4):
        await d.run_once(clock.at)
    sent = [(m.step, m.subject, m.thread_root) for m in sender.messages]
    assert sent == [
        (0, None, None),
        (1, "Intro for n0", None),
        (2, "Re: Intro for n0", f"{e.id}.1"),
        (3, "Fresh start", None),
    ]

    seq = await sequence(store, email(subject="Hi {{attributes.x}}"))
    (e,) = await enroll(store, seq, await contacts(store, 1, attributes={"x": "a\r\nBcc: all"}))
    sender = Recorder()
    clock.at = now_ms()
    await dispatcher(store, sender, clock).run_once(clock.at)
    assert sender.messages == []
    got = await read(store, e.id)
    assert got.status == "cancelled" and got.cancel_reason == "failed"
    mine = [ev for ev in await events(store) if ev["id"] == e.id]
    assert "subject" in mine[-1]["error"]


async def test_provider_unsubscribed_answer_suppresses_and_skips(store: Store) -> None:
    seq = await sequence(store, sms(), email())
    (cid,) = await contacts(store, 1)
    (e,) = await enroll(store, seq, [cid])
    sender = Recorder(
        answer=lambda m: SendResult(outcome="failed", error="twilio 400 code 21610", suppress=True)
    )
    clock = Clock()
    await dispatcher(store, sender, clock).run_once(clock.at)
    got = await read(store, e.id)
    assert got.current_step == 1 and got.status == "active"
    phone = (await store.contacts.get(TENANT, cid)).phone
    assert await store.client.hexists(store.keys.suppressions(TENANT, "sms"), phone)


async def test_a_stale_worker_cannot_advance_twice(store: Store) -> None:
    seq = await sequence(store, sms(), sms(wait=60))
    (e,) = await enroll(store, seq, await contacts(store, 1))
    gate = asyncio.Event()

    class Slow(Recorder):
        async def send(self, message: OutboundMessage) -> SendResult:
            self.messages.append(message)
            await gate.wait()
            return SendResult(outcome="sent", provider_id="slow")

    clock = Clock()
    slow, fast = Slow(), Recorder()
    first = dispatcher(store, slow, clock, lease_seconds=1)
    stuck = asyncio.create_task(first.run_once(clock.at))
    await until(lambda: bool(slow.messages))
    clock.advance(1000)  # the lease passes; another worker claims and sends the step
    # (Every process's recovery loop takes back leases past their end: engine/recovery.py.)
    await Dispatch(store).reclaim(clock.at)
    await dispatcher(store, fast, clock, lease_seconds=1).run_once(clock.at)
    gate.set()
    done = await stuck
    assert done.stale == 1 and done.settled == 0
    h = await raw(store, e.id)
    assert h["i"] == "1" and h["p0"] == "pid-" + f"{e.id}.0"
    assert [ev["type"] for ev in await events(store)].count("sequence.step.sent") == 1


async def test_two_dispatchers_on_one_store_send_every_step_once(store: Store) -> None:
    # Two processes' dispatchers share the store: they may peek at the same steps, and the
    # lease right before the send gives each step to one of them only.
    seq = await sequence(store, sms("hi"), sms("later", wait=60))
    enrolled = await enroll(store, seq, await contacts(store, 600))
    clock = Clock(now_ms())
    senders = [Recorder(), Recorder()]
    ds = [dispatcher(store, r, clock, batch_size=20, lanes=3) for r in senders]
    for _ in range(40):
        rounds = await asyncio.gather(*(d.run_once(clock.at) for d in ds))
        if not any(r.more or r.claimed for r in rounds):
            break
    sent = [m.enrollment_id for r in senders for m in r.messages]
    assert sorted(sent) == sorted(e.id for e in enrolled)
    assert all(r.messages for r in senders)  # both took part
    for e in enrolled:
        assert (await read(store, e.id)).current_step == 1


async def test_stop_drains_the_batch_in_flight(store: Store) -> None:
    seq = await sequence(store, sms(), sms(wait=60))
    enrolled = await enroll(store, seq, await contacts(store, 3))
    sender = Recorder(delay=0.05)
    d = Dispatcher(store, DispatchConfig(drain_timeout_seconds=5), OneSender(sender))
    d.start()
    await until(lambda: len(sender.messages) >= 3)
    await d.stop()
    for e in enrolled:
        got = await read(store, e.id)
        assert got.current_step == 1 and not await unsettled(store, e.id)


async def test_stop_drops_the_piece_peeked_at_without_leasing_it(one_shard: Store) -> None:
    # 10 steps in batches of 5, one lane: the second batch is peeked at in the round trip
    # that leases the first, and would be leased in the one after the first's send. A stop
    # during that send: the first batch is advanced, the second was never leased, so its
    # steps are due as they were (no lease to run out, no attempt), and it is not sent.
    seq = await sequence(one_shard, sms(), sms(wait=60))
    enrolled = await enroll(one_shard, seq, await contacts(one_shard, 10))
    due = {e.id: await due_score(one_shard, e.id) for e in enrolled}
    sender = Recorder(delay=0.2)
    d = Dispatcher(one_shard, DispatchConfig(batch_size=5, lanes=1), OneSender(sender))
    d.start()
    await until(lambda: bool(sender.messages))
    await d.stop()
    sent = {m.enrollment_id for m in sender.messages}
    assert len(sent) == 5
    for e in enrolled:
        h = await raw(one_shard, e.id)
        if e.id in sent:
            assert h["i"] == "1" and not await unsettled(one_shard, e.id)
        else:
            assert h["i"] == "0" and h.get("a", "0") == "0"
            assert await due_score(one_shard, e.id) == due[e.id]


async def test_stop_releases_sends_that_outlast_the_drain_timeout(store: Store) -> None:
    seq = await sequence(store, sms())
    (e,) = await enroll(store, seq, await contacts(store, 1))
    sender = Recorder(delay=60)
    d = Dispatcher(store, DispatchConfig(drain_timeout_seconds=0.1), OneSender(sender))
    d.start()
    await until(lambda: bool(sender.messages))
    leased = await due_score(store, e.id)
    before = now_ms()
    assert leased is not None and leased > before  # claimed: due again when the lease ends
    await d.stop()
    got = await read(store, e.id)
    assert got.current_step == 0 and got.status == "active"
    # The send had started, so the provider may have it: released as an unsettled claim
    # (the next claim applies dispatch.on_unknown), and the old lease no longer holds.
    assert await unsettled(store, e.id)
    assert await due_score(store, e.id) != leased
    score = await due_score(store, e.id)
    assert score is not None and before - 1 <= score <= now_ms()


async def test_the_missing_variable_is_shown_on_the_enrollment_until_it_resumes(
    store: Store,
) -> None:
    """GET /enrollments/{id} names the variable a `missing_variable` pause is waiting
    for (before, only the event did); a resume clears it."""
    seq = await sequence(store, sms("Hi {{first_name}} from {{attributes.company}}"))
    (e,) = await enroll(store, seq, await contacts(store, 1))
    clock = Clock()
    await dispatcher(store, Recorder(), clock).run_once(clock.at)
    paused = await store.enrollments.get(TENANT, e.id)
    assert (paused.paused_reason, paused.paused_variable) == ("missing_variable",
                                                              "attributes.company")  # fmt: skip
    await store.enrollments.transition(TENANT, e.id, "resume")
    resumed = await store.enrollments.get(TENANT, e.id)
    assert (resumed.paused_reason, resumed.paused_variable) == (None, None)


async def test_a_completed_enrollment_shows_the_step_count_as_its_current_step(
    store: Store,
) -> None:
    """`current_step` is the next step to send: after the last one, the step count
    (as documented in the README and the OpenAPI description)."""
    seq = await sequence(store, sms(), sms())
    (e,) = await enroll(store, seq, await contacts(store, 1))
    clock = Clock()
    await dispatcher(store, Recorder(), clock).run_once(clock.at)
    await dispatcher(store, Recorder(), clock).run_once(clock.at)
    done = await store.enrollments.get(TENANT, e.id)
    assert done.status == "completed" and done.completed_at is not None
    assert done.current_step == len(seq.steps) == 2


async def test_a_shard_of_another_share_is_left_to_its_process_for_one_idle_poll(
    store: Store,
) -> None:
    """With a shard share (the workers of `seqd serve --workers N`), a due step in a shard
    of another share is left to that share's process for idle_poll_ms, then taken (that
    process is busy or gone); one in a shard of its own share is taken at once."""
    seq = await sequence(store, sms())
    (e,) = await enroll(store, seq, await contacts(store, 1))
    clock = Clock(due_ms(await read(store, e.id)))
    sender = Recorder()
    home = ids.shard_of(e.id, store.shards) % 2
    other = dispatcher(store, sender, clock, shard_share=f"{1 - home}/2", idle_poll_ms=900)
    done = await other.run_once(clock.at)
    assert sender.messages == []
    assert done.next_due is not None and clock.at < done.next_due <= clock.at + 900
    clock.at = done.next_due
    assert (await other.run_once(clock.at)).claimed == 1
    assert [m.enrollment_id for m in sender.messages] == [e.id]

    (f,) = await enroll(store, seq, await contacts(store, 1))
    clock.at = due_ms(await read(store, f.id))
    home = ids.shard_of(f.id, store.shards) % 2
    mine = dispatcher(store, sender, clock, shard_share=f"{home}/2", idle_poll_ms=900)
    assert (await mine.run_once(clock.at)).claimed == 1
    assert [m.enrollment_id for m in sender.messages] == [e.id, f.id]


async def test_a_lane_waits_for_send_slots_instead_of_putting_its_steps_back(
    store: Store,
) -> None:
    """Two lanes, each with a piece as large as the channel's send slots: the second waits
    for the first's sends to give the slots back instead of releasing its steps (which
    then had to be peeked at and leased again in another round): one round sends all."""
    seq = await sequence(store, sms())
    await enroll(store, seq, await contacts(store, 16))
    clock = Clock(now_ms() + 1000)
    sender = Recorder(delay=0.02)
    d = dispatcher(store, sender, clock, concurrency=4, batch_size=4, lanes=2)
    done = await d.run_once(clock.at)
    assert (done.claimed, done.sent, done.settled) == (16, 16, 16)
    assert len(sender.messages) == 16


def test_a_shard_share_names_a_share_that_exists() -> None:
    assert DispatchConfig(shard_share="1/4").own_shards(16) == frozenset({1, 5, 9, 13})
    assert DispatchConfig().own_shards(16) is None
    for bad in ("4/4", "1/0", "1", "a/b"):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"shard_share": bad}, DispatchConfig)


async def test_an_enrollment_due_now_wakes_the_sleeping_dispatcher_of_its_process(
    store: Store,
) -> None:
    """An enrollment made through this process's store, due at once, is sent without
    waiting out the idle poll (a minute here): the enrollment wakes the dispatcher."""
    seq = await sequence(store, sms())
    (cid,) = await contacts(store, 1)
    sender = Recorder()
    d = Dispatcher(store, DispatchConfig(idle_poll_ms=60_000), OneSender(sender))
    polls = 0
    heads = d.dispatch.heads

    async def counted(now: int) -> list[tuple[int | None, int]]:
        nonlocal polls
        got = await heads(now)
        polls += 1
        return got

    d.dispatch.heads = counted  # type: ignore[method-assign]
    d.start()
    try:
        await until(lambda: polls >= 1)  # the first round found nothing: the loop sleeps
        (e,) = await enroll(store, seq, [cid])
        await until(lambda: bool(sender.messages), seconds=10)
        assert [m.enrollment_id for m in sender.messages] == [e.id]
    finally:
        await d.stop()
    assert store.due_now == []  # a stopped dispatcher is woken no more
