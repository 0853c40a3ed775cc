"""Schedules: a tenant's send windows (the API shapes and their rules), compiled into the
timing core's calendars.

A schedule is a document under its tenant's tag (store/schedules.py); a sequence names one
by `schedule_id`. Its `version` goes up with every change, so a compiled calendar is kept
per (id, version) and a change is seen by the next step that comes due.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from seqd.errors import FieldError, Invalid
from seqd.models import ONE_CONTACT, Input, Name, Output, Page, Timestamp
from seqd.timing import calendar
from seqd.timing.local import WEEKDAYS
from seqd.timing.zones import valid_zone

CONTACT_ZONE = "contact"
ZoneName = Annotated[str, Meta(min_length=1, max_length=64)]
# The pattern is stated for the document; `calendar` checks it, naming the day and interval.
WindowTime = Annotated[
    str,
    Meta(max_length=5, extra_json_schema={"pattern": r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"}),
]
# The weekday names `calendar` accepts, stated for the document.
WindowDay = Annotated[str, Meta(max_length=16, extra_json_schema={"enum": list(WEEKDAYS)})]
IntervalText = Annotated[list[WindowTime], Meta(min_length=2, max_length=2)]
Windows = Annotated[
    dict[WindowDay, Annotated[list[IntervalText], Meta(max_length=48)]],
    Meta(max_length=7, description="weekday (mon..sun) -> [[start, end], ...] as HH:MM"),
]
SkipDates = Annotated[
    list[Annotated[str, Meta(max_length=10, extra_json_schema={"format": "date"})]],
    Meta(max_length=1000),
]
HolidayCodes = Annotated[
    list[Annotated[str, Meta(max_length=16)]],
    Meta(max_length=20, description="public-holiday calendars: US, US-CA, DE-BY, ..."),
]
JitterSeconds = Annotated[int, Meta(ge=0, le=86_400)]


class ScheduleCreate(Input, kw_only=True):
    name: Name
    # "contact": each recipient's own zone; an IANA name: that zone for every recipient.
    timezone: ZoneName = CONTACT_ZONE
    default_timezone: ZoneName | None = None
    windows: Windows
    skip_dates: SkipDates = msgspec.field(default_factory=list)
    holidays: HolidayCodes = msgspec.field(default_factory=list)
    jitter_seconds: JitterSeconds = 0


class SchedulePatch(Input, kw_only=True):
    name: Name | UnsetType = UNSET
    timezone: ZoneName | UnsetType = UNSET
    default_timezone: ZoneName | UnsetType | None = UNSET
    windows: Windows | UnsetType = UNSET
    skip_dates: SkipDates | UnsetType = UNSET
    holidays: HolidayCodes | UnsetType = UNSET
    jitter_seconds: JitterSeconds | UnsetType = UNSET


class Schedule(Output, kw_only=True):
    id: str
    name: str
    timezone: str
    default_timezone: str | None = None
    windows: dict[str, list[list[str]]]
    skip_dates: list[str] = msgspec.field(default_factory=list)
    holidays: list[str] = msgspec.field(default_factory=list)
    jitter_seconds: int = 0
    version: int = 1
    created_at: Timestamp
    updated_at: Timestamp


class ScheduleEnvelope(Output, kw_only=True):
    schedule: Schedule


class ScheduleList(Page, kw_only=True):
    data: list[Schedule]


def check(schedule: Schedule) -> Schedule:
    """The schedule, or Invalid naming every bad field."""
    errors = []
    if schedule.timezone != CONTACT_ZONE and not valid_zone(schedule.timezone):
        errors.append(
            FieldError("timezone", '"contact" or an IANA time zone name (like Europe/Paris)')
        )
    if schedule.default_timezone is not None and not valid_zone(schedule.default_timezone):
        errors.append(FieldError("default_timezone", "not an IANA time zone name"))
    for problem in calendar.parse_windows(schedule.windows, "windows"):
        path, _, reason = problem.partition(": ")
        errors.append(FieldError(path, reason))
    if not any(schedule.windows.values()):
        errors.append(FieldError("windows", "no day has a window: the schedule never opens"))
    for n, text in enumerate(schedule.skip_dates):
        try:
            if len(text) != 10:
                raise ValueError
            date.fromisoformat(text)
        except ValueError:
            errors.append(FieldError(f"skip_dates[{n}]", f"{text!r} is not a date as YYYY-MM-DD"))
    for n, code in enumerate(schedule.holidays):
        try:
            calendar.check_holiday_code(code)
        except ValueError as exc:
            errors.append(FieldError(f"holidays[{n}]", str(exc)))
    if errors:
        raise Invalid(errors)
    return schedule


def patched(schedule: Schedule, patch: SchedulePatch, now: str) -> Schedule:
    changes: dict[str, Any] = {
        f: getattr(patch, f) for f in patch.__struct_fields__ if getattr(patch, f) is not UNSET
    }
    return msgspec.structs.replace(
        schedule, **changes, version=schedule.version + 1, updated_at=now
    )


# (id, version) -> compiled calendar; cleared when it grows past this many.
_CALENDARS: dict[tuple[str, int], calendar.Calendar] = {}
CALENDARS_KEPT = 4096


def compile_calendar(schedule: Schedule) -> calendar.Calendar:
    """The schedule's calendar, one per (id, version): its cached days are kept while the
    schedule does not change."""
    key = (schedule.id, schedule.version)
    found = _CALENDARS.get(key)
    if found is None:
        if len(_CALENDARS) >= CALENDARS_KEPT:
            _CALENDARS.clear()
        found = calendar.Calendar(
            schedule.windows,
            [date.fromisoformat(d) for d in schedule.skip_dates],
            schedule.holidays,
        )
        _CALENDARS[key] = found
    return found


def fixed_zone(schedule: Schedule) -> str | None:
    """The zone every recipient's windows are read in, or None for each one's own."""
    return None if schedule.timezone == CONTACT_ZONE else schedule.timezone


# -- preview ---------------------------------------------------------------------------
class PreviewContact(Input, kw_only=True):
    """An inline contact for a preview: only what decides its zone matters."""

    timezone: ZoneName | None = None
    phone: Annotated[str, Meta(max_length=64)] | None = None
    email: Annotated[str, Meta(max_length=320)] | None = None


class PreviewRequest(Input, kw_only=True):
    """Exactly one of `contact_id` or `contact`; `start_at` (RFC 3339) defaults to now."""

    # OpenAPI: exactly one of the two, as an enrollment's.
    json_schema_extra: ClassVar[dict[str, Any]] = {"oneOf": ONE_CONTACT}

    contact_id: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    contact: PreviewContact | None = None
    start_at: (
        Annotated[str, Meta(max_length=64, extra_json_schema={"format": "date-time"})] | None
    ) = None


MovedBy = Literal["window", "quiet_hours", "skip_date", "sender_limit", "frequency_cap"]


class PreviewStep(Output, kw_only=True):
    step: int
    send_at: Timestamp
    # The same moment in the recipient's zone, with its offset.
    local_time: str
    # The sender it goes from (POST /senders); null: the tenant's configured one.
    sender_id: str | None = None
    moved_by: list[MovedBy] = msgspec.field(default_factory=list)
    # The tenant's frequency cap skips it (policy `skip`): `send_at` is when it is passed over.
    skipped: bool = False


class Preview(Output, kw_only=True):
    timezone: str
    timezone_source: Literal["contact", "phone", "default"]
    steps: list[PreviewStep]
