"""Senders in the dispatcher, against a real valkey with an injected clock: a sender's cap
reached mid-burst defers (never fails) and the rest go when its budget allows; sticky
contacts keep their sender across a restart; round robin spreads; daily caps reset at the
sender's local midnight; a paused sender holds its steps; no pool sends as before."""

from __future__ import annotations

from collections import Counter
from typing import Any

from seqd import ids, models
from seqd.senders.models import Limits, SenderRecord
from seqd.store.db import Store
from seqd.times import to_rfc3339
from tests.dispatchutil import (
    TENANT,
    Clock,
    Recorder,
    contacts,
    dispatcher,
    due_score,
    enroll,
    events,
    raw,
    sms,
)
from tests.test_senders_budget import ms

MINUTE = 60_000


async def add_sender(store: Store, now: int, n: int, **over: Any) -> SenderRecord:
    fields: dict[str, Any] = {
        "id": ids.new(ids.SENDER, now),
        "channel": "sms",
        "address": f"+1312555{n:04d}",
        "created_at": now,
        "updated_at": now,
        **over,
    }
    record = SenderRecord(**fields)
    await store.senders.create(TENANT, record, max_senders=100)
    return record


async def pooled(
    store: Store, pool: list[SenderRecord], *steps: models.StepIn, rotation: str = "sticky"
) -> models.Sequence:
    body = models.SequenceCreate(
        name="s",
        status="active",
        steps=list(steps),
        senders=models.SenderPools(sms=[s.id for s in pool]),
        rotation=rotation,  # type: ignore[arg-type]
    )
    return await store.sequences.create(TENANT, body)


async def due_at(store: Store, eid: str) -> int:
    score = await due_score(store, eid)
    assert score is not None
    return int(score)


def senders_of(recorder: Recorder) -> list[str | None]:
    return [m.sender.address if m.sender else None for m in recorder.messages]


async def test_a_cap_reached_mid_burst_defers_and_sends_later(store: Store) -> None:
    clock = Clock(ms("2027-06-01T12:00:00"))
    line = await add_sender(store, clock.at, 1, limits=Limits(per_second=2))
    seq = await pooled(store, [line], sms("hi"))
    enrolled = await enroll(store, seq, await contacts(store, 5))
    recorder = Recorder()
    d = dispatcher(store, recorder, clock)

    await d.run_once(clock.at)
    assert senders_of(recorder) == [line.address] * 2
    held = [e.id for e in enrolled if (await raw(store, e.id))["st"] == "active"]
    # Deferred to the moment the bucket allows a send: no attempt counted, nothing failed.
    assert [await due_at(store, eid) - clock.at for eid in held] == [500] * 3
    assert ["a" in await raw(store, eid) for eid in held] == [False] * 3
    # Recorded as a send-time deferral: the enrollment names the reason, due at the new time.
    for eid in held:
        shown = await store.enrollments.get(TENANT, eid)
        assert (shown.deferred_reason, shown.next_run_at) == (
            "sender_limit",
            to_rfc3339(clock.at + 500),
        )
    deferred = [e for e in await events(store) if e["type"] == "sequence.step.deferred"]
    assert sorted(e["id"] for e in deferred) == sorted(held)
    assert {e["reason"] for e in deferred} == {"sender_limit"}
    sent_at = [clock.at] * 2
    for _ in range(20):
        if len(recorder.messages) == 5:
            break
        clock.advance(250)
        before = len(recorder.messages)
        await d.run_once(clock.at)
        sent_at += [clock.at] * (len(recorder.messages) - before)
    assert len(recorder.messages) == 5, senders_of(recorder)
    # Two at once, then one every 500 ms: the limit held.
    assert [t - sent_at[0] for t in sent_at] == [0, 0, 500, 1000, 1500]
    done = [await raw(store, e.id) for e in enrolled]
    assert {h["st"] for h in done} == {"completed"}
    view = (await store.senders.usage(TENANT, [line], clock.at))[0]
    assert view.used == 5


async def test_sticky_sender_kept_across_a_restart(store: Store) -> None:
    clock = Clock(ms("2027-06-01T12:00:00"))
    a = await add_sender(store, clock.at, 1)
    b = await add_sender(store, clock.at, 2)
    seq = await pooled(store, [a, b], sms("one"), sms("two", wait=1))
    enrolled = await enroll(store, seq, await contacts(store, 6))
    first = Recorder()
    await dispatcher(store, first, clock).run_once(clock.at)
    got = {m.enrollment_id: m.sender.id for m in first.messages if m.sender}
    assert len(got) == 6
    # New contacts are spread over the pool...
    assert sorted(Counter(got.values()).values()) == [3, 3]
    for e in enrolled:
        assert (await raw(store, e.id))["ys"] == got[e.id]
    # ...and a new process (nothing cached) sends each one's next step from the same one.
    clock.advance(MINUTE)
    second = Recorder()
    await dispatcher(store, second, clock).run_once(clock.at)
    assert [m.body for m in second.messages] == ["two"] * 6
    assert {m.enrollment_id: m.sender.id for m in second.messages if m.sender} == got


async def test_sticky_waits_for_its_own_sender(store: Store) -> None:
    clock = Clock(ms("2027-06-01T12:00:00"))
    a = await add_sender(store, clock.at, 1, limits=Limits(per_day=1))
    b = await add_sender(store, clock.at, 2)
    seq = await pooled(store, [a, b], sms("one"), sms("two"))
    (e,) = await enroll(store, seq, await contacts(store, 1))
    recorder = Recorder()
    d = dispatcher(store, recorder, clock)
    await d.run_once(clock.at)
    # The first step took a (the cursor's first), which is now out of budget for the day:
    # the second step waits for a rather than going out from b.
    assert senders_of(recorder) == [a.address]
    await d.run_once(clock.at)
    assert senders_of(recorder) == [a.address]
    assert (await raw(store, e.id))["i"] == "1"
    assert await due_at(store, e.id) == ms("2027-06-02T00:00:00")


async def test_round_robin_spreads_and_skips_a_sender_without_budget(store: Store) -> None:
    clock = Clock(ms("2027-06-01T12:00:00"))
    pool = [await add_sender(store, clock.at, n) for n in range(3)]
    seq = await pooled(store, pool, sms("one"), sms("two"), rotation="round_robin")
    await enroll(store, seq, await contacts(store, 6))
    recorder = Recorder()
    d = dispatcher(store, recorder, clock)
    await d.run_once(clock.at)
    await d.run_once(clock.at)
    assert len(recorder.messages) == 12
    assert sorted(Counter(senders_of(recorder)).values()) == [4, 4, 4]
    # One sender capped: its turns go to the others, nothing waits.
    capped = await add_sender(store, clock.at, 9, limits=Limits(per_day=1))
    seq2 = await pooled(store, [capped, pool[0]], sms("x"), rotation="round_robin")
    await enroll(store, seq2, await contacts(store, 4))
    later = Recorder()
    await dispatcher(store, later, clock).run_once(clock.at)
    assert Counter(senders_of(later)) == {capped.address: 1, pool[0].address: 3}


async def test_daily_cap_resets_at_the_senders_midnight(store: Store) -> None:
    zone = "America/Chicago"
    clock = Clock(ms("2027-11-06T23:30:00", zone))  # the night DST ends there
    line = await add_sender(store, clock.at, 1, limits=Limits(per_day=1, timezone=zone))
    seq = await pooled(store, [line], sms("hi"))
    late = await enroll(store, seq, await contacts(store, 2))
    recorder = Recorder()
    d = dispatcher(store, recorder, clock)
    await d.run_once(clock.at)
    assert len(recorder.messages) == 1
    (waiting,) = [e.id for e in late if (await raw(store, e.id))["st"] == "active"]
    midnight = ms("2027-11-07T00:00:00", zone)
    assert await due_at(store, waiting) == midnight
    clock.at = midnight - 1
    await d.run_once(clock.at)
    assert len(recorder.messages) == 1
    clock.at = midnight
    await d.run_once(clock.at)
    assert len(recorder.messages) == 2


async def test_a_paused_sender_holds_its_steps(store: Store) -> None:
    clock = Clock(ms("2027-06-01T12:00:00"))
    line = await add_sender(store, clock.at, 1, paused=True)
    seq = await pooled(store, [line], sms("hi"))
    (e,) = await enroll(store, seq, await contacts(store, 1))
    recorder = Recorder()
    d = dispatcher(store, recorder, clock)
    await d.run_once(clock.at)
    assert recorder.messages == []
    h = await raw(store, e.id)
    assert h["st"] == "active" and "a" not in h
    assert await due_at(store, e.id) == clock.at + MINUTE

    def resume(r: SenderRecord) -> SenderRecord:
        return SenderRecord(**{**{f: getattr(r, f) for f in r.__struct_fields__}, "paused": False})

    await store.senders.update(TENANT, line.id, resume)
    clock.advance(MINUTE)
    await d.run_once(clock.at)
    assert senders_of(recorder) == [line.address]


async def test_without_senders_the_configured_one_sends(store: Store) -> None:
    clock = Clock(ms("2027-06-01T12:00:00"))
    gone = await add_sender(store, clock.at, 1)
    seq = await pooled(store, [gone], sms("one"), sms("two"))
    await enroll(store, seq, await contacts(store, 1))
    await store.senders.delete(TENANT, gone.id)
    recorder = Recorder()
    d = dispatcher(store, recorder, clock)
    await d.run_once(clock.at)
    await d.run_once(clock.at)
    # Its only sender deleted: the tenant's configured number, as for a sequence with none.
    assert senders_of(recorder) == [None, None]


async def test_get_sender_shows_the_day_a_burst_used(store: Store) -> None:
    """GET /v1/senders/{id} after its daily cap was reached mid-burst: used_today,
    remaining_today 0, next_free_at its next local midnight (where the held steps wait)."""
    from seqd.senders.budget import today
    from seqd.times import now_ms
    from tests.webhookutil import api_client

    clock = Clock(now_ms())
    line = await add_sender(
        store, clock.at, 1, limits=Limits(per_day=2, timezone="America/Chicago")
    )
    seq = await pooled(store, [line], sms("hi"))
    enrolled = await enroll(store, seq, await contacts(store, 3))
    recorder = Recorder()
    clock.at = max([await due_at(store, e.id) for e in enrolled])
    await dispatcher(store, recorder, clock).run_once(clock.at)
    assert len(recorder.messages) == 2
    midnight = today(line, clock.at).end
    (held,) = [e.id for e in enrolled if (await raw(store, e.id))["st"] == "active"]
    assert await due_at(store, held) == midnight
    async with api_client(store) as api:
        status, got = await api.call("GET", f"/senders/{line.id}")
    assert status == 200, got
    view = got["sender"]  # type: ignore[index]
    assert (view["daily_cap"], view["used_today"], view["remaining_today"]) == (2, 2, 0)
    assert view["next_free_at"] == to_rfc3339(midnight)
