"""Tenant isolation beyond single objects: tenant B lists nothing of tenant A's on every
list route (filters naming A's values included), cannot reach A's sequence's enrollments,
cannot enroll A's contact, and B's writes with A's ids change nothing A sees."""

from __future__ import annotations

from seqd.api.routing import ROUTES
from seqd.config import WebhooksConfig
from seqd.events.reader import Reader
from tests.conftest import Api

PHONE = "+14155550100"
EMAIL = "ann@example.com"


async def _tenant_a(api: Api) -> dict[str, str]:
    _, c = await api.call("POST", "/contacts", {"phone": PHONE, "email": EMAIL})
    seq = {"name": "S", "status": "active", "steps": [{"kind": "sms", "body": "hi"}]}
    _, s = await api.call("POST", "/sequences", seq)
    cid, sid = c["contact"]["id"], s["sequence"]["id"]  # type: ignore[index]
    _, e = await api.call("POST", f"/sequences/{sid}/enrollments", {"contact_id": cid})
    await api.call("POST", "/suppressions", {"channel": "sms", "value": "+14155550199"})
    await api.call("POST", "/suppressions", {"channel": "email", "value": "gone@example.com"})
    _, w = await api.call(
        "POST", "/webhook-endpoints", {"url": "https://93.184.216.34/hook", "events": ["*"]}
    )
    _, sch = await api.call(
        "POST", "/schedules", {"name": "x", "windows": {"mon": [["09:00", "17:00"]]}}
    )
    _, snd = await api.call("POST", "/senders", {"channel": "sms", "address": "+14155550188"})
    await Reader(api.store, WebhooksConfig()).run_once()
    return {
        "schedule": sch["schedule"]["id"],  # type: ignore[index]
        "sender": snd["sender"]["id"],  # type: ignore[index]
        "contact": cid,
        "sequence": sid,
        "enrollment": e["enrollment"]["id"],  # type: ignore[index]
        "endpoint": w["webhook_endpoint"]["id"],  # type: ignore[index]
    }


async def _view(api: Api, owned: dict[str, str]) -> list[object]:
    """Everything tenant A can read about its objects."""
    paths = [
        f"/contacts/{owned['contact']}",
        f"/sequences/{owned['sequence']}",
        f"/enrollments/{owned['enrollment']}",
        f"/webhook-endpoints/{owned['endpoint']}",
        f"/schedules/{owned['schedule']}",
        f"/sequences/{owned['sequence']}/enrollments",
        "/contacts",
        "/sequences",
        "/suppressions",
        "/webhook-endpoints",
        "/schedules",
        "/events",
    ]
    return [await api.call("GET", p) for p in paths]


async def test_other_tenant_lists_nothing_on_every_list_route(api: Api) -> None:
    owned = await _tenant_a(api)
    _, bravo = await api.store.tenants.create_key("bravo")
    # (GET /tenant/settings is the caller's own settings and /forecast counts, not lists.)
    lists = {
        r.path
        for r in ROUTES
        if r.method == "GET"
        and r.auth
        and "{" not in r.path
        and r.path not in ("/tenant/settings", "/forecast")
        and not r.path.startswith("/exports/")
    }
    assert lists == {
        "/contacts", "/sequences", "/events", "/suppressions", "/webhook-endpoints", "/senders",
        "/schedules", "/enrollments",
    }  # fmt: skip
    queries = [
        *sorted(lists),
        "/contacts?phone=%2B14155550100",
        f"/contacts?email={EMAIL}",
        "/suppressions?channel=sms",
        "/suppressions?channel=email&value=gone@example.com",
        f"/events?enrollment_id={owned['enrollment']}",
        f"/events?contact_id={owned['contact']}",
        "/events?type=sequence.enrollment.created",
        "/sequences?status=active",
        "/enrollments?status=active",
    ]
    # A really has something on each of them.
    for path in queries:
        status, listing = await api.call("GET", path)
        assert status == 200 and listing["data"], path  # type: ignore[index]
    for path in queries:
        status, listing = await api.call("GET", path, key=bravo)
        assert status == 200, (path, listing)
        assert listing["data"] == [] and listing["total"] in (0, None), path  # type: ignore[index]
    # A's step counts in A's forecast only.
    _, forecast = await api.call("GET", "/forecast")
    assert forecast["overdue"] + forecast["total"] == 1  # type: ignore[index]
    _, forecast = await api.call("GET", "/forecast", key=bravo)
    assert forecast["overdue"] + forecast["total"] == 0  # type: ignore[index]
    # A's enrollments and events are exported to A only.
    for path in ("/exports/enrollments", "/exports/events"):
        for key, rows in ((None, True), (bravo, False)):
            resp = await api.client.get("/v1" + path, headers=api.headers(key))  # type: ignore[attr-defined]
            assert resp.status == 200 and bool((await resp.text()).strip()) is rows, path
    # A's contact and sequence are not B's to filter by.
    for query in (f"contact_id={owned['contact']}", f"sequence_id={owned['sequence']}"):
        status, body = await api.call("GET", f"/enrollments?{query}", key=bravo)
        assert status == 404, (query, body)
    # The enrollments of A's sequence: the same 404 as a sequence that does not exist.
    status, body = await api.call("GET", f"/sequences/{owned['sequence']}/enrollments", key=bravo)
    assert status == 404 and body["type"] == "urn:seqd:problem:not_found"  # type: ignore[index]


async def test_other_tenants_writes_with_my_ids_change_nothing(api: Api) -> None:
    owned = await _tenant_a(api)
    before = await _view(api, owned)
    _, bravo = await api.store.tenants.create_key("bravo")
    _, own_seq = await api.call(
        "POST",
        "/sequences",
        {"name": "B", "status": "active", "steps": [{"kind": "sms", "body": "x"}]},
        key=bravo,
    )
    b_seq = own_seq["sequence"]["id"]  # type: ignore[index]
    writes: list[tuple[str, str, object]] = [
        ("PATCH", f"/contacts/{owned['contact']}", {"first_name": "Mallory"}),
        ("DELETE", f"/contacts/{owned['contact']}", None),
        ("PATCH", f"/sequences/{owned['sequence']}", {"name": "taken"}),
        ("POST", f"/sequences/{owned['sequence']}/pause", None),
        ("DELETE", f"/sequences/{owned['sequence']}", None),
        ("POST", f"/enrollments/{owned['enrollment']}/pause", None),
        ("POST", f"/enrollments/{owned['enrollment']}/cancel", None),
        ("PATCH", f"/webhook-endpoints/{owned['endpoint']}", {"enabled": False}),
        ("POST", f"/webhook-endpoints/{owned['endpoint']}/rotate-secret", None),
        ("DELETE", f"/webhook-endpoints/{owned['endpoint']}", None),
        ("PATCH", f"/senders/{owned['sender']}", {"paused": True}),
        ("DELETE", f"/senders/{owned['sender']}", None),
        # A's contact enrolled in B's own sequence, by id: not B's contact.
        ("POST", f"/sequences/{b_seq}/enrollments", {"contact_id": owned["contact"]}),
        (
            "POST",
            f"/sequences/{b_seq}/enrollments/batch",
            {"items": [{"contact_id": owned["contact"]}]},
        ),
        # B's contact into A's sequence.
        (
            "POST",
            f"/sequences/{owned['sequence']}/enrollments",
            {"contact": {"phone": "+14155550123"}},
        ),
    ]
    for method, path, body in writes:
        status, answer = await api.call(method, path, body, key=bravo)
        if path.endswith("/batch"):
            assert status == 200, answer
            (item,) = answer["results"]  # type: ignore[index]
            assert item["outcome"] == "problem" and item["status"] == 404, item
        else:
            assert status == 404, (method, path, answer)
    # B's suppressions of A's addresses go to B's own list, not A's.
    await api.call("POST", "/suppressions", {"channel": "sms", "value": PHONE}, key=bravo)
    await api.call("DELETE", "/suppressions?channel=sms&value=%2B14155550199", None, key=bravo)
    await Reader(api.store, WebhooksConfig()).run_once()
    assert await _view(api, owned) == before
    sender = await api.store.senders.get("acme", owned["sender"])
    assert not sender.paused and sender.updated_at == sender.created_at
