"""A tenant with something on every dashboard page: sequences with active and paused
enrollments, and a webhook endpoint with one dead-lettered delivery."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api
from tests.webhookutil import SCHEDULE, Clock, Receiver, emit, pipeline


async def seed(api: Api, rx: Receiver) -> dict[str, Any]:
    steps = [{"kind": "sms", "wait_minutes": 90, "body": "hi"}, {"kind": "sms", "body": "again"}]
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
