"""The seed's flow end to end over HTTP against a real valkey-server."""

from __future__ import annotations

import asyncio

from tests.conftest import Api

SEQUENCE = {
    "name": "Nurture",
    "status": "active",
    "steps": [
        {"kind": "sms", "wait_minutes": 0, "body": "Hi {{first_name|there}}!"},
        {"kind": "email", "wait_minutes": 1440, "subject": "Hello", "body": "Hello again"},
    ],
}


async def _contact(api: Api, **fields: object) -> str:
    status, body = await api.call("POST", "/contacts", {"phone": "+14155550100", **fields})
    assert status == 201, body
    return body["contact"]["id"]  # type: ignore[index]


async def test_seed_flow(api: Api) -> None:
    status, body = await api.call(
        "POST",
        "/contacts",
        {
            "first_name": "Ada",
            "phone": "+1 (415) 555-0100",
            "email": "Ada@Example.COM",
            "timezone": "America/Los_Angeles",
            "external_id": "crm-1",
            "attributes": {"company": "Acme", "score": 3, "vip": True},
        },
    )
    assert status == 201, body
    contact = body["contact"]  # type: ignore[index]
    assert contact["id"].startswith("con_")
    assert contact["phone"] == "+14155550100"
    assert contact["email"] == "Ada@example.com"
    assert contact["created_at"].endswith("Z") and len(contact["created_at"]) == 24

    status, body = await api.call("POST", "/sequences", SEQUENCE)
    assert status == 201, body
    seq = body["sequence"]  # type: ignore[index]
    assert seq["id"].startswith("seq_") and seq["status"] == "active"
    assert seq["steps"][0]["segments"] == 1 and seq["steps"][0]["encoding"] == "gsm7"

    enroll = {"contact_id": contact["id"], "metadata": {"source": "call"}}
    status, body = await api.call("POST", f"/sequences/{seq['id']}/enrollments", enroll)
    assert status == 201, body
    assert body["idempotent"] is False  # type: ignore[index]
    enr = body["enrollment"]  # type: ignore[index]
    assert enr["id"].startswith("enr_")
    assert enr["status"] == "active" and enr["current_step"] == 0
    assert enr["metadata"] == {"source": "call"}
    assert enr["next_run_at"] == enr["enrolled_at"]  # first step waits 0 minutes

    status, again = await api.call("POST", f"/sequences/{seq['id']}/enrollments", enroll)
    assert status == 200
    assert again["idempotent"] is True and again["enrollment"]["id"] == enr["id"]  # type: ignore[index]

    status, body = await api.call("POST", f"/enrollments/{enr['id']}/pause")
    assert status == 200 and body["enrollment"]["status"] == "paused"  # type: ignore[index]
    assert body["enrollment"]["paused_reason"] == "manual"  # type: ignore[index]
    assert body["enrollment"]["next_run_at"] is None  # type: ignore[index]
    # Paused still counts as "in the sequence": enrolling again is idempotent.
    status, again = await api.call("POST", f"/sequences/{seq['id']}/enrollments", enroll)
    assert status == 200 and again["enrollment"]["status"] == "paused"  # type: ignore[index]

    status, body = await api.call("POST", f"/enrollments/{enr['id']}/resume")
    assert status == 200 and body["enrollment"]["status"] == "active"  # type: ignore[index]
    assert "paused_reason" not in body["enrollment"]  # type: ignore[operator]

    status, body = await api.call("GET", f"/sequences/{seq['id']}")
    assert body["sequence"]["stats"] == {  # type: ignore[index]
        "active": 1,
        "paused": 0,
        "completed": 0,
        "cancelled": 0,
    }

    status, body = await api.call("POST", f"/enrollments/{enr['id']}/cancel")
    assert status == 200
    assert body["enrollment"]["status"] == "cancelled"  # type: ignore[index]
    assert body["enrollment"]["cancel_reason"] == "manual"  # type: ignore[index]

    status, body = await api.call("POST", f"/enrollments/{enr['id']}/resume")
    assert status == 409
    assert body["current_status"] == "cancelled"  # type: ignore[index]

    # After a cancel, enrolling makes a new enrollment.
    status, body = await api.call("POST", f"/sequences/{seq['id']}/enrollments", enroll)
    assert status == 201 and body["enrollment"]["id"] != enr["id"]  # type: ignore[index]

    status, body = await api.call("GET", f"/sequences/{seq['id']}/enrollments?status=cancelled")
    assert status == 200 and body["total"] == 1  # type: ignore[index]
    assert [e["id"] for e in body["data"]] == [enr["id"]]  # type: ignore[index]
    status, body = await api.call("GET", f"/sequences/{seq['id']}/enrollments")
    assert body["total"] == 2  # type: ignore[index]


async def test_fifty_concurrent_enrolls_make_one_enrollment(api: Api) -> None:
    cid = await _contact(api)
    _, body = await api.call("POST", "/sequences", SEQUENCE)
    sid = body["sequence"]["id"]  # type: ignore[index]
    results = await asyncio.gather(
        *(api.call("POST", f"/sequences/{sid}/enrollments", {"contact_id": cid}) for _ in range(50))
    )
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 49 + [201]
    assert len({body["enrollment"]["id"] for _, body in results}) == 1  # type: ignore[index]
    _, listing = await api.call("GET", f"/sequences/{sid}/enrollments")
    assert listing["total"] == 1  # type: ignore[index]
    _, seq = await api.call("GET", f"/sequences/{sid}")
    assert seq["sequence"]["stats"]["active"] == 1  # type: ignore[index]


async def test_enroll_in_inactive_sequence_is_409(api: Api) -> None:
    cid = await _contact(api)
    _, body = await api.call("POST", "/sequences", {**SEQUENCE, "status": "draft"})
    sid = body["sequence"]["id"]  # type: ignore[index]
    status, problem = await api.call("POST", f"/sequences/{sid}/enrollments", {"contact_id": cid})
    assert status == 409 and problem["current_status"] == "draft"  # type: ignore[index]
    status, _ = await api.call("PATCH", f"/sequences/{sid}", {"status": "active"})
    assert status == 200
    status, _ = await api.call("POST", f"/sequences/{sid}/enrollments", {"contact_id": cid})
    assert status == 201


async def test_enroll_unknown_contact_is_404_naming_contact_id(api: Api) -> None:
    _, body = await api.call("POST", "/sequences", SEQUENCE)
    sid = body["sequence"]["id"]  # type: ignore[index]
    for cid in ("con_01M87ZG1G13N6E3KRCQQ6T", "nonsense"):
        status, problem = await api.call(
            "POST", f"/sequences/{sid}/enrollments", {"contact_id": cid}
        )
        assert status == 404 and problem["field"] == "contact_id"  # type: ignore[index]


async def test_archive_cancels_live_enrollments(api: Api) -> None:
    _, body = await api.call("POST", "/sequences", SEQUENCE)
    sid = body["sequence"]["id"]  # type: ignore[index]
    ids = []
    for i in range(5):
        cid = await _contact(api, phone=f"+1415555010{i}")
        _, e = await api.call("POST", f"/sequences/{sid}/enrollments", {"contact_id": cid})
        ids.append(e["enrollment"]["id"])  # type: ignore[index]
    await api.call("POST", f"/enrollments/{ids[0]}/pause")
    status, body = await api.call("DELETE", f"/sequences/{sid}")
    assert status == 200 and body["sequence"]["status"] == "archived"  # type: ignore[index]
    assert body["sequence"]["stats"]["cancelled"] == 5  # type: ignore[index]
    for eid in ids:
        _, e = await api.call("GET", f"/enrollments/{eid}")
        assert e["enrollment"]["cancel_reason"] == "sequence_archived"  # type: ignore[index]
    status, _ = await api.call("PATCH", f"/sequences/{sid}", {"name": "again"})
    assert status == 409


async def test_shorter_step_list_completes_enrollments_past_the_end(api: Api) -> None:
    _, body = await api.call("POST", "/sequences", SEQUENCE)
    sid = body["sequence"]["id"]  # type: ignore[index]
    cid = await _contact(api)
    _, e = await api.call("POST", f"/sequences/{sid}/enrollments", {"contact_id": cid})
    eid = e["enrollment"]["id"]  # type: ignore[index]
    # Pretend the dispatcher sent step 0: the enrollment now waits for step 1.
    store = api.store
    from seqd import ids

    shard = ids.shard_of(eid, store.shards)
    await store.client.hset(store.keys.enrollment(shard, eid), "i", 1)
    # By default it keeps running on the version it was enrolled on (issue 22): the
    # shorter list is version 2, and only "apply_to": "all" moves it there.
    status, body = await api.call(
        "PATCH",
        f"/sequences/{sid}",
        {"steps": [SEQUENCE["steps"][0]]},  # type: ignore[index]
    )
    assert status == 200 and body["sequence"]["version"] == 2  # type: ignore[index]
    _, e = await api.call("GET", f"/enrollments/{eid}")
    assert e["enrollment"]["status"] == "active"  # type: ignore[index]
    assert e["enrollment"]["sequence_version"] == 1  # type: ignore[index]
    status, body = await api.call(
        "PATCH",
        f"/sequences/{sid}",
        {"steps": [SEQUENCE["steps"][0]], "apply_to": "all"},  # type: ignore[index]
    )
    assert status == 200 and len(body["sequence"]["steps"]) == 1  # type: ignore[index]
    _, e = await api.call("GET", f"/enrollments/{eid}")
    assert e["enrollment"]["status"] == "completed"  # type: ignore[index]
    assert e["enrollment"]["completed_at"]  # type: ignore[index]


async def test_sequence_pause_resume(api: Api) -> None:
    _, body = await api.call("POST", "/sequences", SEQUENCE)
    sid = body["sequence"]["id"]  # type: ignore[index]
    status, body = await api.call("POST", f"/sequences/{sid}/pause")
    assert status == 200 and body["sequence"]["status"] == "paused"  # type: ignore[index]
    status, body = await api.call("POST", f"/sequences/{sid}/pause")
    assert status == 409 and body["current_status"] == "paused"  # type: ignore[index]
    cid = await _contact(api)
    status, _ = await api.call("POST", f"/sequences/{sid}/enrollments", {"contact_id": cid})
    assert status == 409
    status, body = await api.call("POST", f"/sequences/{sid}/resume")
    assert status == 200 and body["sequence"]["status"] == "active"  # type: ignore[index]
    status, _ = await api.call("PATCH", f"/sequences/{sid}", {"status": "draft"})
    assert status == 409


async def test_a_draft_is_started_with_activate(api: Api) -> None:
    """`/resume` is for a paused sequence; a draft's 409 says how to start it, and
    `/activate` does (draft to active only)."""
    _, body = await api.call("POST", "/sequences", {**SEQUENCE, "status": "draft"})
    sid = body["sequence"]["id"]  # type: ignore[index]
    status, problem = await api.call("POST", f"/sequences/{sid}/resume")
    assert status == 409 and problem["current_status"] == "draft"  # type: ignore[index]
    assert f"POST /v1/sequences/{sid}/activate" in problem["detail"]  # type: ignore[index]
    status, body = await api.call("POST", f"/sequences/{sid}/activate")
    assert status == 200 and body["sequence"]["status"] == "active"  # type: ignore[index]
    status, problem = await api.call("POST", f"/sequences/{sid}/activate")
    assert status == 409 and problem["current_status"] == "active"  # type: ignore[index]
    await api.call("POST", f"/sequences/{sid}/pause")
    status, problem = await api.call("POST", f"/sequences/{sid}/activate")
    assert status == 409 and "resume" in problem["detail"]  # type: ignore[index]


async def test_contact_crud_and_uniqueness(api: Api) -> None:
    cid = await _contact(api, email="a@example.com", external_id="x1")
    status, problem = await api.call("POST", "/contacts", {"phone": "+1 415 555 0100"})
    assert status == 409 and problem["field"] == "phone"  # type: ignore[index]
    assert problem["contact_id"] == cid  # type: ignore[index]

    status, body = await api.call("GET", "/contacts?phone=%2B14155550100")
    assert [c["id"] for c in body["data"]] == [cid]  # type: ignore[index]
    status, body = await api.call("GET", "/contacts?email=a@example.com&external_id=x1")
    assert body["total"] == 1  # type: ignore[index]
    status, body = await api.call("GET", "/contacts?email=nobody@example.com")
    assert body == {"next_page_token": None, "total": 0, "data": []}

    status, body = await api.call(
        "PATCH", f"/contacts/{cid}", {"phone": "+14155550199", "first_name": None}
    )
    assert status == 200 and body["contact"]["phone"] == "+14155550199"  # type: ignore[index]
    # The old number is free again; the new one is taken.
    status, _ = await api.call("POST", "/contacts", {"phone": "+14155550100"})
    assert status == 201
    status, problem = await api.call("POST", "/contacts", {"phone": "+14155550199"})
    assert status == 409
    status, problem = await api.call("PATCH", f"/contacts/{cid}", {"phone": None, "email": None})
    assert status == 422

    _, body = await api.call("POST", "/sequences", SEQUENCE)
    sid = body["sequence"]["id"]  # type: ignore[index]
    _, e = await api.call("POST", f"/sequences/{sid}/enrollments", {"contact_id": cid})
    status, _ = await api.call("DELETE", f"/contacts/{cid}")
    assert status == 204
    status, _ = await api.call("GET", f"/contacts/{cid}")
    assert status == 404
    _, e = await api.call("GET", f"/enrollments/{e['enrollment']['id']}")  # type: ignore[index]
    assert e["enrollment"]["cancel_reason"] == "contact_deleted"  # type: ignore[index]
    status, _ = await api.call("POST", "/contacts", {"phone": "+14155550199"})
    assert status == 201


async def test_pagination_walks_every_item_once(api: Api) -> None:
    made = [await _contact(api, phone=f"+1415555{i:04d}") for i in range(23)]
    seen: list[str] = []
    token = None
    while True:
        query = "/contacts?limit=5" + (f"&page_token={token}" if token else "")
        status, body = await api.call("GET", query)
        assert status == 200 and body["total"] == 23  # type: ignore[index]
        seen += [c["id"] for c in body["data"]]  # type: ignore[index]
        token = body["next_page_token"]  # type: ignore[index]
        if token is None:
            break
    assert seen == sorted(made)
