"""Due times: when a step goes, given its waits, the sequence's schedule and quiet hours.

The same functions serve the enroll path (the first step), the advance (the next step),
the send-time check (a step that came due outside its window is deferred) and the preview,
so the preview is what the dispatcher does.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo

from seqd.timing.calendar import HORIZON_DAYS, Calendar
from seqd.timing.local import DAY_MINUTES, local_day, local_minute, wall_ms, zone
from seqd.timing.quiet import QuietCalendars
from seqd.timing.zones import RecipientZone, Source

# Days searched for a moment open in every candidate zone before the fallback zone is used:
# a weekly pattern that never agrees in two weeks never will.
AGREE_DAYS = 14
# Rounds of moving to the next opening of one rule and re-checking the others.
_MAX_ROUNDS = 200
_FOREVER = 1 << 62


class StepTiming(NamedTuple):
    """What a step says about its time: waits after the previous step, a local time of day
    (minutes after midnight) to go at, and whether quiet hours apply (an SMS step that is
    not transactional)."""

    wait_minutes: int = 0
    wait_days: int = 0
    send_at: int | None = None
    quiet: bool = False


class Rules(NamedTuple):
    """A sequence's rules for one tenant: its schedule (None: always open), the schedule's
    fixed zone (None: the recipient's), its jitter, and the tenant's quiet hours (None: off)."""

    schedule: Calendar | None = None
    schedule_zone: str | None = None
    jitter_ms: int = 0
    quiet: QuietCalendars | None = None


class Due(NamedTuple):
    """When the step goes, what moved it there (in order: "window", "skip_date",
    "quiet_hours"), and the zone that decided with its source."""

    at: int
    moved_by: tuple[str, ...]
    zone: str
    source: Source


_Rule = tuple[Calendar, ZoneInfo, str]


@lru_cache(maxsize=4096)
def _rules(
    rules: Rules, quiet: bool, region: str | None, zones: tuple[str, ...]
) -> tuple[_Rule, ...]:
    """The calendars a moment must be open in, each in its zone, with its reason."""
    out: list[_Rule] = []
    if rules.schedule is not None:
        for name in (rules.schedule_zone,) if rules.schedule_zone else zones:
            out.append((rules.schedule, zone(name), "window"))
    if quiet and rules.quiet is not None:
        calendar = rules.quiet.for_region(region)
        out.extend((calendar, zone(name), "quiet_hours") for name in zones)
    return tuple(out)


def _first_open(
    checks: tuple[_Rule, ...], at: int, horizon: int
) -> tuple[int, int, list[str]] | None:
    """The first moment at or after `at` open under every check, the end of the interval
    open then, and the reasons it moved; None when there is none within `horizon` days."""
    moved: list[str] = []
    # Rules that never agree (a window wholly inside quiet hours) would move `at` from one
    # to the other for ever: give up past the horizon.
    limit = at + horizon * DAY_MINUTES * 60_000
    for _ in range(_MAX_ROUNDS):
        if at > limit:
            return None
        end = _FOREVER
        for calendar, tz, label in checks:
            opening = calendar.next_opening(tz, at, horizon)
            if opening is None:
                return None
            if opening.start > at:
                at = opening.start
                reason = opening.reason if label == "window" else label
                if reason not in moved:
                    moved.append(reason)
                break
            end = min(end, opening.end)
        else:
            return at, end, moved
    return None


def open_span(
    rules: Rules, step: StepTiming, recipient: RecipientZone, at: int
) -> tuple[int, int] | None:
    """The span [start, end) around `at` open under every rule of the step (the schedule's
    windows, quiet hours) in every candidate zone; None when `at` is closed. A step checked
    or due at a moment inside it goes then, unmoved: `due` answers that moment too."""
    start, end = 0, _FOREVER
    for calendar, tz, _ in _rules(rules, step.quiet, recipient.region, recipient.zones):
        opening = calendar.next_opening(tz, at)
        if opening is None or opening.start > at:
            return None
        start, end = max(start, opening.start), min(end, opening.end)
    return start, end


class Reopening(NamedTuple):
    """Where a closed moment's step goes under the send-time check (before jitter): the
    first moment open under every rule, the end of the span open then, what moved it; and
    `stable`: every moment from the one asked about up to this one is answered the same
    (each rule stays as open or closed as it was), so a burst of steps shares it."""

    at: int
    end: int
    moved: tuple[str, ...]
    stable: int


def reopening(
    rules: Rules, step: StepTiming, recipient: RecipientZone, at: int
) -> Reopening | None:
    """`due(..., waits=False)` of a moment `at` that is closed, before jitter (`jittered`);
    None when the candidate zones never agree (`due` then falls back to the default zone)."""
    checks = _rules(rules, step.quiet, recipient.region, recipient.zones)
    horizon = AGREE_DAYS if len(recipient.zones) > 1 else HORIZON_DAYS
    stable = _FOREVER
    for calendar, tz, _ in checks:
        opening = calendar.next_opening(tz, at, horizon)
        if opening is None:
            return None
        # (A skip date's reason depends on the local day asked from: stable to midnight.)
        midnight = wall_ms(tz, local_day(at, tz) + 1, 0)
        stable = min(stable, midnight, opening.start if opening.start > at else opening.end)
    found = _first_open(checks, at, horizon)
    if found is None:
        return None
    return Reopening(found[0], found[1], tuple(found[2]), stable)


def jittered(rules: Rules, key: str, at: int, end: int, moved: Sequence[str]) -> int:
    """`at`, a moment a rule moved (`moved`), spread by the schedule's jitter within the
    span open until `end`; a moment no rule moved is kept."""
    if moved and rules.jitter_ms:
        return at + _jitter(key, rules.jitter_ms, end - at)
    return at


def _open(calendar: Calendar, tz: ZoneInfo, at: int) -> bool:
    opening = calendar.next_opening(tz, at)
    return opening is not None and opening.start <= at


def _jitter(key: str, span_ms: int, room: int) -> int:
    """A delay below `span_ms` fixed by `key` (enrollment and step: a retry keeps it), short
    enough to stay inside the `room` left in the window."""
    if span_ms <= 0 or room <= 1:
        return 0
    return zlib.crc32(key.encode()) % min(span_ms, room - 1)


def _after_waits(tz: ZoneInfo, after: int, step: StepTiming, rules: Rules) -> int:
    """`after` plus the step's wait_days (open days of the schedule when there is one,
    calendar days otherwise) and wait_minutes. The days keep the local time of day, or,
    for a step with `send_at` ("day 3 at 10:00"), end at the local midnight of the day."""
    at = after
    if step.wait_days:
        day, minute = local_minute(after, tz)
        if rules.schedule is None:
            day += step.wait_days
        else:
            counted = 0
            for _ in range(step.wait_days * 7 + HORIZON_DAYS):
                day += 1
                counted += rules.schedule.is_open_day(tz, day)
                if counted == step.wait_days:
                    break
        at = wall_ms(tz, day, 0 if step.send_at is not None else minute)
    return at + step.wait_minutes * 60_000


def _at_time_of_day(tz: ZoneInfo, at: int, minute: int) -> int:
    """The first moment at or after `at` whose local time is `minute` after midnight."""
    day = local_minute(at, tz)[0]
    found = wall_ms(tz, day, minute)
    return found if found >= at else wall_ms(tz, day + 1, minute)


def _plan(
    rules: Rules,
    step: StepTiming,
    region: str | None,
    zones: tuple[str, ...],
    after: int,
    key: str,
    horizon: int,
    waits: bool,
) -> tuple[int, tuple[str, ...]] | None:
    clock = zone(rules.schedule_zone or zones[0])
    at = _after_waits(clock, after, step, rules) if waits else after
    checks = _rules(rules, step.quiet, region, zones)
    moved: list[str] = []
    asked = at
    if waits and step.send_at is not None:
        asked = _at_time_of_day(clock, at, step.send_at)
        if asked != at:
            moved.append("send_at")
    for _ in range(8):
        found = _first_open(checks, asked, horizon)
        if found is None:
            return None
        at, end, reasons = found
        moved += [r for r in reasons if r not in moved]
        if not waits or step.send_at is None:
            break
        # Moved to another day's opening before the step's time of day: that day's time.
        day, minute = local_minute(at, clock)
        if at == asked or minute >= step.send_at:
            break
        asked = wall_ms(clock, day, step.send_at)
    return jittered(rules, key, at, end, moved), tuple(r for r in moved if r != "send_at")


def due(
    rules: Rules,
    step: StepTiming,
    recipient: RecipientZone,
    after: int,
    key: str,
    *,
    waits: bool = True,
) -> Due:
    """When a step goes: its waits counted from `after` (the previous send, or enrollment),
    then the first moment open under the rules (`waits=False`: the first open moment at or
    after `after`, the send-time check). `key` (enrollment id and step) fixes the jitter."""
    if not rules.schedule and not (step.quiet and rules.quiet):
        if not waits:
            return Due(after, (), recipient.used, recipient.source)
        clock = zone(rules.schedule_zone or recipient.used)
        at = _after_waits(clock, after, step, rules)
        if step.send_at is not None:
            at = _at_time_of_day(clock, at, step.send_at)
        return Due(at, (), recipient.used, recipient.source)
    if not waits:
        checks = _rules(rules, step.quiet, recipient.region, recipient.zones)
        if all(_open(c, tz, after) for c, tz, _ in checks):
            return Due(after, (), recipient.used, recipient.source)
    several = len(recipient.zones) > 1
    horizon = AGREE_DAYS if several else HORIZON_DAYS
    found = _plan(rules, step, recipient.region, recipient.zones, after, key, horizon, waits)
    if found is not None:
        return Due(found[0], found[1], recipient.used, recipient.source)
    if several:
        zones = (recipient.fallback,)
        found = _plan(rules, step, recipient.region, zones, after, key, HORIZON_DAYS, waits)
        if found is not None:
            return Due(found[0], found[1], recipient.fallback, "default")
    # Closed for more than a year (skip dates on every open day): look again then.
    return Due(
        after + HORIZON_DAYS * DAY_MINUTES * 60_000, ("window",), recipient.used, recipient.source
    )
