"""/schedules over HTTP against a real valkey-server, and a sequence's schedule_id."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Api

US_HOURS: dict[str, Any] = {
    "name": "US business hours",
    "timezone": "contact",
    "default_timezone": "America/New_York",
    "windows": {"mon": [["09:00", "12:00"], ["13:00", "17:00"]], "tue": [["09:00", "17:00"]]},
    "skip_dates": ["2026-12-25", "2027-01-01"],
    "holidays": ["US"],
    "jitter_seconds": 600,
}
SEQUENCE: dict[str, Any] = {
    "name": "Nurture",
    "status": "active",
    "steps": [
        {"kind": "sms", "body": "Hi", "send_at": "10:00", "transactional": True},
        {"kind": "email", "wait_days": 2, "subject": "Hello", "body": "Hello again"},
    ],
}


async def _schedule(api: Api, **changes: object) -> dict[str, Any]:
    status, body = await api.call("POST", "/schedules", {**US_HOURS, **changes})
    assert status == 201, body
    return body["schedule"]  # type: ignore[index,no-any-return]


async def test_create_get_list_patch_delete(api: Api) -> None:
    created = await _schedule(api)
    assert created["id"].startswith("sch_") and created["version"] == 1
    assert {k: created[k] for k in US_HOURS} == US_HOURS
    status, body = await api.call("GET", f"/schedules/{created['id']}")
    assert status == 200 and body["schedule"] == created  # type: ignore[index]
    second = await _schedule(api, name="Nights", windows={"fri": [["22:00", "02:00"]]})
    status, body = await api.call("GET", "/schedules?limit=1")
    assert status == 200, body
    assert [s["id"] for s in body["data"]] == [created["id"]]  # type: ignore[index]
    assert body["total"] == 2  # type: ignore[index]
    token = body["next_page_token"]  # type: ignore[index]
    status, body = await api.call("GET", f"/schedules?limit=1&page_token={token}")
    assert [s["id"] for s in body["data"]] == [second["id"]]  # type: ignore[index]
    assert body["next_page_token"] is None  # type: ignore[index]

    status, body = await api.call(
        "PATCH", f"/schedules/{created['id']}", {"jitter_seconds": 0, "default_timezone": None}
    )
    assert status == 200, body
    patched = body["schedule"]  # type: ignore[index]
    assert patched["jitter_seconds"] == 0 and patched["default_timezone"] is None
    assert patched["version"] == 2 and patched["windows"] == US_HOURS["windows"]

    status, body = await api.call("DELETE", f"/schedules/{created['id']}")
    assert status == 200, body
    status, body = await api.call("GET", f"/schedules/{created['id']}")
    assert status == 404, body


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone", "IANA"),
        ({"default_timezone": "EST5EDTX"}, "default_timezone", "IANA"),
        ({"windows": {"mon": [["09:00", "09:00"]]}}, "windows.mon[0]", "empty interval"),
        (
            {"windows": {"mon": [["09:00", "12:00"], ["11:00", "13:00"]]}},
            "windows.mon[1]",
            "overlaps windows.mon[0]",
        ),
        ({"windows": {"mon": [["9am", "12:00"]]}}, "windows.mon[0]", "HH:MM"),
        ({"windows": {"funday": [["09:00", "12:00"]]}}, "windows.funday", "not a weekday"),
        ({"windows": {}}, "windows", "never opens"),
        ({"skip_dates": ["2026-02-30"]}, "skip_dates[0]", "YYYY-MM-DD"),
        ({"skip_dates": ["26-12-25"]}, "skip_dates[0]", "YYYY-MM-DD"),
        ({"holidays": ["US", "XX"]}, "holidays[1]", "not a holiday calendar"),
        ({"holidays": ["US-ZZ"]}, "holidays[0]", "no subdivision"),
        ({"jitter_seconds": -1}, "jitter_seconds", ">= 0"),
    ],
)
async def test_bad_input_is_a_422_naming_the_field(
    api: Api, changes: dict[str, object], field: str, reason: str
) -> None:
    status, body = await api.call("POST", "/schedules", {**US_HOURS, **changes})
    assert status == 422, body
    errors = body["errors"]  # type: ignore[index]
    assert any(e["path"] == field and reason in e["message"] for e in errors), errors


async def test_a_bad_patch_is_a_422_and_changes_nothing(api: Api) -> None:
    created = await _schedule(api)
    windows = {"tue": [["18:00", "17:00"], ["16:00", "19:00"]]}
    status, body = await api.call("PATCH", f"/schedules/{created['id']}", {"windows": windows})
    assert status == 422, body
    status, body = await api.call("GET", f"/schedules/{created['id']}")
    assert body["schedule"] == created  # type: ignore[index]


async def test_another_tenants_schedule_is_a_404(api: Api) -> None:
    created = await _schedule(api)
    _, other = await api.store.tenants.create_key("globex")
    for method in ("GET", "DELETE"):
        status, _ = await api.call(method, f"/schedules/{created['id']}", key=other)
        assert status == 404
    status, body = await api.call(
        "POST", "/sequences", {**SEQUENCE, "schedule_id": created["id"]}, key=other
    )
    assert status == 422 and body["errors"][0]["path"] == "schedule_id"  # type: ignore[index]


async def test_a_sequence_takes_a_schedule_and_the_step_timing_fields(api: Api) -> None:
    schedule = await _schedule(api)
    status, body = await api.call("POST", "/sequences", {**SEQUENCE, "schedule_id": "sch_nope"})
    assert status == 422, body
    assert body["errors"] == [{"path": "schedule_id", "message": "no schedule sch_nope"}]  # type: ignore[index]
    status, body = await api.call("POST", "/sequences", {**SEQUENCE, "schedule_id": schedule["id"]})
    assert status == 201, body
    seq = body["sequence"]  # type: ignore[index]
    assert seq["schedule_id"] == schedule["id"]
    assert seq["steps"][0]["send_at"] == "10:00" and seq["steps"][0]["transactional"] is True
    assert seq["steps"][1]["wait_days"] == 2
    # In use: the schedule cannot be deleted until the sequence lets go of it.
    status, body = await api.call("DELETE", f"/schedules/{schedule['id']}")
    assert status == 409 and seq["id"] in body["detail"], body  # type: ignore[index]
    status, body = await api.call("PATCH", f"/sequences/{seq['id']}", {"schedule_id": "sch_x"})
    assert status == 422 and body["errors"][0]["path"] == "schedule_id"  # type: ignore[index]
    status, body = await api.call("PATCH", f"/sequences/{seq['id']}", {"schedule_id": None})
    assert status == 200 and body["sequence"]["schedule_id"] is None  # type: ignore[index]
    status, body = await api.call("DELETE", f"/schedules/{schedule['id']}")
    assert status == 200, body


async def test_a_bad_send_at_names_the_step(api: Api) -> None:
    steps = [{"kind": "sms", "body": "Hi", "send_at": "25:00"}]
    status, body = await api.call("POST", "/sequences", {**SEQUENCE, "steps": steps})
    assert status == 422, body
    assert body["errors"][0]["path"] == "steps[0].send_at"  # type: ignore[index]
