"""takeBudget-1.lua and seqd/senders/budget.py: GCRA limits, daily caps that reset at the
sender's local midnight, the ramp, min_gap_seconds, rotation, pause, peek; an injected
clock throughout."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from seqd import ids
from seqd.senders import budget
from seqd.senders.budget import Ask
from seqd.senders.models import Limits, Ramp, SenderRecord
from seqd.store.db import Store

TENANT = "acme"


def ms(text: str, zone: str = "UTC") -> int:
    """ms of a local wall-clock time in `zone`."""
    moment = datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone))
    return int(moment.astimezone(UTC).timestamp() * 1000)


def sender(created: int, **over: Any) -> SenderRecord:
    fields: dict[str, Any] = {
        "id": ids.new(ids.SENDER, created),
        "channel": "sms",
        "address": "+14155550100",
        "created_at": created,
        "updated_at": created,
        **over,
    }
    return SenderRecord(**fields)


async def take(store: Store, records: list[SenderRecord], asks: list[Ask], now: int) -> list[Any]:
    return await store.senders.take(TENANT, asks, {r.id: r for r in records}, now)


def one(r: SenderRecord) -> Ask:
    return Ask("", (r.id,))


async def test_per_second_bucket_mid_burst(any_store: Store) -> None:
    now = ms("2026-06-01T12:00:00")
    s = sender(now, limits=Limits(per_second=2))
    answers = await take(any_store, [s], [one(s)] * 3, now)
    assert [a.sender for a in answers] == [s.id, s.id, None]
    # The third waits for the bucket: half a second (2 per second).
    assert answers[2].until == now + 500
    assert [a.used for a in answers] == [0, 1, 2]
    later = await take(any_store, [s], [one(s)], now + 500)
    assert later[0].sender == s.id


async def test_per_hour_and_min_gap(store: Store) -> None:
    now = ms("2026-06-01T12:00:00")
    hourly = sender(now, limits=Limits(per_hour=2))
    gapped = sender(now, address="+14155550101", min_gap_seconds=90)
    answers = await take(store, [hourly, gapped], [one(hourly)] * 3 + [one(gapped)] * 2, now)
    assert [a.sender for a in answers] == [hourly.id, hourly.id, None, gapped.id, None]
    assert answers[2].until == now + 1_800_000  # one every 30 min after a burst of 2
    assert answers[4].until == now + 90_000
    assert (await take(store, [gapped], [one(gapped)], now + 89_999))[0].sender is None
    assert (await take(store, [gapped], [one(gapped)], now + 90_000))[0].sender == gapped.id


async def test_daily_cap_resets_at_the_senders_midnight(any_store: Store) -> None:
    zone = "America/Chicago"
    # 23:00 in Chicago is 04:00 or 05:00 UTC of the next day: a UTC day would not do.
    now = ms("2026-03-10T22:30:00", zone)
    s = sender(now, limits=Limits(per_day=2, timezone=zone))
    answers = await take(any_store, [s], [one(s)] * 3, now)
    assert [a.sender is not None for a in answers] == [True, True, False]
    midnight = ms("2026-03-11T00:00:00", zone)
    assert answers[2].until == midnight
    assert (await take(any_store, [s], [one(s)], midnight - 1))[0].sender is None
    again = await take(any_store, [s], [one(s)] * 3, midnight)
    assert [a.sender is not None for a in again] == [True, True, False]
    assert again[0].used == 0


def test_the_day_across_dst() -> None:
    zone = "America/New_York"
    # The night before the spring-forward day: that day has 23 hours.
    s = sender(ms("2026-03-07T12:00:00", zone), limits=Limits(per_day=1, timezone=zone))
    day = budget.today(s, ms("2026-03-08T12:00:00", zone))
    assert day.end == ms("2026-03-09T00:00:00", zone)
    assert day.end - ms("2026-03-08T00:00:00", zone) == 23 * 3_600_000
    assert budget.today(s, day.end).day == day.day + 1


def test_a_senders_spec_is_its_local_day_whatever_was_asked_before() -> None:
    # spec() keeps a sender's day once worked out: a moment of another day (the next, or
    # an earlier one, as a preview's then the dispatcher's) gets that day's number and cap.
    zone = "America/New_York"
    created = ms("2026-03-06T12:00:00", zone)
    s = sender(
        created, limits=Limits(timezone=zone), ramp=Ramp(start_per_day=10, increase_per_day=5)
    )
    day, cap, end = 4, 5, 6  # places in a spec (takeBudget's header)
    moments = [
        "2026-03-08T23:59:00",
        "2026-03-09T00:00:00",
        "2026-03-08T00:00:00",
        "2026-03-07T23:59:59",
    ]
    specs = [budget.spec(s, ms(m, zone)) for m in moments]
    ordinals = [datetime.fromisoformat(m).date().toordinal() for m in moments]
    assert [v[day] for v in specs] == ordinals
    assert [v[cap] for v in specs] == [20, 25, 20, 15]
    assert specs[0][end] == specs[2][end] == ms("2026-03-09T00:00:00", zone)
    # A changed record (a new object) is worked out again.
    paused = sender(created, id=s.id, paused=True)
    assert budget.spec(paused, ms(moments[0], zone))[-1] == 1


def test_ramp_grows_by_local_day_up_to_per_day() -> None:
    zone = "Asia/Kolkata"
    created = ms("2026-06-01T23:50:00", zone)
    s = sender(
        created,
        limits=Limits(per_day=45, timezone=zone),
        ramp=Ramp(start_per_day=20, increase_per_day=10),
    )
    caps = [budget.today(s, ms(f"2026-06-0{d}T00:10:00", zone)).cap for d in (2, 3, 4)]
    assert budget.today(s, created).cap == 20
    assert caps == [30, 40, 45]
    unbounded = sender(created, ramp=Ramp(start_per_day=5, increase_per_day=5))
    assert budget.today(unbounded, ms("2026-06-11T12:00:00", zone)).cap == 55
    assert budget.today(sender(created), created).cap is None


async def test_ramp_caps_the_day(store: Store) -> None:
    created = ms("2026-06-01T09:00:00")
    s = sender(created, ramp=Ramp(start_per_day=2, increase_per_day=1))
    first = await take(store, [s], [one(s)] * 3, created)
    assert [a.sender is not None for a in first] == [True, True, False]
    assert first[2].until == ms("2026-06-02T00:00:00")
    second = await take(store, [s], [one(s)] * 4, ms("2026-06-02T09:00:00"))
    assert [a.sender is not None for a in second] == [True, True, True, False]


async def test_round_robin_spreads_and_skips_a_sender_without_budget(any_store: Store) -> None:
    now = ms("2026-06-01T12:00:00")
    a, b, c = (sender(now, address=f"+1415555010{i}") for i in range(3))
    pool = Ask("seq_1:sms", (a.id, b.id, c.id))
    answers = await take(any_store, [a, b, c], [pool] * 6, now)
    assert [x.sender for x in answers] == [a.id, b.id, c.id, a.id, b.id, c.id]
    # The cursor is kept in Redis: the next call (another process) goes on from it.
    nxt = await take(any_store, [a, b, c], [pool], now)
    assert nxt[0].sender == a.id
    # b out of budget: its turn goes to the next one with budget.
    capped = sender(now, address="+14155550109", limits=Limits(per_day=1))
    pool2 = Ask("seq_2:sms", (capped.id, b.id))
    got = await take(any_store, [capped, b], [pool2] * 3, now)
    assert [x.sender for x in got] == [capped.id, b.id, b.id]


async def test_none_with_budget_waits_for_the_soonest(store: Store) -> None:
    now = ms("2026-06-01T12:00:00")
    slow = sender(now, limits=Limits(per_hour=1))
    fast = sender(now, address="+14155550101", min_gap_seconds=5)
    paused = sender(now, address="+14155550102", paused=True)
    pool = Ask("p", (slow.id, fast.id, paused.id))
    got = await take(store, [slow, fast, paused], [pool] * 3, now)
    assert [x.sender for x in got] == [slow.id, fast.id, None]
    assert got[2].until == now + 5_000
    only_paused = await take(store, [paused], [one(paused)], now)
    assert only_paused[0].sender is None and only_paused[0].until == budget.PAUSED


async def test_peek_takes_nothing(store: Store) -> None:
    now = ms("2026-06-01T12:00:00")
    s = sender(now, limits=Limits(per_day=1))
    for _ in range(2):
        (seen,) = await store.senders.usage(TENANT, [s], now)
        assert seen.sender == s.id and seen.used == 0
    await take(store, [s], [one(s)], now)
    (seen,) = await store.senders.usage(TENANT, [s], now)
    assert seen.sender is None and seen.used == 1 and seen.until == ms("2026-06-02T00:00:00")


def test_ask_follows_the_rotation() -> None:
    pool = ("snd_a", "snd_b")
    assert budget.ask("sticky", pool, "snd_b", "k") == Ask("", ("snd_b",))
    # Not pinned yet, or pinned to a sender no longer in the pool: the pool's next one.
    assert budget.ask("sticky", pool, None, "k") == Ask("k", pool)
    assert budget.ask("sticky", pool, "snd_gone", "k") == Ask("k", pool)
    assert budget.ask("round_robin", pool, "snd_b", "k") == Ask("k", pool)
    assert budget.ask("sticky", (), None, "k") is None


def test_a_pool_goes_once_and_each_step_is_one_argument() -> None:
    now = ms("2026-06-01T12:00:00")
    a, b = sender(now), sender(now, address="+14155550101")
    records = {a.id: a, b.id: b}
    pool = Ask("seq_1:sms", (a.id, b.id))
    args = budget.encode([pool, one(b), pool, pool], records, now)
    senders = 1 + 2 * budget.SPEC_VALUES
    # Two senders, one pool (its cursor, 2 members), then four asks.
    assert args[0] == 2 and args[senders] == 1
    assert args[senders + 1 :] == ["seq_1:sms", 2, 1, 2, 1, -2, 1, 1]
