"""Bulk enrollment over HTTP, and the single POST with an inline contact."""

from __future__ import annotations

from typing import Any

from seqd import ids
from tests.conftest import Api

SEQUENCE = {
    "name": "Nurture",
    "status": "active",
    "steps": [{"kind": "sms", "wait_minutes": 60, "body": "Hi {{first_name|there}}"}],
}


async def _setup(api: Api) -> tuple[str, list[str]]:
    status, body = await api.call("POST", "/sequences", SEQUENCE)
    assert status == 201, body
    contacts = []
    for i in range(3):
        status, c = await api.call("POST", "/contacts", {"phone": f"+1415555010{i}"})
        assert status == 201, c
        contacts.append(c["contact"]["id"])  # type: ignore[index]
    return body["sequence"]["id"], contacts  # type: ignore[index]


async def test_batch_with_good_and_bad_items_answers_each_in_order(api: Api) -> None:
    sid, (c0, c1, c2) = await _setup(api)
    await api.call("POST", f"/sequences/{sid}/enrollments", {"contact_id": c1})
    await api.store.client.hset(api.store.keys.suppressions("acme", "sms"), "+14155550102", "{}")
    items: list[Any] = [
        {"contact_id": c0, "metadata": {"row": 0}},
        {"contact_id": c1},  # already enrolled: idempotent
        {"contact": {"phone": "12"}},
        {"contact": {"external_id": "crm-1", "phone": "+1 415 555 0199", "first_name": "Ada"}},
        {"contact_id": ids.new(ids.CONTACT)},
        {"contact_id": c0, "contact": {"phone": "+14155550100"}},
        {"contact_id": 7},
        "not an object",
        {"contact_id": c2},  # suppressed on SMS, the only channel of the sequence
        {"contact_id": c0, "metadata": {"x": "y" * 20_000}},
        {"contact": {"external_id": "crm-1", "phone": "+14155550199"}},  # same as item 3
        {"contact": {"phone": "+14155550199", "email": "x@example.com", "colour": "red"}},
    ]
    status, body = await api.call("POST", f"/sequences/{sid}/enrollments/batch", {"items": items})
    assert status == 200, body
    results = body["results"]  # type: ignore[index]
    assert len(results) == len(items)
    assert [r["outcome"] for r in results] == [
        "enrolled", "enrolled", "problem", "enrolled", "problem", "problem", "problem",
        "problem", "problem", "problem", "enrolled", "problem",
    ]  # fmt: skip
    assert results[0]["enrollment"]["metadata"] == {"row": 0}
    assert results[0]["idempotent"] is False and results[1]["idempotent"] is True
    assert results[10]["idempotent"] is True
    assert results[10]["enrollment"]["id"] == results[3]["enrollment"]["id"]
    problems = {i: r for i, r in enumerate(results) if r["outcome"] == "problem"}
    assert all(p["index"] == i for i, p in problems.items())
    assert problems[2]["status"] == 422
    assert [e["path"] for e in problems[2]["errors"]] == ["items[2].contact.phone"]
    assert problems[4]["status"] == 404 and problems[4]["field"] == "items[4].contact_id"
    assert {e["path"] for e in problems[5]["errors"]} == {"items[5].contact_id", "items[5].contact"}
    assert problems[6]["errors"][0]["path"] == "items[6].contact_id"
    assert problems[7]["errors"][0]["path"] == "items[7]"
    assert problems[8]["status"] == 409 and problems[8]["contact_id"] == c2
    assert problems[9]["errors"][0]["path"] == "items[9].metadata"
    assert problems[11]["errors"][0] == {
        "path": "items[11].contact.colour",
        "message": "unknown field",
    }
    # The inline contact was created once, with its fields, and found by external_id.
    status, listing = await api.call("GET", "/contacts?external_id=crm-1")
    [contact] = listing["data"]  # type: ignore[index]
    assert contact["phone"] == "+14155550199" and contact["first_name"] == "Ada"
    status, seq = await api.call("GET", f"/sequences/{sid}")
    assert seq["sequence"]["stats"]["active"] == 3  # type: ignore[index]


async def test_batch_limits_and_whole_request_errors(api: Api) -> None:
    sid, (c0, _, _) = await _setup(api)
    path = f"/sequences/{sid}/enrollments/batch"
    status, body = await api.call("POST", path, {"items": [{"contact_id": c0}] * 1001})
    assert status == 422 and body["errors"][0]["path"] == "items"  # type: ignore[index]
    status, body = await api.call("POST", path, {"items": []})
    assert status == 422
    status, body = await api.call("POST", path, {"items": [{"contact_id": c0}] * 1000})
    assert status == 200
    results = body["results"]  # type: ignore[index]
    assert len(results) == 1000 and sum(r["idempotent"] for r in results) == 999
    missing = ids.new(ids.SEQUENCE)
    status, body = await api.call("POST", f"/sequences/{missing}/enrollments/batch", {})
    assert status == 404
    await api.call("POST", f"/sequences/{sid}/pause")
    status, body = await api.call("POST", path, {"items": [{"contact_id": c0}]})
    assert status == 409 and body["current_status"] == "paused"  # type: ignore[index]


async def test_single_post_takes_an_inline_contact(api: Api) -> None:
    sid, _ = await _setup(api)
    path = f"/sequences/{sid}/enrollments"
    contact = {"email": "lead@Example.com", "first_name": "Lin", "external_id": "web-9"}
    status, body = await api.call("POST", path, {"contact": contact, "metadata": {"src": "web"}})
    assert status == 201, body
    enrollment = body["enrollment"]  # type: ignore[index]
    status, c = await api.call("GET", f"/contacts/{enrollment['contact_id']}")
    assert c["contact"]["email"] == "lead@example.com"  # type: ignore[index]
    status, body = await api.call("POST", path, {"contact": {"email": "lead@example.com"}})
    assert status == 200 and body["idempotent"] is True  # type: ignore[index]
    assert body["enrollment"]["id"] == enrollment["id"]  # type: ignore[index]

    status, body = await api.call("POST", path, {})
    assert status == 422
    assert {e["path"] for e in body["errors"]} == {"contact_id", "contact"}  # type: ignore[index]
    both = {"contact_id": enrollment["contact_id"], "contact": contact}
    status, body = await api.call("POST", path, both)
    assert status == 422
    status, body = await api.call("POST", path, {"contact": {"phone": "nope"}})
    assert status == 422 and body["errors"][0]["path"] == "contact.phone"  # type: ignore[index]
    # external_id of one contact, email of another: a conflict naming the field.
    await api.call("POST", "/contacts", {"email": "other@example.com"})
    clash = {"contact": {"external_id": "web-9", "email": "other@example.com"}}
    status, body = await api.call("POST", path, clash)
    assert status == 409 and body["field"] == "contact.email"  # type: ignore[index]
