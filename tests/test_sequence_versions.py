"""Editing a live sequence, through the API against a real valkey-server: changed steps are
a new version; enrollments keep theirs unless the PATCH says `"apply_to": "all"`, which
moves them and re-times their next step from their last send."""

from __future__ import annotations

from typing import Any

from seqd.times import from_rfc3339
from tests.conftest import Api
from tests.dispatchutil import Clock, Recorder, dispatcher
from tests.webhookutil import pipeline

MINUTE = 60_000
THREE = [
    {"kind": "sms", "body": "one"},
    {"kind": "sms", "wait_minutes": 60, "body": "two"},
    {"kind": "sms", "wait_minutes": 60, "body": "three"},
]


async def _setup(api: Api, steps: list[dict[str, Any]]) -> tuple[str, str]:
    status, got = await api.call(
        "POST", "/sequences", {"name": "v", "status": "active", "steps": steps}
    )
    assert status == 201, got
    sid = got["sequence"]["id"]  # type: ignore[index]
    assert got["sequence"]["version"] == 1  # type: ignore[index]
    return sid, await _enroll(api, sid, "+14155550100")


async def _enroll(api: Api, sid: str, phone: str) -> str:
    status, got = await api.call(
        "POST", f"/sequences/{sid}/enrollments", {"contact": {"phone": phone}}
    )
    assert status == 201, got
    return str(got["enrollment"]["id"])  # type: ignore[index]


async def _enrollment(api: Api, eid: str) -> dict[str, Any]:
    _, got = await api.call("GET", f"/enrollments/{eid}")
    return got["enrollment"]  # type: ignore[index,no-any-return]


async def test_an_edit_leaves_live_enrollments_on_their_version(api: Api) -> None:
    sid, old = await _setup(api, THREE)
    sender, clock = Recorder(), Clock()
    d = dispatcher(api.store, sender, clock)
    await d.run_once(clock.at)  # "one"
    # Version 2: two steps, other texts. The live enrollment goes on with version 1.
    two = [{"kind": "sms", "body": "new"}, {"kind": "sms", "wait_minutes": 60, "body": "new 2"}]
    status, got = await api.call("PATCH", f"/sequences/{sid}", {"steps": two})
    assert status == 200 and got["sequence"]["version"] == 2  # type: ignore[index]
    # A name change is no new version of the steps.
    _, got = await api.call("PATCH", f"/sequences/{sid}", {"name": "renamed"})
    assert got["sequence"]["version"] == 2  # type: ignore[index]
    new = await _enroll(api, sid, "+14155550101")
    assert (await _enrollment(api, old))["sequence_version"] == 1
    assert (await _enrollment(api, new))["sequence_version"] == 2
    for _ in range(3):
        clock.advance(61 * MINUTE)
        await d.run_once(clock.at)
    by = {}
    for m in sender.messages:
        by.setdefault(m.enrollment_id, []).append(m.body)
    # The old one sends all three steps of its version (more than the newest has).
    assert by == {old: ["one", "two", "three"], new: ["new", "new 2"]}
    # Its events tell the version too.
    async with pipeline(api.store) as p:
        await p.read()
    _, sent = await api.call("GET", "/events?type=sequence.step.sent")
    versions = sorted(
        (
            e["data"]["enrollment_id"] == new,
            e["data"]["step"],
            e["data"]["enrollment"]["sequence_version"],
        )
        for e in sent["data"]  # type: ignore[index]
    )
    # (Step 0 of each went by advance's fast path, its last by the general one.)
    assert versions == [(False, 0, 1), (False, 1, 1), (False, 2, 1), (True, 0, 2), (True, 1, 2)]
    assert (await _enrollment(api, old))["status"] == "completed"
    assert (await _enrollment(api, new))["status"] == "completed"


async def test_apply_to_all_moves_and_retimes_from_the_last_send(api: Api) -> None:
    sid, eid = await _setup(api, THREE)
    sender, clock = Recorder(), Clock()
    d = dispatcher(api.store, sender, clock)
    await d.run_once(clock.at)
    sent_at = clock.at
    before = await _enrollment(api, eid)
    assert abs(from_rfc3339(before["next_run_at"]) - (sent_at + 60 * MINUTE)) < 1000
    steps = [
        {"kind": "sms", "body": "one"},
        {"kind": "sms", "wait_minutes": 10, "body": "two, sooner"},
    ]
    status, got = await api.call("PATCH", f"/sequences/{sid}", {"steps": steps, "apply_to": "all"})
    assert status == 200 and got["sequence"]["version"] == 2  # type: ignore[index]
    after = await _enrollment(api, eid)
    assert after["sequence_version"] == 2 and after["status"] == "active"
    # Re-timed: 10 minutes after its last send, not 60.
    assert from_rfc3339(after["next_run_at"]) == from_rfc3339(before["next_run_at"]) - 50 * MINUTE
    clock.advance(11 * MINUTE)
    await d.run_once(clock.at)
    assert [m.body for m in sender.messages] == ["one", "two, sooner"]
    assert (await _enrollment(api, eid))["status"] == "completed"


async def test_apply_to_all_completes_an_enrollment_whose_next_step_is_gone(api: Api) -> None:
    sid, eid = await _setup(api, THREE)
    sender, clock = Recorder(), Clock()
    d = dispatcher(api.store, sender, clock)
    await d.run_once(clock.at)
    clock.advance(61 * MINUTE)
    await d.run_once(clock.at)  # at step 2 now
    paused = await _enroll(api, sid, "+14155550102")
    await api.call("POST", f"/enrollments/{paused}/pause")
    # Reordered and shorter: two steps. The first enrollment's next step (2) is gone.
    steps = [THREE[1] | {"wait_minutes": 0}, THREE[0] | {"wait_minutes": 5}]
    status, _ = await api.call("PATCH", f"/sequences/{sid}", {"steps": steps, "apply_to": "all"})
    assert status == 200
    done = await _enrollment(api, eid)
    assert done["status"] == "completed" and done["sequence_version"] == 1
    # The paused one (at step 0) moves and, resumed, sends the new step 0.
    moved = await _enrollment(api, paused)
    assert moved["status"] == "paused" and moved["sequence_version"] == 2
    await api.call("POST", f"/enrollments/{paused}/resume")
    await d.run_once(clock.at)
    assert sender.messages[-1].enrollment_id == paused and sender.messages[-1].body == "two"


async def test_an_old_version_keeps_the_contact_fields_it_reads(api: Api) -> None:
    """The claim reads only the contact fields the sequence's messages name: those of
    every kept version, or an old version's message would pause for a field it has."""
    steps = [
        {"kind": "sms", "body": "a"},
        {"kind": "sms", "wait_minutes": 5, "body": "Bye {{last_name}}"},
    ]
    status, got = await api.call(
        "POST", "/sequences", {"name": "v", "status": "active", "steps": steps}
    )
    assert status == 201, got
    sid = got["sequence"]["id"]  # type: ignore[index]
    contact = {"phone": "+14155550103", "last_name": "Lovelace"}
    _, e = await api.call("POST", f"/sequences/{sid}/enrollments", {"contact": contact})
    eid = e["enrollment"]["id"]  # type: ignore[index]
    sender, clock = Recorder(), Clock()
    d = dispatcher(api.store, sender, clock)
    await d.run_once(clock.at)
    await api.call(
        "PATCH",
        f"/sequences/{sid}",
        {"steps": [{"kind": "sms", "body": "x"}, {"kind": "sms", "body": "y"}]},
    )
    clock.advance(6 * MINUTE)
    await d.run_once(clock.at)
    assert [m.body for m in sender.messages] == ["a", "Bye Lovelace"]
    assert (await _enrollment(api, eid))["status"] == "completed"


async def test_a_queued_contact_is_enrolled_when_the_dispatcher_completes_the_other(
    api: Api,
) -> None:
    """if_busy queue, ended by the last step's send (advance), not by hand."""
    one = [{"kind": "sms", "body": "only"}]
    ids = []
    for _ in range(2):
        body = {"name": "x", "status": "active", "steps": one, "exclusive": True}
        _, got = await api.call("POST", "/sequences", body)
        ids.append(got["sequence"]["id"])  # type: ignore[index]
    a, b = ids
    first = await _enroll(api, a, "+14155550104")
    cid = (await _enrollment(api, first))["contact_id"]
    status, queued = await api.call(
        "POST", f"/sequences/{b}/enrollments", {"contact_id": cid, "if_busy": "queue"}
    )
    assert status == 202
    waiting = queued["queued"]["id"]  # type: ignore[index]
    sender, clock = Recorder(), Clock()
    d = dispatcher(api.store, sender, clock)
    await d.run_once(clock.at)
    assert (await _enrollment(api, first))["status"] == "completed"
    assert (await _enrollment(api, waiting))["status"] == "active"
    clock.advance(1000)
    await d.run_once(clock.at)
    assert [m.enrollment_id for m in sender.messages] == [first, waiting]
