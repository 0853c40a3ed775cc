"""The arithmetic of sender budgets that runs in the process: a sender's local day, its
cap that day (ramp included), and which of a pool's senders a step may take.

Counting happens in Redis (`takeBudget-1.lua`, one call per tenant per batch): each
sender's per-second and per-hour limits and its `min_gap_seconds` are GCRA buckets (the
API rate limiter's technique), its daily cap a count of the sends of its local day. What
needs a time zone (the day's number, the next midnight, the ramped cap) is computed here
and passed in, so the script does plain arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

from seqd.models import Rotation
from seqd.senders.models import SenderRecord

# `until` of an answer whose every sender is paused: no moment can be named.
PAUSED = -1
# Values per sender in takeBudget's ARGV (its header).
SPEC_VALUES = 8


class Today(NamedTuple):
    """A sender's current local day: its number (proleptic ordinal), the ms its next
    local midnight falls at, its cap (None: no daily cap), and the ms it began at."""

    day: int
    end: int
    cap: int | None
    start: int = 0


def today(record: SenderRecord, now: int) -> Today:
    zone = ZoneInfo(record.limits.timezone)
    date = datetime.fromtimestamp(now / 1000, UTC).astimezone(zone).date()
    # A midnight skipped by a DST change (a few zones move their clocks at 00:00) reads
    # as the first moment after the gap.
    midnight = datetime.combine(date + timedelta(days=1), time(0), tzinfo=zone)
    end = int(midnight.astimezone(UTC).timestamp() * 1000)
    began = datetime.combine(date, time(0), tzinfo=zone)
    start = int(began.astimezone(UTC).timestamp() * 1000)
    return Today(date.toordinal(), end, daily_cap(record, date.toordinal()), start)


def daily_cap(record: SenderRecord, day: int) -> int | None:
    """The cap of local day `day`: the ramp's (start + increase x days since the sender was
    created), at most `per_day`; None when neither is set."""
    per_day = record.limits.per_day
    ramp = record.ramp
    if ramp is None:
        return per_day
    zone = ZoneInfo(record.limits.timezone)
    created = datetime.fromtimestamp(record.created_at / 1000, UTC).astimezone(zone).date()
    ramped = ramp.start_per_day + ramp.increase_per_day * max(0, day - created.toordinal())
    return ramped if per_day is None else min(per_day, ramped)


# Sender id -> (the record, its local day's [start, end) in ms, its spec that day): the
# zone arithmetic is done once per sender and day, not once per batch. A changed record is
# a new object, so its spec is made again.
_specs: dict[str, tuple[SenderRecord, int, int, tuple[str | int, ...]]] = {}
SPECS_KEPT = 10_000


def spec(record: SenderRecord, now: int) -> tuple[str | int, ...]:
    """The sender's SPEC_VALUES values of takeBudget's ARGV."""
    kept = _specs.get(record.id)
    if kept is not None and kept[0] is record and kept[1] <= now < kept[2]:
        return kept[3]
    limits = record.limits
    day = today(record, now)
    values = (
        record.id,
        limits.per_second or 0,
        limits.per_hour or 0,
        record.min_gap_seconds * 1000,
        day.day,
        -1 if day.cap is None else day.cap,
        day.end,
        1 if record.paused else 0,
    )
    if len(_specs) >= SPECS_KEPT:
        _specs.clear()
    _specs[record.id] = (record, day.start, day.end, values)
    return values


class Ask(NamedTuple):
    """One step's request for budget: the senders it may take, in pool order, and the
    rotation cursor that picks where to start ("": take them in this order)."""

    pool: str
    senders: tuple[str, ...]


class Answer(NamedTuple):
    """The sender taken (None: none had budget), the earliest ms one of the asked senders
    has budget when none was taken (PAUSED: all paused), and the taken (else the first)
    sender's sends today before the ask."""

    sender: str | None
    until: int
    used: int


def ask(rotation: Rotation, pool: Sequence[str], pinned: str | None, pool_key: str) -> Ask | None:
    """What a step whose sequence has `pool` asks for: under sticky rotation the sender the
    contact got first (`pinned`) while it is still in the pool, else (round robin, or a
    first step) the pool from its rotation cursor on. None: the pool is empty (the tenant's
    configured sender is used, without limits)."""
    if not pool:
        return None
    if rotation == "sticky" and pinned is not None and pinned in pool:
        return Ask("", (pinned,))
    return Ask(pool_key, tuple(pool))


def encode(asks: Sequence[Ask], records: Mapping[str, SenderRecord], now: int) -> list[str | int]:
    """takeBudget's ARGV from ARGV[3] on: the senders the asks name and the pools they ask
    from, each once, then one value per ask (a step of a batch costs one argument, not one
    per sender of its pool). Every sender named must be in `records`; asks naming one
    rotation cursor name the same senders (one pool)."""
    place: dict[str, int] = {}
    specs: list[str | int] = []
    pools: dict[str | Ask, int] = {}
    pooled: list[str | int] = []
    chosen: list[int] = []
    for a in asks:
        senders = a.senders
        if not a.pool and len(senders) == 1:
            sid = senders[0]
            at = place.get(sid)
            if at is None:
                at = place[sid] = len(place) + 1
                specs += spec(records[sid], now)
            chosen.append(-at)
            continue
        number = pools.get(a.pool or a)
        if number is None:
            for sid in senders:
                if sid not in place:
                    place[sid] = len(place) + 1
                    specs += spec(records[sid], now)
            number = pools[a.pool or a] = len(pools) + 1
            pooled += (a.pool, len(senders), *(place[sid] for sid in senders))
        chosen.append(number)
    return [len(place), *specs, len(pools), *pooled, *chosen]


def decode(asks: Sequence[Ask], reply: Sequence[int]) -> list[Answer]:
    values = iter(reply)
    return [
        Answer(a.senders[t - 1] if (t := int(taken)) else None, int(until), int(used))
        for a, taken, until, used in zip(asks, values, values, values, strict=False)
    ]


def replies(reply: Sequence[int]) -> Iterator[tuple[int, int]]:
    """Per ask of `reply`, (the place taken among its senders, 0: none; until): `decode`
    without its Answers, for the dispatcher's hot path."""
    values = iter(reply)
    for taken, until, _ in zip(values, values, values, strict=False):
        yield int(taken), int(until)
