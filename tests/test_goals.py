"""Contact events and goals through the API: POST /contacts/{id}/events and its batch
record an event once per id, and complete the contact's live enrollments in sequences
whose `exit_on` the event meets (completed_reason "goal"), across a restart of seqd too."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from seqd import ids
from seqd.api.app import create_app
from seqd.config import Config
from seqd.store import calls
from seqd.store.db import Store, connect
from seqd.store.scripts import ScriptError
from tests.conftest import QUIET_OFF, Api
from tests.dispatchutil import Clock, Recorder, events
from tests.lifecycleutil import send_due
from tests.opsutil import Daemon, call

SMS = {"kind": "sms", "body": "Hi"}
MEETING = {"event": "meeting_booked"}
WON = {"event": "deal_stage", "where": {"properties.stage": "won"}}


async def sequence(api: Api, exit_on: list[dict[str, Any]] | None = None) -> str:
    body: dict[str, Any] = {
        "name": "s",
        "status": "active",
        "steps": [SMS, {**SMS, "wait_minutes": 60}],
    }
    if exit_on is not None:
        body["exit_on"] = exit_on
    code, made = await api.call("POST", "/sequences", body)
    assert code == 201, made
    assert isinstance(made, dict)
    return str(made["sequence"]["id"])


async def contact(api: Api, phone: str = "+14155550100") -> str:
    code, made = await api.call("POST", "/contacts", {"first_name": "Ada", "phone": phone})
    assert code == 201, made
    assert isinstance(made, dict)
    return str(made["contact"]["id"])


async def enroll(api: Api, sid: str, cid: str) -> str:
    code, made = await api.call("POST", f"/sequences/{sid}/enrollments", {"contact_id": cid})
    assert code == 201, made
    assert isinstance(made, dict)
    return str(made["enrollment"]["id"])


async def enrollment(api: Api, eid: str) -> dict[str, Any]:
    code, got = await api.call("GET", f"/enrollments/{eid}")
    assert code == 200, got
    assert isinstance(got, dict)
    return dict(got["enrollment"])


async def post_event(api: Api, cid: str, **event: Any) -> tuple[int, dict[str, Any]]:
    code, answer = await api.call("POST", f"/contacts/{cid}/events", event)
    assert isinstance(answer, dict), answer
    return code, answer


async def test_a_goal_completes_the_contacts_enrollments_in_its_sequences(api: Api) -> None:
    with_goal, other, without = (
        await sequence(api, [MEETING]),
        await sequence(api, [WON]),
        await sequence(api),
    )
    cid, bystander = await contact(api), await contact(api, "+14155550101")
    done = await enroll(api, with_goal, cid)
    stays = [await enroll(api, other, cid), await enroll(api, without, cid)]
    not_theirs = await enroll(api, with_goal, bystander)
    code, answer = await post_event(
        api, cid, name="meeting_booked", properties={"when": "tomorrow"},
        occurred_at="2026-12-01T10:00:00+01:00",
    )  # fmt: skip
    assert code == 201, answer
    assert answer["completed"] == [done] and answer["idempotent"] is False
    event = answer["event"]
    assert event["name"] == "meeting_booked" and event["contact_id"] == cid
    assert event["occurred_at"] == "2026-12-01T09:00:00.000Z"
    assert event["id"].startswith("cev_")
    got = await enrollment(api, done)
    assert (got["status"], got["completed_reason"], got["goal"]) == (
        "completed", "goal", "meeting_booked",
    )  # fmt: skip
    assert got["next_run_at"] is None
    for eid in [*stays, not_theirs]:
        got = await enrollment(api, eid)
        assert got["status"] == "active" and "completed_reason" not in got
    seen = await events(api.store)
    (completed,) = [e for e in seen if e["type"] == "sequence.enrollment.completed"]
    assert completed["id"] == done
    assert (completed["completed_reason"], completed["goal"]) == ("goal", "meeting_booked")
    (recorded,) = [e for e in seen if e["type"] == "contact.event_recorded"]
    assert recorded["name"] == "meeting_booked" and recorded["completed"] == [done]
    assert recorded["properties"] == {"when": "tomorrow"}
    # The queue no longer holds it: nothing more is sent.
    sender = Recorder()
    clock = Clock()
    await send_due(api.store, clock, sender)
    assert done not in {m.enrollment_id for m in sender.messages}


async def test_where_must_match_and_paused_enrollments_complete_too(api: Api) -> None:
    sid = await sequence(api, [WON])
    cid = await contact(api)
    eid = await enroll(api, sid, cid)
    assert (await api.call("POST", f"/enrollments/{eid}/pause"))[0] == 200
    for properties in ({"stage": "lost"}, {}, {"stage": {"won": True}}, {"Stage": "won"}):
        code, answer = await post_event(api, cid, name="deal_stage", properties=properties)
        assert code == 201 and answer["completed"] == [], answer
    assert (await enrollment(api, eid))["status"] == "paused"
    code, answer = await post_event(api, cid, name="deal_stage", properties={"stage": "won"})
    assert answer["completed"] == [eid]
    assert (await enrollment(api, eid))["goal"] == "deal_stage"


async def test_nested_where_paths(api: Api) -> None:
    sid = await sequence(
        api,
        [
            {
                "event": "order",
                "where": {"properties.total.currency": "EUR", "properties.paid": True},
            }
        ],
    )
    cid = await contact(api)
    eid = await enroll(api, sid, cid)
    _, answer = await post_event(
        api, cid, name="order", properties={"total": {"currency": "EUR"}, "paid": 1}
    )
    assert answer["completed"] == []  # 1 is not true
    _, answer = await post_event(
        api, cid, name="order", properties={"total": {"currency": "EUR"}, "paid": True}
    )
    assert answer["completed"] == [eid]


async def test_once_per_event_id(api: Api) -> None:
    sid = await sequence(api, [MEETING])
    cid = await contact(api)
    first = await enroll(api, sid, cid)
    code, answer = await post_event(api, cid, id="crm-42", name="meeting_booked")
    assert code == 201 and answer["completed"] == [first]
    again = await enroll(api, sid, cid)  # a new enrollment after the goal
    code, repeat = await post_event(api, cid, id="crm-42", name="meeting_booked")
    assert code == 200 and repeat["idempotent"] is True
    assert repeat["event"] == answer["event"] and repeat["completed"] == [first]
    assert (await enrollment(api, again))["status"] == "active"
    recorded = [e for e in await events(api.store) if e["type"] == "contact.event_recorded"]
    assert len(recorded) == 1


async def test_patch_exit_on(api: Api) -> None:
    sid = await sequence(api)
    cid = await contact(api)
    eid = await enroll(api, sid, cid)
    assert (await post_event(api, cid, name="meeting_booked"))[1]["completed"] == []
    code, patched = await api.call("PATCH", f"/sequences/{sid}", {"exit_on": [MEETING]})
    assert code == 200 and isinstance(patched, dict)
    assert patched["sequence"]["exit_on"] == [MEETING]
    assert (await post_event(api, cid, name="meeting_booked"))[1]["completed"] == [eid]


async def test_bad_input_names_the_field(api: Api) -> None:
    cid = await contact(api)

    def seq(*rules: dict[str, Any]) -> dict[str, Any]:
        return {"name": "s", "steps": [SMS], "exit_on": list(rules)}

    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/sequences", seq({"event": "x", "where": {"stage": "won"}}), "exit_on[0].where"),
        ("/sequences", seq(MEETING, {"event": "has space"}), "exit_on[1].event"),
        ("/sequences", seq({"where": {}}), "exit_on[0].event"),
        (f"/contacts/{cid}/events", {"name": "x", "occurred_at": "yesterday"}, "occurred_at"),
        (f"/contacts/{cid}/events", {"name": "x", "occurred_at": "1969-12-31T23:59:59Z"}, "occurred_at"),  # noqa: E501
        (f"/contacts/{cid}/events", {"name": ""}, "name"),
        (f"/contacts/{cid}/events", {"name": "x", "properties": {"a": "x" * 17_000}}, "properties"),
        (f"/contacts/{cid}/events", {"name": "x", "colour": 1}, "colour"),
    ]  # fmt: skip
    for path, body, field in cases:
        code, answer = await api.call("POST", path, body)
        assert code == 422, (body, answer)
        assert isinstance(answer, dict)
        assert field in [e["path"] for e in answer["errors"]], (body, answer)


async def test_unknown_and_other_tenants_contacts_are_404(api: Api) -> None:
    cid = await contact(api)
    _, other_key = await api.store.tenants.create_key("beta")
    code, _ = await api.call("POST", f"/contacts/{cid}/events", {"name": "x"}, key=other_key)
    assert code == 404
    for missing in ("con_01M880EKDM4XR9YMTYSEEY", "garbage"):
        code, _ = await api.call("POST", f"/contacts/{missing}/events", {"name": "x"})
        assert code == 404
    assert not [e for e in await events(api.store) if e["type"] == "contact.event_recorded"]


async def test_batch(api: Api) -> None:
    sid = await sequence(api, [MEETING])
    a, b = await contact(api), await contact(api, "+14155550101")
    ea, eb = await enroll(api, sid, a), await enroll(api, sid, b)
    items = [
        {"contact_id": a, "name": "meeting_booked", "id": "m-1"},
        {"contact_id": b, "name": "page_viewed", "properties": {"url": "/pricing"}},
        {"contact_id": "con_01M880EKDM4XR9YMTYSEEY", "name": "meeting_booked"},
        {"contact_id": b, "name": "bad name"},
        {"name": "meeting_booked"},
        {"contact_id": a, "name": "meeting_booked", "id": "m-1"},
    ]
    code, answer = await api.call("POST", "/contacts/events/batch", {"items": items})
    assert code == 200, answer
    assert isinstance(answer, dict)
    results = answer["results"]
    assert [r["outcome"] for r in results] == [
        "recorded",
        "recorded",
        "problem",
        "problem",
        "problem",
        "recorded",
    ]
    assert results[0]["completed"] == [ea]
    assert results[1]["completed"] == [] and results[1]["event"]["properties"] == {
        "url": "/pricing"
    }
    assert (results[2]["status"], results[2]["index"]) == (404, 2)
    assert [e["path"] for e in results[3]["errors"]] == ["items[3].name"]
    assert [e["path"] for e in results[4]["errors"]] == ["items[4].contact_id"]
    # The same id twice in one batch: recorded once, both answers agree.
    assert results[5]["completed"] == [ea] and results[0]["event"] == results[5]["event"]
    assert results[0]["idempotent"] is not results[5]["idempotent"]
    assert (await enrollment(api, eb))["status"] == "active"
    code, answer = await api.call("POST", "/contacts/events/batch", {"items": []})
    assert code == 422


@asynccontextmanager
async def seqd(url: str, prefix: str) -> AsyncIterator[Api]:
    """A seqd process's API and store on the shared server, closed on exit (a restart)."""
    store = await Store.open(connect(url), prefix, 4)
    try:
        _, key = await store.tenants.create_key("acme")
        async with TestClient(TestServer(create_app(Config(compliance=QUIET_OFF), store))) as http:
            yield Api(http, key, store)
    finally:
        await store.close()


async def test_goals_across_a_restart(store_url: str, prefix: str) -> None:
    async with seqd(store_url, prefix) as api:
        sid = await sequence(api, [MEETING])
        cid = await contact(api)
        eid = await enroll(api, sid, cid)
        code, first = await post_event(api, cid, id="before", name="page_viewed")
        assert code == 201
    async with seqd(store_url, prefix) as api:
        code, again = await post_event(api, cid, id="before", name="page_viewed")
        assert code == 200 and again["event"] == first["event"]
        code, answer = await post_event(api, cid, id="after", name="meeting_booked")
        assert code == 201 and answer["completed"] == [eid]
    async with seqd(store_url, prefix) as api:
        got = await enrollment(api, eid)
        assert (got["status"], got["completed_reason"], got["goal"]) == (
            "completed",
            "goal",
            "meeting_booked",
        )
        code, repeat = await post_event(api, cid, id="after", name="meeting_booked")
        assert code == 200 and repeat["completed"] == [eid]


async def test_the_script_refuses_what_it_cannot_decide(api: Api) -> None:
    """recordContactEvent directly: another tenant's contact is NOT_FOUND; a sequence read
    at another version, or a live enrollment in a sequence not passed, is STALE (the
    caller reads again); nothing is written by a refusal."""
    store = api.store
    sid = await sequence(api, [MEETING])
    cid = await contact(api)
    await enroll(api, sid, cid)
    shard = ids.shard_of(cid, store.shards)
    _, version = await store.sequences.get_versioned("acme", sid)

    async def run(tenant: str, sequences: list[str | int]) -> Any:
        call = calls.record_contact_event(
            store.keys, shard, 1, tenant, cid, "e-1", '{"id":"e-1"}', 60_000, sequences
        )
        return await store.runner.run(call)

    for tenant, args, code in [
        ("beta", [sid, version, "meeting_booked"], "NOT_FOUND"),
        ("acme", [sid, version + 1, "meeting_booked"], "STALE"),
        ("acme", [], "STALE"),
    ]:
        with pytest.raises(ScriptError) as refused:
            await run(tenant, args)
        assert refused.value.code == code
    assert not [e for e in await events(store) if e["type"] == "contact.event_recorded"]
    repeated, text = await run("acme", [sid, version, ""])
    assert repeated == 0 and '"completed":[]' in text


@pytest.mark.slow  # two real `seqd serve` processes, one after the other
async def test_a_goal_in_the_next_seqd_process_completes_what_the_first_sent(
    store: Store, store_url: str, prefix: str, tmp_path: Path
) -> None:
    """The first process enrolls and sends step 0, then stops (SIGTERM); the goal posted
    to the next one completes the enrollment, once (the same event id again answers the
    same completion)."""
    _, key = await store.tenants.create_key("acme")
    first = Daemon(store_url, prefix, tmp_path / "first").start()
    try:
        first.wait_healthy()
        body = {
            "name": "s",
            "status": "active",
            "steps": [SMS, {**SMS, "wait_minutes": 60}],
            "exit_on": [MEETING],
        }
        sid = call(first, key, "POST", "/sequences", body)["sequence"]["id"]
        made = {"contact": {"first_name": "Ada", "phone": "+14155550100"}}
        got = call(first, key, "POST", f"/sequences/{sid}/enrollments", made)["enrollment"]
        eid, cid = got["id"], got["contact_id"]
        deadline = time.monotonic() + 30
        while call(first, key, "GET", f"/enrollments/{eid}")["enrollment"]["current_step"] < 1:
            assert time.monotonic() < deadline, first.stderr()
            await asyncio.sleep(0.1)
        first.signal(signal.SIGTERM)
        assert first.wait() == 0, first.stderr()
    finally:
        first.stop()
    second = Daemon(store_url, prefix, tmp_path / "second").start()
    try:
        second.wait_healthy()
        event = {"id": "booked-1", "name": "meeting_booked"}
        answer = call(second, key, "POST", f"/contacts/{cid}/events", event)
        assert answer["completed"] == [eid]
        got = call(second, key, "GET", f"/enrollments/{eid}")["enrollment"]
        assert (got["status"], got["completed_reason"], got["goal"]) == (
            "completed",
            "goal",
            "meeting_booked",
        )
        assert got["current_step"] == 1
        again = call(second, key, "POST", f"/contacts/{cid}/events", event)
        assert again["event"] == answer["event"] and again["completed"] == [eid]
    finally:
        second.stop()
