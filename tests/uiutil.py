"""A tenant with something on every dashboard page: sequences with active and paused
enrollments, and a webhook endpoint with one dead-lettered delivery."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api
from tests.dispatchutil import Clock as DispatchClock
from tests.lifecycleutil import send_due
from tests.webhookutil import SCHEDULE, Clock, Receiver, emit, pipeline


async def seed(api: Api, rx: Receiver) -> dict[str, Any]:
    # Step 0 is due at once and sent at the real time: a send in the future would land on
    # tomorrow's stats day near midnight UTC, which the dashboard's 30 days do not show yet.
    steps = [
        {"kind": "sms", "wait_minutes": 0, "body": "hi"},
        {"kind": "sms", "wait_minutes": 90, "body": "again"},
    ]
    seq = {"name": "Nurture", "status": "active", "steps": steps}
    code, s = await api.call("POST", "/sequences", seq)
    assert code == 201, s
    sid = s["sequence"]["id"]  # type: ignore[index]
    items = [{"contact": {"phone": f"+1415555030{i}", "first_name": f"C{i}"}} for i in range(8)]
    code, b = await api.call("POST", f"/sequences/{sid}/enrollments/batch", {"items": items})
    assert code == 200, b
    eids = [r["enrollment"]["id"] for r in b["results"]]  # type: ignore[index]
    for eid in eids[:3]:
        code, body = await api.call("POST", f"/enrollments/{eid}/pause")
        assert code == 200, body
    # Step 0 goes to the five still active.
    clock = DispatchClock()
    clock.advance(1)
    sent = await send_due(api.store, clock)
    assert len(sent.messages) == 5, sent.messages
    code, w = await api.call("POST", "/webhook-endpoints", {"url": rx.url(), "events": ["*"]})
    assert code == 201, w
    wid = w["webhook_endpoint"]["id"]  # type: ignore[index]
    # Every delivery fails every attempt of the schedule: dead-lettered.
    clock = Clock()
    rx.plan["/hook"] = [500] * 1000
    async with pipeline(api.store, clock=clock) as p:
        await emit(api.store)
        for _ in range(40):  # every delivery through every wait of the schedule
            clock.advance(SCHEDULE[-1] + 1)
            if await p.step() == 0:
                break
    code, failed = await api.call("GET", f"/webhook-endpoints/{wid}/failed-deliveries")
    assert code == 200 and failed["total"] >= 1, failed  # type: ignore[index]
    return {
        "sequence": sid,
        "enrollments": eids,
        "paused": eids[:3],
        "endpoint": wid,
        "delivery": failed["data"][0]["id"],  # type: ignore[index]
    }
