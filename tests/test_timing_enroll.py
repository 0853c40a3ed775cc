"""The first step's due time, decided at enrollment in the contact's zone (every way in)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Api
from tests.timingutil import local

HOURS = {"name": "9-17", "windows": {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed")}}


async def _sequence(api: Api, steps: list[dict[str, Any]], schedule: bool) -> str:
    body: dict[str, Any] = {"name": "S", "status": "active", "steps": steps}
    if schedule:
        status, made = await api.call("POST", "/schedules", HOURS)
        assert status == 201, made
        body["schedule_id"] = made["schedule"]["id"]  # type: ignore[index]
    status, seq = await api.call("POST", "/sequences", body)
    assert status == 201, seq
    return seq["sequence"]["id"]  # type: ignore[index,no-any-return]


async def test_an_sms_enrolled_at_night_waits_for_morning_in_the_contacts_zone(
    quiet_api: Api,
) -> None:
    sid = await _sequence(quiet_api, [{"kind": "sms", "body": "hi"}], schedule=False)
    status, body = await quiet_api.call(
        "POST", f"/sequences/{sid}/enrollments", {"contact": {"phone": "+12125550100"}}
    )
    assert status == 201, body
    enr = body["enrollment"]  # type: ignore[index]
    assert local(enr["next_run_at"], "America/New_York") == "2026-04-06 08:00"
    assert (enr["timezone_used"], enr["timezone_source"]) == ("America/New_York", "phone")
    # What the API answered is what was stored.
    status, again = await quiet_api.call("GET", f"/enrollments/{enr['id']}")
    assert again["enrollment"] == enr  # type: ignore[index]


async def test_a_schedule_times_each_contact_in_its_own_zone_in_a_batch(quiet_api: Api) -> None:
    steps = [{"kind": "email", "subject": "s", "body": "hi"}]
    sid = await _sequence(quiet_api, steps, schedule=True)
    _, kolkata = await quiet_api.call(
        "POST", "/contacts", {"email": "a@example.com", "timezone": "Asia/Kolkata"}
    )
    items = [
        {"contact_id": kolkata["contact"]["id"]},  # type: ignore[index]
        {"contact": {"email": "b@example.com", "phone": "+14155550100"}},
        {"contact": {"email": "c@example.com"}},
    ]
    status, body = await quiet_api.call(
        "POST", f"/sequences/{sid}/enrollments/batch", {"items": items}
    )
    assert status == 200, body
    got = [r["enrollment"] for r in body["results"]]  # type: ignore[index]
    # Kolkata is open (11:30); Los Angeles waits for 09:00; no zone at all: the tenant's (UTC).
    assert got[0]["next_run_at"] == got[0]["enrolled_at"]
    assert (got[0]["timezone_used"], got[0]["timezone_source"]) == ("Asia/Kolkata", "contact")
    assert local(got[1]["next_run_at"], "America/Los_Angeles") == "2026-04-06 09:00"
    assert got[1]["timezone_source"] == "phone"
    assert local(got[2]["next_run_at"], "UTC") == "2026-04-06 09:00"
    assert (got[2]["timezone_used"], got[2]["timezone_source"]) == ("UTC", "default")


async def test_an_email_without_a_schedule_reads_no_zone(quiet_api: Api) -> None:
    sid = await _sequence(
        quiet_api, [{"kind": "email", "subject": "s", "body": "b"}], schedule=False
    )
    status, body = await quiet_api.call(
        "POST", f"/sequences/{sid}/enrollments", {"contact": {"email": "a@example.com"}}
    )
    assert status == 201, body
    enr = body["enrollment"]  # type: ignore[index]
    assert "timezone_used" not in enr and enr["next_run_at"] == enr["enrolled_at"]


async def test_a_transactional_sms_goes_at_night(quiet_api: Api) -> None:
    steps = [{"kind": "sms", "body": "your code", "transactional": True}]
    sid = await _sequence(quiet_api, steps, schedule=False)
    status, body = await quiet_api.call(
        "POST", f"/sequences/{sid}/enrollments", {"contact": {"phone": "+12125550100"}}
    )
    assert status == 201, body
    enr = body["enrollment"]  # type: ignore[index]
    assert enr["next_run_at"] == enr["enrolled_at"]


# -- preview ---------------------------------------------------------------------------------
async def test_preview_shows_each_steps_moment_and_what_moved_it(quiet_api: Api) -> None:
    steps = [
        {"kind": "sms", "body": "hi"},
        {"kind": "sms", "wait_minutes": 600, "body": "again"},
        {"kind": "email", "wait_days": 1, "send_at": "10:00", "subject": "s", "body": "b"},
    ]
    sid = await _sequence(quiet_api, steps, schedule=True)
    start = "2026-04-06T06:00:00.000Z"  # Monday 02:00 in New York
    status, body = await quiet_api.call(
        "POST",
        f"/sequences/{sid}/preview",
        {"contact": {"phone": "+12125550100"}, "start_at": start},
    )
    assert status == 200, body
    assert (body["timezone"], body["timezone_source"]) == ("America/New_York", "phone")  # type: ignore[index]
    got = body["steps"]  # type: ignore[index]
    assert [(s["step"], s["local_time"], s["moved_by"]) for s in got] == [
        (0, "2026-04-06T09:00:00-04:00", ["window"]),  # 02:00: closed, and quiet
        (1, "2026-04-07T09:00:00-04:00", ["window"]),  # 19:00: closed until Tuesday
        (2, "2026-04-08T10:00:00-04:00", []),  # the next open day, at its send_at
    ]
    assert got[0]["send_at"] == "2026-04-06T13:00:00.000Z" and got[0]["sender_id"] is None


async def test_preview_of_a_stored_contact_is_what_enrolling_it_does(quiet_api: Api) -> None:
    sid = await _sequence(quiet_api, [{"kind": "sms", "body": "hi"}], schedule=True)
    _, made = await quiet_api.call("POST", "/contacts", {"phone": "+14155550100"})
    cid = made["contact"]["id"]  # type: ignore[index]
    status, preview = await quiet_api.call(
        "POST", f"/sequences/{sid}/preview", {"contact_id": cid, "start_at": "2026-04-06T06:00:00Z"}
    )
    assert status == 200, preview
    status, body = await quiet_api.call(
        "POST", f"/sequences/{sid}/enrollments", {"contact_id": cid}
    )
    assert status == 201, body
    enr = body["enrollment"]  # type: ignore[index]
    assert enr["next_run_at"] == preview["steps"][0]["send_at"]  # type: ignore[index]
    assert enr["timezone_used"] == preview["timezone"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "contact_id"),
        ({"contact_id": "con_x", "contact": {}}, "contact_id"),
        ({"contact": {"timezone": "Moon/Base"}}, "contact.timezone"),
        ({"contact": {"phone": "12"}}, "contact.phone"),
        ({"contact": {}, "start_at": "yesterday"}, "start_at"),
    ],
)
async def test_a_bad_preview_request_is_a_422(
    quiet_api: Api, body: dict[str, Any], field: str
) -> None:
    sid = await _sequence(quiet_api, [{"kind": "sms", "body": "hi"}], schedule=False)
    status, answer = await quiet_api.call("POST", f"/sequences/{sid}/preview", body)
    assert status == 422, answer
    assert answer["errors"][0]["path"] == field  # type: ignore[index]


async def test_preview_of_an_unknown_contact_is_a_404(quiet_api: Api) -> None:
    sid = await _sequence(quiet_api, [{"kind": "sms", "body": "hi"}], schedule=False)
    status, answer = await quiet_api.call(
        "POST", f"/sequences/{sid}/preview", {"contact_id": "con_x"}
    )
    assert status == 404, answer


@pytest.mark.parametrize("jitter", [0, 600])
async def test_contacts_of_one_zone_in_a_batch_share_a_time_unless_jittered(
    quiet_api: Api, jitter: int
) -> None:
    status, made = await quiet_api.call("POST", "/schedules", HOURS | {"jitter_seconds": jitter})
    assert status == 201, made
    body = {
        "name": "S",
        "status": "active",
        "steps": [{"kind": "email", "subject": "s", "body": "hi"}],
        "schedule_id": made["schedule"]["id"],  # type: ignore[index]
    }
    status, seq = await quiet_api.call("POST", "/sequences", body)
    assert status == 201, seq
    items = [
        {"contact": {"email": f"j{i}@example.com", "phone": f"+1415555{i:04d}"}} for i in range(8)
    ]
    status, answer = await quiet_api.call(
        "POST",
        f"/sequences/{seq['sequence']['id']}/enrollments/batch",
        {"items": items},  # type: ignore[index]
    )
    assert status == 200, answer
    runs = [r["enrollment"]["next_run_at"] for r in answer["results"]]  # type: ignore[index]
    assert all("09:00" <= local(t, "America/Los_Angeles")[-5:] < "09:10" for t in runs), runs
    # Jitter spreads them (a crc32 of each enrollment's key); without it they are one time.
    assert (len(set(runs)) == 1) == (jitter == 0), runs
