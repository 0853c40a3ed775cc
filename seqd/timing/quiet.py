"""SMS quiet hours as calendars: the hours between the end of one night's quiet and the
start of the next are the window a text may go in, per region of the number."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from seqd.timing.calendar import Calendar
from seqd.timing.local import WEEKDAYS


class QuietSpec(Protocol):
    """What config.QuietHours gives: quiet from `start` to `end` (HH:MM, across midnight),
    and per weekday where the law says so, `[start, end]` of that day (the day the quiet
    ends in the morning and starts again in the evening)."""

    @property
    def start(self) -> str: ...
    @property
    def end(self) -> str: ...
    @property
    def days(self) -> Mapping[Any, list[str]]: ...


def allowed(spec: QuietSpec) -> Calendar:
    """The calendar of the moments a text may go under `spec`."""
    windows = {}
    for day in WEEKDAYS:
        start, end = spec.days.get(day, (spec.start, spec.end))
        windows[day] = [[end, start]]
    return Calendar(windows)


class QuietCalendars:
    """One tenant's quiet hours: the default calendar and one per region ("US-FL", "US")."""

    __slots__ = ("by_region", "default")

    def __init__(self, default: QuietSpec, regions: Mapping[str, QuietSpec]) -> None:
        self.default = allowed(default)
        self.by_region = {name: allowed(spec) for name, spec in regions.items()}

    def for_region(self, region: str | None) -> Calendar:
        """A state's rule, else its country's, else the default."""
        if region is None:
            return self.default
        found = self.by_region.get(region)
        if found is None and "-" in region:
            found = self.by_region.get(region.partition("-")[0])
        return found or self.default
