"""Local wall times to UTC instants in a zone, across DST gaps and repeats."""

from __future__ import annotations

from datetime import date, datetime
from functools import cache
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_MINUTES = 1440


def parse_hhmm(text: str) -> int:
    """Minutes after midnight of "HH:MM" (00:00 to 24:00); ValueError otherwise."""
    if len(text) != 5 or text[2] != ":" or not (text[:2] + text[3:]).isdigit():
        raise ValueError(f"{text!r} is not a time of day as HH:MM")
    hours, minutes = int(text[:2]), int(text[3:])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise ValueError(f"{text!r} is not a time of day between 00:00 and 24:00")
    return hours * 60 + minutes


@cache
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_day(ms: int, tz: ZoneInfo) -> int:
    """The ordinal of the local date of instant `ms` in `tz`."""
    return datetime.fromtimestamp(ms / 1000, tz).toordinal()


def local_minute(ms: int, tz: ZoneInfo) -> tuple[int, int]:
    """(local date ordinal, minutes after local midnight) of instant `ms`."""
    dt = datetime.fromtimestamp(ms / 1000, tz)
    return dt.toordinal(), dt.hour * 60 + dt.minute


def wall_ms(tz: ZoneInfo, day: int, minute: int, *, latest: bool = False) -> int:
    """The instant (ms) of local wall time `minute` on day ordinal `day` in `tz`.

    A wall time in a DST gap (02:30 on a spring-forward night) does not exist: the answer
    is the first instant whose local time is at or after it (the end of the gap, 03:00).
    A repeated wall time (01:30 on a fall-back night) is its first occurrence, or its last
    with `latest` (window ends, so a window covers every moment its wall times name).
    """
    if minute >= DAY_MINUTES:
        day, minute = day + minute // DAY_MINUTES, minute % DAY_MINUTES
    d = date.fromordinal(day)
    wall = datetime(d.year, d.month, d.day, minute // 60, minute % 60)
    first = wall.replace(tzinfo=tz, fold=0).timestamp()
    second = wall.replace(tzinfo=tz, fold=1).timestamp()
    if first == second:
        return int(first * 1000)
    if datetime.fromtimestamp(first, tz).replace(tzinfo=None) == wall:
        # A repeat: both folds name this wall time, an hour (the offset change) apart.
        return int((max(first, second) if latest else min(first, second)) * 1000)
    # A gap: the offset changes between the two readings; find the change to the second.
    lo, hi = int(min(first, second)), int(max(first, second))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid
    return hi * 1000
