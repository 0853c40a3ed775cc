"""Editing a live sequence, through the API against a real valkey-server: changed steps are
a new version; enrollments keep theirs unless the PATCH says `"apply_to": "all"`, which
moves them and re-times their next step from their last send."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from seqd import models
from seqd.store.db import Store
from seqd.store.sequences import step_map
from seqd.times import from_rfc3339
from tests.conftest import Api
from tests.dispatchutil import Clock, Recorder, dispatcher, events, raw
from tests.lifecycleutil import client, config, send_due
from tests.test_conditions import status_callback
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


def _ab(a: str, b: str, wait: int) -> dict[str, Any]:
    return {
        "kind": "sms",
        "wait_minutes": wait,
        "body": "plain",
        "variants": [{"id": "a", "body": a}, {"id": "b", "body": b}],
    }


async def test_a_winner_belongs_to_one_versions_step(api: Api) -> None:
    """A winner chosen on the newest version leaves the enrollments of an older one as they
    were, and an older version's winner stays with it; a new version keeps the winner of a
    step it did not change."""
    one = [_ab("A0", "B0", 0), _ab("A1", "B1", 60)]
    body = {"name": "w", "status": "active", "steps": one}
    status, got = await api.call("POST", "/sequences", body)
    assert status == 201, got
    sid = got["sequence"]["id"]  # type: ignore[index]
    old = [await _enroll(api, sid, f"+1415555{n:04d}") for n in range(20)]
    status, _ = await api.call("POST", f"/sequences/{sid}/steps/0/winner", {"variant": "a"})
    assert status == 200
    # Version 2 changes step 1's texts only: step 0 is the same step, and keeps its winner.
    two = [one[0], _ab("A1 v2", "B1 v2", 60)]
    status, got = await api.call("PATCH", f"/sequences/{sid}", {"steps": two})
    assert status == 200, got
    steps = got["sequence"]["steps"]  # type: ignore[index]
    assert got["sequence"]["version"] == 2  # type: ignore[index]
    assert steps[0]["winner"] == "a" and steps[1]["winner"] is None
    new = [await _enroll(api, sid, f"+1415556{n:04d}") for n in range(20)]
    # Winners on version 2's steps 0 and 1.
    for n in (0, 1):
        status, got = await api.call("POST", f"/sequences/{sid}/steps/{n}/winner", {"variant": "b"})
        assert status == 200 and got["sequence"]["version"] == 2  # type: ignore[index]
    sender, clock = Recorder(), Clock()
    d = dispatcher(api.store, sender, clock)
    await d.run_once(clock.at)
    clock.advance(61 * MINUTE)
    await d.run_once(clock.at)
    sent: dict[tuple[bool, int], set[str]] = {}
    for m in sender.messages:
        sent.setdefault((m.enrollment_id in new, m.step), set()).add(m.body)
    assert len(sender.messages) == 80
    assert sent == {
        # Version 1: its own step 0 winner; its step 1 has none, both variants go.
        (False, 0): {"A0"},
        (False, 1): {"A1", "B1"},
        # Version 2: the winners chosen on it.
        (True, 0): {"B0"},
        (True, 1): {"B1 v2"},
    }
    for eid in old:
        assert (await _enrollment(api, eid))["sequence_version"] == 1


async def test_step_facts_follow_their_steps_when_apply_to_all_reorders(store: Store) -> None:
    """A condition after `apply_to: "all"` reads what became of the new version's steps:
    the SMS's receipt follows it to its new index (also a receipt that comes after the
    move), and a step the enrollment passed without running it reads as not sent."""
    sms = {"kind": "sms", "body": "a"}
    email = {"kind": "email", "wait_minutes": 10, "subject": "s", "body": "b"}
    one = [sms, email, {"kind": "sms", "wait_minutes": 60, "body": "c, old"}]
    cfg = config()
    sender = Recorder()
    async with client(store, cfg) as api:
        body = {"name": "v", "status": "active", "steps": one}
        code, made = await api.call("POST", "/sequences", body)
        assert code == 201, made
        sid = made["sequence"]["id"]
        eids = {}
        for n, name in enumerate(("early", "late", "undelivered")):
            contact = {"phone": f"+141555501{n:02d}", "email": f"{name}@example.com"}
            code, got = await api.call(
                "POST", f"/sequences/{sid}/enrollments", {"contact": contact}
            )
            assert code == 201, got
            eids[name] = got["enrollment"]["id"]
        clock = Clock()
        await send_due(store, clock, sender)  # the SMS
        await status_callback(api, eids["early"], 0, "delivered", MessageSid="SM1")
        await status_callback(api, eids["undelivered"], 0, "undelivered", MessageSid="SM2")
        clock.advance(10 * MINUTE + 1)
        await send_due(store, clock, sender)  # the email; each is at index 2 now
        assert [m.body for m in sender.messages] == ["a"] * 3 + ["b"] * 3
        # Version 2: a new email first, the SMS second (the old email is gone), then a step
        # on the SMS's receipt and one on whether the new email was sent.
        two = [
            {"kind": "email", "subject": "n", "body": "new"},
            sms,
            {"kind": "sms", "wait_minutes": 60, "body": "c",
             "only_if": {"step": 1, "is": "delivered"}},
            {"kind": "sms", "body": "d", "only_if": {"not": {"step": 0, "is": "sent"}}},
        ]  # fmt: skip
        code, got = await api.call("PATCH", f"/sequences/{sid}", {"steps": two, "apply_to": "all"})
        assert code == 200, got
        # The late receipt: sent as step 0, it is about what is now step 1.
        await status_callback(api, eids["late"], 0, "delivered", MessageSid="SM3")
        h = {name: await raw(store, eid) for name, eid in eids.items()}
        assert {name: (e["sv"], e["o"], e["mv"]) for name, e in h.items()} == {
            "early": ("2", "xd", "1,-1"),
            "late": ("2", "xd", "1,-1"),
            "undelivered": ("2", "xu", "1,-1"),
        }
        # The receipts themselves stay on the step as sent.
        assert h["late"]["d0"] == "3:delivered"
        for _ in range(2):
            clock.advance(60 * MINUTE + 1)
            await send_due(store, clock, sender)
        for eid in eids.values():
            _, got = await api.call("GET", f"/enrollments/{eid}")
            assert got["enrollment"]["status"] == "completed", got
    bodies: dict[str, list[str]] = {name: [] for name in eids}
    for m in sender.messages:
        bodies[next(n for n, e in eids.items() if e == m.enrollment_id)].append(m.body)
    assert bodies == {
        "early": ["a", "b", "c", "d"],
        "late": ["a", "b", "c", "d"],
        "undelivered": ["a", "b", "d"],
    }
    skipped = [e for e in await events(store) if e["type"] == "sequence.step.skipped"]
    assert [(e["id"], e["step"], e["reason"]) for e in skipped] == [
        (eids["undelivered"], 2, "condition")
    ]


def _steps(*bodies: str) -> list[models.Step]:
    """SMS steps by body; "e:<body>" an email step."""
    out = []
    for body in bodies:
        kind, _, text = body.rpartition(":")
        step = {"kind": "email", "subject": "s"} if kind == "e" else {"kind": "sms"}
        out.append(msgspec.convert({**step, "body": text}, models.StepIn))
    return models.build_steps(out)


@pytest.mark.parametrize(
    ("old", "new", "same", "identical"),
    [
        (("a", "b"), ("a", "b"), [0, 1], [0, 1]),
        (("a", "b", "c"), ("b", "a"), [1, 0, -1], [1, 0, -1]),
        # Edited in place: the same kind at the same index is the same step.
        (("a", "e:b"), ("a", "e:b2"), [0, 1], [0, -1]),
        # ... but not when its index holds another old step's identical one.
        (("a", "b"), ("b", "c"), [-1, 0], [-1, 0]),
        (("a", "e:b"), ("e:b", "a2"), [-1, 0], [-1, 0]),
        (("a", "e:b"), ("e:n", "a"), [1, -1], [1, -1]),
    ],
)
def test_step_map(
    old: tuple[str, ...], new: tuple[str, ...], same: list[int], identical: list[int]
) -> None:
    assert step_map(_steps(*old), _steps(*new)) == same
    assert step_map(_steps(*old), _steps(*new), edited=False) == identical


def test_a_steps_timing_and_winner_are_not_what_it_is() -> None:
    old = _steps("a", "b")
    new = [msgspec.structs.replace(s, wait_minutes=5, winner="x") for s in reversed(old)]
    assert step_map(old, new, edited=False) == [1, 0]


async def test_step_facts_follow_their_steps_through_two_moves(api: Api) -> None:
    a = {"kind": "sms", "body": "a"}
    b = {"kind": "sms", "body": "b", "skip_if": {"field": "phone", "exists": True}}
    c = {"kind": "sms", "wait_minutes": 60, "body": "c"}
    sid, eid = await _setup(api, [a, b, c])
    sender, clock = Recorder(), Clock()
    d = dispatcher(api.store, sender, clock)
    for _ in range(2):
        await d.run_once(clock.at)
        clock.advance(1000)
    assert [m.body for m in sender.messages] == ["a"]
    assert (await raw(api.store, eid))["o"] == "-k"  # a sent, b skipped; at step 2

    async def move(steps: list[dict[str, Any]]) -> tuple[str, str]:
        status, got = await api.call(
            "PATCH", f"/sequences/{sid}", {"steps": steps, "apply_to": "all"}
        )
        assert status == 200, got
        h = await raw(api.store, eid)
        return h["o"], h["mv"]

    # Swapped: the skip is step 0's now, the send step 1's; sends 0 and 1 are at 1 and 0.
    assert await move([b, a, c]) == ("k-", "1,0")
    # b dropped, a first, a new email where b was: step 1 did not run (x).
    email = {"kind": "email", "subject": "s", "body": "new"}
    assert await move([a, email, c]) == ("-x", "0,-1")
    _, got = await api.call("GET", f"/enrollments/{eid}")
    assert got["enrollment"]["sequence_version"] == 3  # type: ignore[index]
