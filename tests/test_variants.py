"""A/B variants through the API against a real valkey-server: validation, the pick (the
same in another process and on a retry), its record on the enrollment and in
`sequence.step.sent`, and a winner."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest

from seqd import models
from seqd.channels.base import OutboundMessage, SendResult
from seqd.engine.plans import build
from seqd.store.db import Store
from tests.conftest import Api
from tests.dispatchutil import Clock, Recorder, dispatcher, events
from tests.opsutil import Daemon, call

AB_SMS = {
    "kind": "sms",
    "body": "plain",
    "variants": [
        {"id": "a", "weight": 50, "body": "A {{first_name|there}}"},
        {"id": "b", "weight": 50, "body": "B {{first_name|there}}"},
    ],
}
AB_EMAIL = {
    "kind": "email",
    "wait_minutes": 60,
    "subject": "Hello",
    "body": "Body",
    "variants": [{"id": "short", "subject": "Hi"}, {"id": "long", "weight": 3}],
}


async def _sequence(api: Api, *steps: dict[str, Any]) -> dict[str, Any]:
    body = {"name": "ab", "status": "active", "steps": list(steps)}
    status, got = await api.call("POST", "/sequences", body)
    assert status == 201, got
    return got["sequence"]  # type: ignore[index,no-any-return]


async def _enroll_many(api: Api, sid: str, n: int, first: int = 0) -> list[str]:
    out = []
    for i in range(first, first + n):
        contact = {"phone": f"+1415556{i:04d}", "email": f"v{i}@example.com"}
        status, got = await api.call("POST", f"/sequences/{sid}/enrollments", {"contact": contact})
        assert status == 201, got
        out.append(got["enrollment"]["id"])  # type: ignore[index]
    return out


async def _enroll_picking_both(api: Api, seq: dict[str, Any], n: int) -> list[str]:
    """`n` enrollments, and more until step 0 picks each of its two variants for some: the
    pick hashes the random enrollment id, so `n` alone cover both only by chance."""
    plan = build(msgspec.convert(seq, models.Sequence), 1)
    eids = await _enroll_many(api, seq["id"], n)
    while len({plan.steps[0].variant_for(e, 0).id for e in eids}) < 2:
        eids += await _enroll_many(api, seq["id"], 1, first=len(eids))
    return eids


@pytest.mark.parametrize(
    ("variants", "path"),
    [
        ([{"id": "a", "body": "x"}, {"id": "a", "body": "y"}], "steps[0].variants[1].id"),
        ([{"id": "a", "weight": 0, "body": "x"}], "steps[0].variants[0].weight"),
        ([{"id": "a", "subject": "S"}], "steps[0].variants[0].subject"),
        ([{"id": "a", "body": "{{oops"}], "steps[0].variants[0].body"),
        ([{"id": "no spaces", "body": "x"}], "steps[0].variants[0].id"),
        ([], "steps[0].variants"),
    ],
)
async def test_bad_variants_are_422_naming_the_path(
    api: Api, variants: list[dict[str, Any]], path: str
) -> None:
    step = {"kind": "sms", "body": "b", "variants": variants}
    status, problem = await api.call("POST", "/sequences", {"name": "x", "steps": [step]})
    assert status == 422, problem
    assert path in [e["path"] for e in problem["errors"]], problem  # type: ignore[index]


async def test_a_threaded_email_takes_no_variant_subject(api: Api) -> None:
    reply = {
        "kind": "email",
        "subject": "x",
        "body": "b",
        "variants": [{"id": "a", "subject": "S"}],
    }
    steps = [{"kind": "email", "subject": "First", "body": "b"}, reply]
    status, problem = await api.call("POST", "/sequences", {"name": "x", "steps": steps})
    assert status == 422
    assert problem["errors"][0]["path"] == "steps[1].variants[0].subject"  # type: ignore[index]
    steps[1] = {**reply, "thread": False}
    status, _ = await api.call("POST", "/sequences", {"name": "x", "steps": steps})
    assert status == 201


_PICK = """
import json, sys
from seqd import models
from seqd.engine.plans import build
import msgspec
seq = msgspec.json.decode(sys.argv[1], type=models.Sequence)
plan = build(seq, 1)
ids = json.loads(sys.argv[2])
print(json.dumps([plan.steps[0].variant_for(i, 0).id for i in ids]))
"""


def test_the_pick_is_the_same_in_another_process() -> None:
    steps = models.build_steps([msgspec.convert(AB_SMS, models.StepIn)])
    seq = models.Sequence(
        id="seq_x", name="ab", status=models.SequenceStatus.ACTIVE, steps=steps,
        created_at="", updated_at="",
    )  # fmt: skip
    eids = [f"enr_{n:06d}x" for n in range(200)]
    plan = build(seq, 1)
    here = [plan.steps[0].variant_for(e, 0).id for e in eids]
    # Another interpreter with another hash seed: the pick is no str hash().
    there = subprocess.run(
        [sys.executable, "-c", _PICK, msgspec.json.encode(seq).decode(), json.dumps(eids)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert json.loads(there.stdout) == here
    counts = Counter(here)
    assert 70 < counts["a"] < 130 and counts["a"] + counts["b"] == 200


async def test_variants_are_sent_recorded_and_in_the_sent_event(api: Api) -> None:
    seq = await _sequence(api, AB_SMS, AB_EMAIL)
    eids = await _enroll_picking_both(api, seq, 12)
    sender, clock = Recorder(), Clock()
    d = dispatcher(api.store, sender, clock)
    await d.run_once(clock.at)
    clock.advance(61 * 60_000)
    await d.run_once(clock.at)
    assert len(sender.messages) == 2 * len(eids)
    sent = {
        (e["id"], e["step"]): e
        for e in await events(api.store)
        if e["type"] == "sequence.step.sent"
    }
    used: Counter[str] = Counter()
    for message in sender.messages:
        eid, step = message.enrollment_id, message.step
        _, got = await api.call("GET", f"/enrollments/{eid}")
        variant = got["enrollment"]["variants"][str(step)]  # type: ignore[index]
        assert sent[(eid, step)]["variant"] == variant
        used[f"{step}:{variant}"] += 1
        if step == 0:
            assert message.body == f"{variant.upper()} there"
        else:
            assert message.subject == ("Hi" if variant == "short" else "Hello")
            assert message.body == "Body"
    assert used["0:a"] and used["0:b"] and used["1:short"] + used["1:long"] == len(eids)


async def test_a_retry_sends_the_same_variant(api: Api) -> None:
    seq = await _sequence(api, AB_SMS)
    await _enroll_many(api, seq["id"], 6)
    tries: Counter[str] = Counter()

    def flaky(message: OutboundMessage) -> SendResult:
        tries[message.enrollment_id] += 1
        if tries[message.enrollment_id] == 1:
            return SendResult(outcome="retry", error="busy")
        return SendResult(outcome="sent", provider_id=f"p-{message.key}")

    sender, clock = Recorder(answer=flaky), Clock()
    d = dispatcher(api.store, sender, clock)
    await d.run_once(clock.at)
    clock.advance(3_600_000)
    await d.run_once(clock.at)
    by_enrollment: dict[str, set[str]] = {}
    for m in sender.messages:
        by_enrollment.setdefault(m.enrollment_id, set()).add(m.body)
    assert len(by_enrollment) == 6 and all(tries[e] == 2 for e in by_enrollment)
    assert all(len(bodies) == 1 for bodies in by_enrollment.values())


async def test_a_winner_is_sent_alone_and_the_others_stay_listed(api: Api) -> None:
    first = {**AB_SMS, "wait_minutes": 0}
    second = {**AB_SMS, "wait_minutes": 60}
    seq = await _sequence(api, first, second)
    sid = seq["id"]
    eids = await _enroll_picking_both(api, seq, 10)
    sender, clock = Recorder(), Clock()
    d = dispatcher(api.store, sender, clock)
    await d.run_once(clock.at)
    status, got = await api.call("POST", f"/sequences/{sid}/steps/1/winner", {"variant": "b"})
    assert status == 200, got
    step = got["sequence"]["steps"][1]  # type: ignore[index]
    assert step["winner"] == "b" and step["winner_at"]
    assert [v["id"] for v in step["variants"]] == ["a", "b"]
    assert got["sequence"]["version"] == 1  # type: ignore[index]  (not a new version)
    clock.advance(61 * 60_000)
    await d.run_once(clock.at)
    later = [m for m in sender.messages if m.step == 1]
    assert len(later) == len(eids) and {m.body for m in later} == {"B there"}
    # Step 0's record is as it was sent, both variants.
    recorded = set()
    for eid in eids:
        _, e = await api.call("GET", f"/enrollments/{eid}")
        recorded.add(e["enrollment"]["variants"]["0"])  # type: ignore[index]
        assert e["enrollment"]["variants"]["1"] == "b"  # type: ignore[index]
    assert recorded == {"a", "b"}


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/steps/5/winner", {"variant": "a"}, 404),
        ("/steps/x/winner", {"variant": "a"}, 404),
        ("/steps/1/winner", {"variant": "a"}, 409),
        ("/steps/0/winner", {"variant": "zz"}, 422),
        ("/steps/0/winner", {}, 422),
    ],
)
async def test_winner_errors(api: Api, path: str, body: dict[str, Any], status: int) -> None:
    seq = await _sequence(api, AB_SMS, {"kind": "sms", "body": "plain"})
    got, problem = await api.call("POST", f"/sequences/{seq['id']}{path}", body)
    assert got == status, problem
    if status == 422 and body:
        assert problem["errors"][0]["path"] == "variant"  # type: ignore[index]


@pytest.mark.slow  # a real `seqd serve` with two worker processes
async def test_seqd_worker_processes_send_the_variant_this_process_picks(
    store: Store, store_url: str, prefix: str, tmp_path: Path
) -> None:
    """Two worker processes of one `seqd serve` (each its own hash seed) claim and send
    the steps: every enrollment's recorded variant is the one this process computes."""
    _, key = await store.tenants.create_key("acme")
    daemon = Daemon(store_url, prefix, tmp_path / "d", SEQD_HTTP_WORKERS="2").start()
    try:
        daemon.wait_healthy()
        body = {"name": "ab", "status": "active", "steps": [AB_SMS]}
        sid = call(daemon, key, "POST", "/sequences", body)["sequence"]["id"]
        items = [{"contact": {"phone": f"+1415557{n:04d}"}} for n in range(60)]
        made = call(daemon, key, "POST", f"/sequences/{sid}/enrollments/batch", {"items": items})
        eids = [item["enrollment"]["id"] for item in made["results"]]
        deadline = time.monotonic() + 30
        while True:
            got = [call(daemon, key, "GET", f"/enrollments/{e}")["enrollment"] for e in eids]
            if all(e["status"] == "completed" for e in got):
                break
            assert time.monotonic() < deadline, daemon.stderr()
            await asyncio.sleep(0.1)
        seq = msgspec.convert(
            call(daemon, key, "GET", f"/sequences/{sid}")["sequence"], models.Sequence
        )
    finally:
        daemon.stop()
    plan = build(seq, 1)
    recorded = [e["variants"]["0"] for e in got]
    assert recorded == [plan.steps[0].variant_for(e, 0).id for e in eids]
    assert set(recorded) == {"a", "b"}
