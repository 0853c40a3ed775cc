"""The timing core with an injected clock: zones, windows, quiet hours, due times."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from seqd.config import SmsQuietHours
from seqd.timing import calendar as cal
from seqd.timing.due import Reopening, Rules, StepTiming, due, jittered, open_span, reopening
from seqd.timing.local import parse_hhmm, wall_ms
from seqd.timing.quiet import QuietCalendars
from seqd.timing.zones import phone_facts, resolve

NY = "America/New_York"
WEEKDAYS_9_17 = {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}


def ms(text: str, tz: str = "UTC") -> int:
    """An instant from a local wall time "YYYY-MM-DD HH:MM" in `tz` (not in a gap)."""
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp() * 1000)


def local(at: int, tz: str) -> str:
    return datetime.fromtimestamp(at / 1000, ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M %Z")


def quiet() -> QuietCalendars:
    spec = SmsQuietHours()
    return QuietCalendars(spec, spec.all_regions())


def fixed(tz: str) -> object:
    return resolve(tz, None, None, "UTC")


# -- wall times across DST ----------------------------------------------------------------
def test_a_window_starting_in_the_spring_forward_gap_opens_when_the_gap_ends() -> None:
    tz = ZoneInfo(NY)
    day = date(2026, 3, 8).toordinal()
    assert local(wall_ms(tz, day, parse_hhmm("02:30")), NY) == "2026-03-08 03:00 EDT"
    schedule = cal.Calendar({"sun": [["02:30", "05:00"]]})
    intervals, _ = schedule.day(tz, day)
    assert [(local(s, NY), local(e, NY)) for s, e in intervals] == [
        ("2026-03-08 03:00 EDT", "2026-03-08 05:00 EDT")
    ]


def test_a_window_on_the_fall_back_night_covers_both_runs_of_the_repeated_hour() -> None:
    tz = ZoneInfo(NY)
    day = date(2026, 11, 1).toordinal()
    intervals, _ = cal.Calendar({"sun": [["01:00", "02:00"]]}).day(tz, day)
    ((start, end),) = intervals
    assert local(start, NY) == "2026-11-01 01:00 EDT"
    assert (end - start) == 2 * 3600_000  # 01:00 EDT to 02:00 EST


def test_berlin_dst_both_ways() -> None:
    tz, berlin = ZoneInfo("Europe/Berlin"), "Europe/Berlin"
    spring, autumn = date(2026, 3, 29).toordinal(), date(2026, 10, 25).toordinal()
    assert local(wall_ms(tz, spring, parse_hhmm("02:15")), berlin) == "2026-03-29 03:00 CEST"
    first = wall_ms(tz, autumn, parse_hhmm("02:30"))
    last = wall_ms(tz, autumn, parse_hhmm("02:30"), latest=True)
    assert (local(first, berlin), local(last, berlin)) == (
        "2026-10-25 02:30 CEST",
        "2026-10-25 02:30 CET",
    )


def test_a_step_due_across_spring_forward_keeps_its_local_time() -> None:
    rules = Rules(schedule=cal.Calendar(WEEKDAYS_9_17 | {"sun": [["02:30", "04:00"]]}))
    recipient = fixed(NY)
    # Saturday 20:00 + 1 day (calendar days count open days: Sunday is open here).
    got = due(rules, StepTiming(wait_days=1), recipient, ms("2026-03-07 03:00", NY), "e:1")
    assert local(got.at, NY) == "2026-03-08 03:00 EDT"
    assert got.moved_by == ()


# -- windows, skip dates, holidays ---------------------------------------------------------
def test_a_step_due_at_night_waits_for_the_next_window_in_the_recipients_zone() -> None:
    rules = Rules(schedule=cal.Calendar(WEEKDAYS_9_17))
    got = due(rules, StepTiming(), fixed("Asia/Kolkata"), ms("2026-04-06 02:00", "UTC"), "k")
    # 02:00 UTC is 07:30 in Kolkata (UTC+05:30): the window opens 09:00 local.
    assert local(got.at, "Asia/Kolkata") == "2026-04-06 09:00 IST"
    assert got.moved_by == ("window",)
    assert (got.zone, got.source) == ("Asia/Kolkata", "contact")


def test_kiritimati_is_a_day_ahead() -> None:
    rules = Rules(schedule=cal.Calendar({"mon": [["09:00", "10:00"]]}))
    # Sunday 2026-04-05 20:00 UTC is already Monday 10:00 in Kiritimati (UTC+14): closed
    # until next Monday 09:00 there.
    got = due(rules, StepTiming(), fixed("Pacific/Kiritimati"), ms("2026-04-05 20:00"), "k")
    assert local(got.at, "Pacific/Kiritimati") == "2026-04-13 09:00 +14"
    early = due(rules, StepTiming(), fixed("Pacific/Kiritimati"), ms("2026-04-05 19:30"), "k")
    assert local(early.at, "Pacific/Kiritimati") == "2026-04-06 09:30 +14"


def test_a_window_crossing_midnight_belongs_to_the_day_it_starts() -> None:
    rules = Rules(schedule=cal.Calendar({"fri": [["22:00", "02:00"]]}))
    tz = "Europe/Berlin"
    sat_1am = due(rules, StepTiming(), fixed(tz), ms("2026-04-11 01:00", tz), "k")
    assert local(sat_1am.at, tz) == "2026-04-11 01:00 CEST" and sat_1am.moved_by == ()
    sat_3am = due(rules, StepTiming(), fixed(tz), ms("2026-04-11 03:00", tz), "k")
    assert local(sat_3am.at, tz) == "2026-04-17 22:00 CEST"


def test_skip_dates_and_holidays_close_their_day() -> None:
    schedule = cal.Calendar(WEEKDAYS_9_17, closed=[date(2026, 12, 24)], holiday_codes=["US"])
    got = due(Rules(schedule=schedule), StepTiming(), fixed(NY), ms("2026-12-23 18:00", NY), "k")
    # The 24th is skipped, the 25th is Christmas Day; the 26th-27th a weekend.
    assert local(got.at, NY) == "2026-12-28 09:00 EST"
    assert got.moved_by == ("skip_date",)


def test_wait_days_count_open_days_only() -> None:
    rules = Rules(schedule=cal.Calendar(WEEKDAYS_9_17))
    friday = ms("2026-04-10 10:15", NY)
    got = due(rules, StepTiming(wait_days=2), fixed(NY), friday, "k")
    assert local(got.at, NY) == "2026-04-14 10:15 EDT"  # Tuesday: two business days
    plain = due(Rules(), StepTiming(wait_days=2), fixed(NY), friday, "k")
    assert local(plain.at, NY) == "2026-04-12 10:15 EDT"  # Sunday: calendar days


def test_send_at_is_the_first_open_moment_at_that_local_time_after_the_wait() -> None:
    rules = Rules(schedule=cal.Calendar(WEEKDAYS_9_17))
    step = StepTiming(wait_days=1, send_at=parse_hhmm("10:00"))
    got = due(rules, step, fixed(NY), ms("2026-04-09 15:00", NY), "k")  # Thursday
    assert local(got.at, NY) == "2026-04-10 10:00 EDT"
    # Friday + 1 business day = Monday, at 10:00.
    got = due(rules, step, fixed(NY), ms("2026-04-10 15:00", NY), "k")
    assert local(got.at, NY) == "2026-04-13 10:00 EDT"
    # Minutes only: the first 10:00 after the wait, on an open day.
    got = due(
        rules, StepTiming(wait_minutes=60, send_at=600), fixed(NY), ms("2026-04-10 15:00", NY), "k"
    )
    assert local(got.at, NY) == "2026-04-13 10:00 EDT"
    # With no schedule: 10:00 local the next time it comes round after the wait.
    got = due(
        Rules(),
        StepTiming(wait_minutes=30, send_at=600),
        fixed(NY),
        ms("2026-04-10 09:00", NY),
        "k",
    )
    assert local(got.at, NY) == "2026-04-10 10:00 EDT"


def test_jitter_spreads_an_opening_and_is_fixed_per_enrollment_and_step() -> None:
    rules = Rules(schedule=cal.Calendar(WEEKDAYS_9_17), jitter_ms=600_000)
    night = ms("2026-04-08 03:00", NY)
    opening = ms("2026-04-08 09:00", NY)
    ats = {due(rules, StepTiming(), fixed(NY), night, f"enr_{n}:1").at for n in range(50)}
    assert len(ats) > 40 and all(opening <= at < opening + 600_000 for at in ats)
    again = due(rules, StepTiming(), fixed(NY), night, "enr_7:1").at
    assert again == due(rules, StepTiming(), fixed(NY), night, "enr_7:1").at
    # An open moment is not moved.
    noon = ms("2026-04-08 12:00", NY)
    assert due(rules, StepTiming(), fixed(NY), noon, "enr_7:1").at == noon


# -- zones of a phone number ------------------------------------------------------------
def test_zone_order_contact_then_phone_then_default() -> None:
    la = "+14155550100"
    assert resolve("Europe/Paris", la, NY, "UTC")[:2] == (("Europe/Paris",), "contact")
    assert resolve(None, la, NY, "UTC")[:2] == (("America/Los_Angeles",), "phone")
    assert resolve(None, None, NY, "UTC")[:2] == ((NY,), "default")
    assert resolve(None, None, None, "Asia/Tokyo")[:2] == (("Asia/Tokyo",), "default")
    assert resolve("Not/AZone", None, None, "UTC")[:2] == (("UTC",), "default")


def test_a_number_whose_zones_disagree_is_open_only_where_every_zone_is() -> None:
    # An Australian mobile maps to Cocos (UTC+6:30) through Lord Howe (UTC+10:30).
    zones, region = phone_facts("+61412345678")
    assert "Australia/Perth" in zones and "Australia/Sydney" in zones and region == "AU"
    recipient = resolve(None, "+61412345678", None, "UTC")
    rules = Rules(schedule=cal.Calendar({d: [["09:00", "17:00"]] for d in cal.WEEKDAYS}))
    got = due(rules, StepTiming(), recipient, ms("2026-04-08 00:00"), "k")
    for tz in zones:
        hour = datetime.fromtimestamp(got.at / 1000, ZoneInfo(tz)).hour
        assert 9 <= hour < 17, tz
    # The westernmost zone's 09:00 is the binding opening: 02:30 UTC.
    assert got.at == ms("2026-04-08 02:30") and got.source == "phone"


def test_a_toll_free_number_whose_zones_never_agree_uses_the_default_zone() -> None:
    zones, region = phone_facts("+18005550100")
    assert len(zones) > 20 and region == "US"
    recipient = resolve(None, "+18005550100", "America/Chicago", "UTC")
    rules = Rules(schedule=cal.Calendar(WEEKDAYS_9_17), quiet=quiet())
    got = due(rules, StepTiming(quiet=True), recipient, ms("2026-04-08 03:00", "UTC"), "k")
    assert (got.zone, got.source) == ("America/Chicago", "default")
    assert local(got.at, "America/Chicago") == "2026-04-08 09:00 CDT"


# -- SMS quiet hours -----------------------------------------------------------------------
def test_quiet_hours_hold_a_text_until_morning_and_a_transactional_one_goes() -> None:
    recipient = resolve(None, "+12125550100", None, "UTC")  # New York
    late = ms("2026-04-08 22:30", NY)
    got = due(Rules(quiet=quiet()), StepTiming(quiet=True), recipient, late, "k")
    assert local(got.at, NY) == "2026-04-09 08:00 EDT" and got.moved_by == ("quiet_hours",)
    assert due(Rules(quiet=quiet()), StepTiming(quiet=False), recipient, late, "k").at == late


def test_state_quiet_hours_from_the_numbers_area_code() -> None:
    assert phone_facts("+13055550100")[1] == "US-FL"
    assert phone_facts("+14155550100")[1] == "US-CA"
    assert phone_facts("+17135550100")[1] == "US-TX"
    florida = resolve(None, "+13055550100", None, "UTC")
    got = due(
        Rules(quiet=quiet()), StepTiming(quiet=True), florida, ms("2026-04-08 20:30", NY), "k"
    )
    assert local(got.at, NY) == "2026-04-09 08:00 EDT"
    texas = resolve(None, "+17135550100", None, "UTC")
    chicago = "America/Chicago"
    saturday = due(
        Rules(quiet=quiet()), StepTiming(quiet=True), texas, ms("2026-04-11 08:30", chicago), "k"
    )
    assert local(saturday.at, chicago) == "2026-04-11 09:00 CDT"
    sunday = due(
        Rules(quiet=quiet()), StepTiming(quiet=True), texas, ms("2026-04-12 09:30", chicago), "k"
    )
    assert local(sunday.at, chicago) == "2026-04-12 12:00 CDT"


def test_quiet_hours_and_a_window_together_report_both() -> None:
    rules = Rules(
        schedule=cal.Calendar({d: [["19:00", "23:00"]] for d in cal.WEEKDAYS}), quiet=quiet()
    )
    got = due(rules, StepTiming(quiet=True), fixed(NY), ms("2026-04-08 12:00", NY), "k")
    assert local(got.at, NY) == "2026-04-08 19:00 EDT" and got.moved_by == ("window",)
    got = due(rules, StepTiming(quiet=True), fixed(NY), ms("2026-04-08 21:30", NY), "k")
    assert local(got.at, NY) == "2026-04-09 19:00 EDT"
    assert set(got.moved_by) == {"quiet_hours", "window"}


def test_the_send_time_check_leaves_an_open_moment_alone() -> None:
    rules = Rules(schedule=cal.Calendar(WEEKDAYS_9_17), quiet=quiet())
    noon = ms("2026-04-08 12:00", NY)
    assert due(rules, StepTiming(wait_days=3), fixed(NY), noon, "k", waits=False).at == noon
    night = ms("2026-04-08 23:00", NY)
    moved = due(rules, StepTiming(wait_days=3), fixed(NY), night, "k", waits=False)
    assert local(moved.at, NY) == "2026-04-09 09:00 EDT"


@pytest.mark.parametrize(
    "zones",
    [("America/New_York",), ("America/New_York", "America/Chicago"), ("Asia/Kolkata",)],
)
def test_the_shortcuts_answer_what_due_answers(zones: tuple[str, ...]) -> None:
    """The dispatcher's shortcuts (engine/timetable.py): a moment inside a span `open_span`
    found is due then, and a closed moment before a `reopening`'s `stable` gets its answer,
    both equal to `due` computed afresh, across a week (windows across midnight, a skip date,
    quiet hours, the spring-forward night, every candidate zone)."""
    windows = {d: [["07:30", "12:00"], ["20:00", "01:30"]] for d in cal.WEEKDAYS}
    rules = Rules(
        schedule=cal.Calendar(windows, [date(2026, 3, 10)]), quiet=quiet(), jitter_ms=600_000
    )
    recipient = resolve(None, None, None, zones[0])._replace(zones=zones, region="US")
    step = StepTiming(quiet=True)
    known: tuple[int, int] | None = None
    closed: tuple[int, Reopening] | None = None
    checked = [0, 0]
    for at in range(ms("2026-03-06 00:00"), ms("2026-03-13 00:00"), 7 * 60_000 + 13_000):
        fresh = due(rules, step, recipient, at, "k", waits=False)
        if known is not None and known[0] <= at < known[1]:
            assert fresh.at == at and fresh.moved_by == (), local(at, zones[0])
            checked[0] += 1
            continue
        span = open_span(rules, step, recipient, at)
        if span is not None:
            known = span
            assert fresh.at == at
            continue
        if closed is None or not closed[0] <= at < closed[1].stable:
            found = reopening(rules, step, recipient, at)
            assert found is not None
            closed = (at, found)
        else:
            checked[1] += 1
        r = closed[1]
        assert (jittered(rules, "k", r.at, r.end, r.moved), r.moved) == (
            fresh.at, fresh.moved_by
        ), local(at, zones[0])  # fmt: skip
    assert min(checked) > 50


# -- validation ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("windows", "message"),
    [
        ({"mon": [["09:00", "09:00"]]}, "windows.mon[0]: empty interval"),
        (
            {"mon": [["09:00", "12:00"], ["11:00", "13:00"]]},
            "windows.mon[1]: overlaps windows.mon[0]",
        ),
        (
            {"sun": [["22:00", "02:00"]], "mon": [["01:00", "03:00"]]},
            "windows.mon[0]: overlaps windows.sun[0]",
        ),
        ({"mon": [["9:00", "12:00"]]}, "windows.mon[0]: '9:00' is not a time of day as HH:MM"),
        (
            {"mon": [["09:00", "25:00"]]},
            "windows.mon[0]: '25:00' is not a time of day between 00:00 and 24:00",
        ),
        ({"monday": [["09:00", "12:00"]]}, "windows.monday: not a weekday"),
    ],
)
def test_bad_windows_name_the_interval(windows: dict[str, list[list[str]]], message: str) -> None:
    errors = cal.parse_windows(windows, "windows")
    assert errors and errors[0].startswith(message)


def test_touching_windows_are_fine_and_merge() -> None:
    windows = {"mon": [["09:00", "12:00"], ["12:00", "17:00"]], "sun": [["22:00", "24:00"]]}
    assert cal.parse_windows(windows, "windows") == []
    assert cal.Calendar(windows).week[0] == ((540, 1020),)


def test_holiday_codes_are_the_libraries() -> None:
    cal.check_holiday_code("US")
    cal.check_holiday_code("US-CA")
    with pytest.raises(ValueError, match="not a holiday calendar"):
        cal.check_holiday_code("XX")
    with pytest.raises(ValueError, match="no subdivision"):
        cal.check_holiday_code("US-ZZ")


# -- speed -------------------------------------------------------------------------------------
def test_a_due_time_costs_microseconds_once_the_days_are_cached() -> None:
    rules = Rules(
        schedule=cal.Calendar(WEEKDAYS_9_17, holiday_codes=["US"]), jitter_ms=600_000, quiet=quiet()
    )
    recipient = resolve(None, "+12125550100", NY, "UTC")
    step = StepTiming(wait_minutes=60, quiet=True)
    start = ms("2026-04-08 03:00", NY)
    due(rules, step, recipient, start, "warm")
    n = 20_000
    began = time.perf_counter()
    for i in range(n):
        due(rules, step, recipient, start + (i % 1000) * 1000, "enr")
    per_call = (time.perf_counter() - began) / n * 1e6
    # Measured ~10 µs on the 2-core dev box; the bound only catches a lost cache.
    assert per_call < 200, per_call


def test_the_current_time_is_never_read() -> None:
    rules = Rules(schedule=cal.Calendar(WEEKDAYS_9_17))
    past = ms("1990-01-02 03:00", NY)
    assert local(due(rules, StepTiming(), fixed(NY), past, "k").at, NY) == "1990-01-02 09:00 EST"
    assert datetime.now(UTC).year > 1990


def test_quiet_hours_turned_off_is_logged_at_startup() -> None:
    from structlog.testing import capture_logs

    from seqd import config as cfg
    from seqd.service import warn_quiet_hours_off

    assert warn_quiet_hours_off(cfg.load(environ={})) == []
    loaded = cfg.load(
        environ={"SEQD_COMPLIANCE_SMS_QUIET_HOURS_ENABLED": "false"},
    )
    with capture_logs() as logs:
        assert warn_quiet_hours_off(loaded) == [""]
    assert [e["event"] for e in logs] == ["compliance.sms_quiet_hours_off"]


def test_a_tenants_own_quiet_hours_go_over_the_default_and_turning_them_off_is_logged() -> None:
    from structlog.testing import capture_logs

    from seqd.config import ComplianceConfig, Config, TenantConfig
    from seqd.service import warn_quiet_hours_off
    from seqd.timing.policy import Policy

    def own(**quiet: object) -> TenantConfig:
        return TenantConfig(compliance=ComplianceConfig(sms_quiet_hours=SmsQuietHours(**quiet)))  # type: ignore[arg-type]

    config = Config(tenants={"early": own(end="07:00"), "off": own(enabled=False)})
    policy = Policy(config)
    text = StepTiming(quiet=True)  # an SMS step, not transactional
    at = ms("2026-04-08 07:30", NY)
    for tenant, expected in (("early", "07:30"), ("acme", "08:00"), ("off", "07:30")):
        rules = policy.rules(tenant, None)
        got = due(rules, text, fixed(NY), at, "k")  # type: ignore[arg-type]
        assert local(got.at, NY) == f"2026-04-08 {expected} EDT", tenant
    # A tenant's quiet hours turned off are logged at startup, by name.
    with capture_logs() as logs:
        assert warn_quiet_hours_off(config) == ["off"]
    assert [(e["event"], e["tenant"]) for e in logs] == [("compliance.sms_quiet_hours_off", "off")]
