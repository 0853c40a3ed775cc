"""Weekly open windows with closed dates, as UTC intervals per local day in a zone.

A `Calendar` is the compiled form of a schedule's `windows`, `skip_dates` and `holidays`,
and of SMS quiet hours (the hours between them are a window). An interval belongs to the
day it starts on; one that ends at or before its start ends the next day (22:00-02:00).
Each (zone, day)'s intervals are computed once and kept: the dispatcher asks per step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from functools import cache
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import holidays

from seqd.timing.local import DAY_MINUTES, WEEKDAYS, local_day, parse_hhmm, wall_ms

# Days searched ahead for an opening: a calendar with no open day in a year is closed.
HORIZON_DAYS = 400
# Open intervals a calendar remembers per zone for its fast path.
RECENT = 4
# (zone, day) entries a calendar keeps before it starts over.
CACHE_DAYS = 20_000

Span = tuple[int, int]


class Opening(NamedTuple):
    """The next open interval (ms) and why the asked moment was not in it: "window", or
    "skip_date" when a closed date was passed over; "" when it was open."""

    start: int
    end: int
    reason: str


def holiday_codes() -> Mapping[str, Sequence[str]]:
    """Country code -> its subdivision codes, of the calendars the holidays library keeps."""
    return holidays.list_supported_countries()


def check_holiday_code(code: str) -> None:
    country, _, subdiv = code.partition("-")
    supported = holiday_codes()
    if country not in supported:
        raise ValueError(f"{code!r} is not a holiday calendar (a country code like US)")
    if subdiv and subdiv not in supported[country]:
        raise ValueError(f"{code!r}: {country} has no subdivision {subdiv!r}")


@cache
def _holidays(code: str) -> Any:
    country, _, subdiv = code.partition("-")
    return holidays.country_holidays(country, subdiv=subdiv or None)


def parse_windows(windows: Mapping[str, Sequence[Sequence[str]]], root: str) -> list[str]:
    """The errors of a `windows` mapping, each "path: reason" (empty when it is good)."""
    errors = []
    spans = []  # (start, end) in minutes of the week, end past start
    for day, intervals in windows.items():
        if day not in WEEKDAYS:
            errors.append(f"{root}.{day}: not a weekday (one of {', '.join(WEEKDAYS)})")
            continue
        for n, interval in enumerate(intervals):
            path = f"{root}.{day}[{n}]"
            if len(interval) != 2:
                errors.append(f"{path}: an interval is [start, end]")
                continue
            try:
                start, end = parse_hhmm(interval[0]), parse_hhmm(interval[1])
            except ValueError as exc:
                errors.append(f"{path}: {exc}")
                continue
            if start == end or start == DAY_MINUTES:
                errors.append(f"{path}: empty interval")
                continue
            base = WEEKDAYS.index(day) * DAY_MINUTES
            spans.append((base + start, base + (end if end > start else end + DAY_MINUTES), path))
    spans.sort()
    week = 7 * DAY_MINUTES
    for (s1, e1, p1), (s2, _e2, p2) in zip(spans, spans[1:] + spans[:1], strict=True):
        if len(spans) > 1 and (s2 < e1 if s2 > s1 else s2 + week < e1):
            errors.append(f"{p2}: overlaps {p1}")
    return errors


class Calendar:
    """Open intervals per weekday in minutes, minus closed dates and holidays."""

    __slots__ = ("_days", "_last", "closed", "holiday_codes", "week")

    def __init__(
        self,
        windows: Mapping[str, Sequence[Sequence[str]]],
        closed: Iterable[date] = (),
        holiday_codes: Iterable[str] = (),
    ) -> None:
        # week[weekday] = ((start, end), ...) in minutes after that day's midnight; an end
        # past 1440 is the next day's. Touching intervals are merged.
        week: list[list[tuple[int, int]]] = [[] for _ in WEEKDAYS]
        for day, intervals in windows.items():
            for start_text, end_text in intervals:
                start, end = parse_hhmm(start_text), parse_hhmm(end_text)
                week[WEEKDAYS.index(day)].append((start, end if end > start else end + 1440))
        self.week = tuple(tuple(_merged(sorted(spans))) for spans in week)
        self.closed = frozenset(d.toordinal() for d in closed)
        self.holiday_codes = tuple(holiday_codes)
        self._days: dict[tuple[str, int], tuple[tuple[Span, ...], bool]] = {}
        # zone -> the intervals last found open, newest first: most asks fall inside one
        # (a step checked now, its next step timed a day on).
        self._last: dict[str, tuple[Span, ...]] = {}

    def is_closed_date(self, day: int) -> bool:
        if day in self.closed:
            return True
        if self.holiday_codes:
            d = date.fromordinal(day)
            return any(d in _holidays(code) for code in self.holiday_codes)
        return False

    def day(self, tz: ZoneInfo, day: int) -> tuple[tuple[Span, ...], bool]:
        """The UTC intervals (ms) that start on local day `day` in `tz`, and whether the
        day has windows that a closed date took away."""
        key = (tz.key, day)
        found = self._days.get(key)
        if found is None:
            spans = self.week[date.fromordinal(day).weekday()]
            if spans and self.is_closed_date(day):
                found = ((), True)
            else:
                found = (
                    tuple(
                        (wall_ms(tz, day, start), wall_ms(tz, day, end, latest=True))
                        for start, end in spans
                    ),
                    False,
                )
                # A window wholly inside a DST gap has no instant: drop it.
                found = (tuple(iv for iv in found[0] if iv[1] > iv[0]), False)
            if len(self._days) >= CACHE_DAYS:
                self._days.clear()
                self._last.clear()
            self._days[key] = found
        return found

    def is_open_day(self, tz: ZoneInfo, day: int) -> bool:
        return bool(self.day(tz, day)[0])

    def next_opening(self, tz: ZoneInfo, at: int, horizon: int = HORIZON_DAYS) -> Opening | None:
        """The interval open at `at` (reason "") or the next one to open after it; None when
        none opens within `horizon` days."""
        for start, end in self._last.get(tz.key, ()):
            if start <= at < end:
                return Opening(start, end, "")
        first = local_day(at, tz)
        skipped = False
        # The day before may hold an interval that crosses midnight into `at`'s day.
        for day in range(first - 1, first + horizon):
            intervals, closed = self.day(tz, day)
            skipped = skipped or (closed and day >= first)
            for start, end in intervals:
                if end > at:
                    if start <= at:
                        recent = self._last.get(tz.key, ())
                        self._last[tz.key] = ((start, end), *recent[: RECENT - 1])
                        return Opening(start, end, "")
                    return Opening(start, end, "skip_date" if skipped else "window")
        return None


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in spans:
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out
