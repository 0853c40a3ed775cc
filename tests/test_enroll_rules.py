"""Enrollment rules through the API against a real valkey-server: `reenroll` and
`exclusive` sequences, with `if_busy: queue` enrolling a waiting contact when its live
exclusive enrollment ends (in the script that ends it)."""

from __future__ import annotations

from typing import Any

import pytest

from seqd.store import enrollments as store_enrollments
from seqd.times import now_ms
from tests.conftest import Api
from tests.webhookutil import pipeline

STEPS = [
    {"kind": "sms", "wait_minutes": 5, "body": "one"},
    {"kind": "sms", "wait_minutes": 60, "body": "two"},
]


async def _sequence(api: Api, **rules: Any) -> str:
    body = {"name": "s", "status": "active", "steps": STEPS, **rules}
    status, got = await api.call("POST", "/sequences", body)
    assert status == 201, got
    return str(got["sequence"]["id"])  # type: ignore[index]


async def _contact(api: Api, phone: str = "+14155550100") -> str:
    status, body = await api.call("POST", "/contacts", {"phone": phone})
    assert status == 201, body
    return str(body["contact"]["id"])  # type: ignore[index]


async def _enroll(api: Api, sid: str, cid: str, **extra: Any) -> tuple[int, Any]:
    return await api.call("POST", f"/sequences/{sid}/enrollments", {"contact_id": cid, **extra})


async def test_reenroll_default_is_a_new_enrollment_once_the_last_ended(api: Api) -> None:
    """Today's behaviour, the default (`after_completion`): live -> the same enrollment
    (idempotent); ended (completed or cancelled) -> a new one."""
    sid, cid = await _sequence(api), await _contact(api)
    status, got = await api.call("GET", f"/sequences/{sid}")
    assert got["sequence"]["reenroll"] == "after_completion"  # type: ignore[index]
    status, first = await _enroll(api, sid, cid)
    assert status == 201
    status, again = await _enroll(api, sid, cid)
    assert status == 200 and again["enrollment"]["id"] == first["enrollment"]["id"]
    await api.call("POST", f"/enrollments/{first['enrollment']['id']}/cancel")
    status, second = await _enroll(api, sid, cid)
    assert status == 201 and second["enrollment"]["id"] != first["enrollment"]["id"]


async def test_reenroll_never_refuses_naming_the_last_enrollment(api: Api) -> None:
    sid, cid = await _sequence(api, reenroll="never"), await _contact(api)
    _, first = await _enroll(api, sid, cid)
    eid = first["enrollment"]["id"]
    status, again = await _enroll(api, sid, cid)
    assert status == 200 and again["idempotent"] is True  # live: the same one
    await api.call("POST", f"/enrollments/{eid}/cancel")
    status, problem = await _enroll(api, sid, cid)
    assert status == 409, problem
    assert problem["enrollment_id"] == eid and eid in problem["detail"]
    assert problem["field"] == "contact_id"


async def test_reenroll_after_days_counts_from_the_end(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid, cid = await _sequence(api, reenroll={"after_days": 90}), await _contact(api)
    _, first = await _enroll(api, sid, cid)
    eid = first["enrollment"]["id"]
    await api.call("POST", f"/enrollments/{eid}/cancel")
    status, problem = await _enroll(api, sid, cid)
    assert status == 409 and problem["enrollment_id"] == eid
    assert problem["reenroll_at"] > first["enrollment"]["enrolled_at"]
    later = now_ms() + 91 * 86_400_000
    monkeypatch.setattr(store_enrollments, "now_ms", lambda: later)
    status, second = await _enroll(api, sid, cid)
    assert status == 201, second


@pytest.mark.parametrize("rule", ["sometimes", {"after_days": 0}, {"after_days": 3}])
async def test_reenroll_rule_is_checked(api: Api, rule: Any) -> None:
    body = {"name": "s", "steps": STEPS, "reenroll": rule}
    status, problem = await api.call("POST", "/sequences", body)
    if rule == {"after_days": 3}:
        assert status == 201
    else:
        assert status == 422 and "reenroll" in str(problem)


async def test_exclusive_refuses_a_contact_live_in_another(api: Api) -> None:
    a, b = await _sequence(api, exclusive=True), await _sequence(api, exclusive=True)
    plain = await _sequence(api)
    cid = await _contact(api)
    _, in_a = await _enroll(api, a, cid)
    status, problem = await _enroll(api, b, cid)
    assert status == 409, problem
    assert problem["enrollment_id"] == in_a["enrollment"]["id"]
    # A sequence that is not exclusive takes the contact all the same.
    status, _ = await _enroll(api, plain, cid)
    assert status == 201
    # Paused is still live.
    await api.call("POST", f"/enrollments/{in_a['enrollment']['id']}/pause")
    status, _ = await _enroll(api, b, cid)
    assert status == 409


async def test_if_busy_queue_enrolls_when_the_other_ends(api: Api) -> None:
    a, b = await _sequence(api, exclusive=True), await _sequence(api, exclusive=True)
    cid = await _contact(api)
    _, in_a = await _enroll(api, a, cid)
    busy = in_a["enrollment"]["id"]
    status, queued = await _enroll(api, b, cid, if_busy="queue")
    assert status == 202, queued
    assert queued["queued"]["behind"] == busy and queued["queued"]["sequence_id"] == b
    waiting = queued["queued"]["id"]
    # Asking again is idempotent: the same waiting enrollment.
    status, again = await _enroll(api, b, cid, if_busy="queue")
    assert status == 202 and again["queued"]["id"] == waiting
    status, _ = await api.call("GET", f"/enrollments/{waiting}")
    assert status == 404  # not made yet
    status, _ = await api.call("POST", f"/enrollments/{busy}/cancel")
    assert status == 200
    status, got = await api.call("GET", f"/enrollments/{waiting}")
    assert status == 200, got
    made = got["enrollment"]  # type: ignore[index]
    assert made["status"] == "active" and made["sequence_id"] == b and made["contact_id"] == cid
    # It is the contact's live exclusive enrollment now: A refuses the contact.
    status, problem = await _enroll(api, a, cid)
    assert status == 409 and problem["enrollment_id"] == waiting
    async with pipeline(api.store) as p:
        await p.read()
    _, events = await api.call("GET", "/events?type=sequence.enrollment.created&limit=50")
    created = [e for e in events["data"] if e["data"]["id"] == waiting]  # type: ignore[index]
    assert created and created[0]["data"]["queued"] is True


async def test_queue_in_batch_and_a_deleted_contact_drops_its_wait(api: Api) -> None:
    a, b = await _sequence(api, exclusive=True), await _sequence(api, exclusive=True)
    c1, c2 = await _contact(api), await _contact(api, "+14155550101")
    await _enroll(api, a, c1)
    await _enroll(api, a, c2)
    items = [
        {"contact_id": c1, "if_busy": "queue"},
        {"contact_id": c2},
    ]
    status, got = await api.call("POST", f"/sequences/{b}/enrollments/batch", {"items": items})
    assert status == 200, got
    first, second = got["results"]  # type: ignore[index]
    assert first["outcome"] == "queued" and first["queued"]["contact_id"] == c1
    assert second["outcome"] == "problem" and second["status"] == 409
    status, _ = await api.call("DELETE", f"/contacts/{c1}")
    assert status in (200, 204)
    status, _ = await api.call("GET", f"/enrollments/{first['queued']['id']}")
    assert status == 404


async def test_intake_entries_queue_with_if_busy(api: Api) -> None:
    """The intake stream's `if_busy` field: the request's result says `queued`."""
    import json

    from seqd.config import Config, IntakeConfig
    from seqd.intake import Intake

    a, b = await _sequence(api, exclusive=True), await _sequence(api, exclusive=True)
    cid = await _contact(api)
    _, in_a = await _enroll(api, a, cid)
    store = api.store
    consumer = Intake(
        Config(intake=IntakeConfig(block_ms=50, lease_seconds=0.2)), store, consumer="t-1"
    )
    await consumer.stream.ensure_group()
    try:
        for request_id, busy in (("r-queue", "queue"), ("r-refuse", "")):
            entry = {"tenant": "acme", "sequence_id": b, "contact_id": cid}
            entry |= {"request_id": request_id, "if_busy": busy}
            await store.client.xadd(store.keys.intake(), entry)
        for _ in range(50):
            await consumer.run_once(block_ms=0)
            if await consumer.backlog() == 0:
                break
        queued = json.loads(await store.client.get(store.keys.intake_result("acme", "r-queue")))
        refused = json.loads(await store.client.get(store.keys.intake_result("acme", "r-refuse")))
    finally:
        await consumer.stream.close()
    assert queued["status"] == "queued", queued
    assert refused["status"] == "rejected" and refused["reason"] == "busy", refused
    await api.call("POST", f"/enrollments/{in_a['enrollment']['id']}/cancel")
    status, got = await api.call("GET", f"/enrollments/{queued['enrollment_id']}")
    assert status == 200 and got["enrollment"]["sequence_id"] == b  # type: ignore[index]


async def test_a_waiting_enrollment_goes_to_a_paused_sequence_not_an_archived_one(
    api: Api,
) -> None:
    a = await _sequence(api, exclusive=True)
    paused, archived = await _sequence(api, exclusive=True), await _sequence(api, exclusive=True)
    cid = await _contact(api)
    _, in_a = await _enroll(api, a, cid)
    _, to_archived = await _enroll(api, archived, cid, if_busy="queue")
    _, to_paused = await _enroll(api, paused, cid, if_busy="queue")
    await api.call("DELETE", f"/sequences/{archived}")
    await api.call("POST", f"/sequences/{paused}/pause")
    await api.call("POST", f"/enrollments/{in_a['enrollment']['id']}/cancel")
    status, _ = await api.call("GET", f"/enrollments/{to_archived['queued']['id']}")
    assert status == 404
    status, got = await api.call("GET", f"/enrollments/{to_paused['queued']['id']}")
    assert status == 200 and got["enrollment"]["status"] == "active"  # type: ignore[index]
