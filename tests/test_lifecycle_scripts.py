"""The lifecycle scripts called directly, error codes included, on valkey and fakeredis."""

from __future__ import annotations

import json
from typing import Any

import pytest

from seqd import ids
from seqd.errors import NotFound
from seqd.kinds import letters
from seqd.store import calls
from seqd.store.db import Store
from seqd.store.scripts import ScriptError
from tests.dispatchutil import Clock, email, enroll, events, raw, sequence, sms
from tests.lifecycleutil import PHONE, contact, send_due


async def test_reply_contact_refuses_a_stale_sequence_version(any_store: Store) -> None:
    s = any_store
    seq = await sequence(s, sms(), sms(wait=10))
    cid = await contact(s)
    (e,) = await enroll(s, seq, [cid])
    shard = ids.shard_of(cid, s.shards)

    def reply(version: int) -> calls.Call:
        at = [seq.id, version, letters([step.kind for step in seq.steps]), "pause"]
        return calls.reply_contact(s.keys, shard, 1, "acme", cid, "", "sms", at)

    with pytest.raises(ScriptError) as info:
        await s.runner.run(reply(99))
    assert (info.value.code, info.value.detail) == ("STALE", seq.id)
    assert (await raw(s, e.id))["st"] == "active"
    # At the mirror's version: not sent yet, so nothing happens.
    assert await s.runner.run(reply(1)) == [e.id, "not_sent"]


async def test_reply_for_another_tenant_touches_nothing(any_store: Store) -> None:
    s = any_store
    seq = await sequence(s, sms(), sms(wait=10))
    (e,) = await enroll(s, seq, [await contact(s)])
    await send_due(s, Clock())
    assert await s.lifecycle.reply("beta", "sms", enrollment_id=e.id) == []
    assert await s.lifecycle.reply("acme", "sms", enrollment_id="enr_bogus") == []
    assert await s.lifecycle.reply("acme", "sms", contact_id="con_bogus") == []
    (reaction,) = await s.lifecycle.reply("acme", "sms", enrollment_id=e.id)
    assert reaction.outcome == "paused"
    (again,) = await s.lifecycle.reply("acme", "sms", enrollment_id=e.id)
    assert again.outcome == "not_active"


async def test_stop_channel_cancels_only_single_channel_enrollments(any_store: Store) -> None:
    s = any_store
    cid = await contact(s)
    texts = await sequence(s, sms(), sms(wait=10))
    mixed = await sequence(s, sms(), email(wait=10))
    tail = await sequence(s, email(), sms(wait=10))  # after its email step: only SMS left
    a, b, c = [(await enroll(s, q, [cid]))[0] for q in (texts, mixed, tail)]
    await send_due(s, Clock())
    cancelled = await s.lifecycle.stop_channel(
        "acme", "sms", PHONE, cid, cancel_reason="opted_out", event_type="contact.opted_out",
        event={"source": "test"},
    )  # fmt: skip
    assert sorted(cancelled) == sorted([a.id, c.id])
    assert (await raw(s, b.id))["st"] == "active"
    stats = await s.sequences.stats([texts.id])
    assert (stats[texts.id].active, stats[texts.id].cancelled) == (0, 1)
    contact_hash = await s.client.hgetall(s.keys.contact(ids.shard_of(cid, s.shards), cid))
    assert f"e:{texts.id}" not in contact_hash and f"e:{mixed.id}" in contact_hash


async def test_stop_channel_without_a_contact_writes_only_the_event(any_store: Store) -> None:
    s = any_store
    cancelled = await s.lifecycle.stop_channel(
        "acme", "email", "x@example.com", None, cancel_reason="bounced",
        event_type="contact.bounced", event={"status": "5.1.1"},
    )  # fmt: skip
    assert cancelled == []
    (event,) = await events(s, s.lifecycle.shard_of_value("x@example.com"))
    assert event["type"] == "contact.bounced" and event["contact_id"] is None
    assert "cancelled" not in event


async def test_record_delivery_ranks_and_not_found(any_store: Store) -> None:
    s = any_store
    seq = await sequence(s, sms())
    (e,) = await enroll(s, seq, [await contact(s)])
    record = s.lifecycle.record_delivery
    got = await record("acme", e.id, 0, "sent", 2, "", event_type="", event={})
    assert (got.recorded, got.previous) == (True, None)
    got = await record("acme", e.id, 0, "queued", 0, "", event_type="", event={})
    assert (got.recorded, got.previous) == (False, "sent")
    got = await record(
        "acme", e.id, 0, "undelivered", 3, "30003", event_type="message.undelivered",
        event={"status": "undelivered"},
    )  # fmt: skip
    assert (got.recorded, got.previous) == (True, "sent")
    assert (await raw(s, e.id))["d0"] == "3:undelivered:30003"
    with pytest.raises(NotFound):
        await record("beta", e.id, 0, "sent", 2, "", event_type="", event={})
    with pytest.raises(NotFound):
        await record("acme", "nope", 0, "sent", 2, "", event_type="", event={})


async def test_suppress_and_emit(any_store: Store) -> None:
    s = any_store

    async def suppress(action: str, record: str, keep: str) -> Any:
        return await s.runner.run(
            calls.suppress(s.keys, "acme", "sms", action, PHONE, record, keep)
        )

    with pytest.raises(ScriptError) as info:
        await suppress("replace", "{}", "")
    assert info.value.code == "BAD_ACTION"
    record = json.dumps({"reason": "manual", "created_at": 1})
    assert await suppress("add", record, "") == [1, record]
    assert await suppress("remove", "", "manual") == [0, record]
    assert await suppress("remove", "", "") == [1, record]
    assert await suppress("remove", "", "") == [0, ""]
    await s.lifecycle.emit(
        "acme", "contact.opted_in", {"value": PHONE}, contact_id=None, value=PHONE
    )
    (event,) = await events(s)
    assert event == {"type": "contact.opted_in", "value": PHONE}


async def test_absent_contact_pauses_until_resume_at_and_the_claim_resumes_it(
    any_store: Store,
) -> None:
    s = any_store
    seq = await sequence(s, email(), email(wait=10))
    cid = await contact(s)
    (e,) = await enroll(s, seq, [cid])
    clock = Clock()
    await send_due(s, clock)
    shard = ids.shard_of(cid, s.shards)
    resume_at = clock.at + 3_600_000

    def absent(version: int, action: str) -> calls.Call:
        at = [seq.id, version, letters([step.kind for step in seq.steps]), action, resume_at]
        return calls.absent_contact(s.keys, shard, clock.at, "acme", cid, "", "email", at)

    with pytest.raises(ScriptError) as info:
        await s.runner.run(absent(99, "pause_until_return"))
    assert (info.value.code, info.value.detail) == ("STALE", seq.id)
    assert await s.runner.run(absent(1, "ignore")) == [e.id, "ignored"]
    assert await s.runner.run(absent(1, "pause_until_return")) == [e.id, "paused"]
    h = await raw(s, e.id)
    assert (h["st"], h["pr"], h["ra"]) == ("paused", "out_of_office", str(resume_at))
    assert await s.runner.run(absent(1, "pause_until_return")) == [e.id, "not_active"]
    # Due at resume_at in its queue: a claim before leaves it, one from then resumes it.
    clock.at = resume_at - 1
    await send_due(s, clock)
    assert (await raw(s, e.id))["st"] == "paused"
    clock.at = resume_at
    await send_due(s, clock)
    h = await raw(s, e.id)
    assert (h["st"], h.get("pr"), h.get("ra")) == ("active", None, None)
    (resumed,) = [x for x in await events(s) if x["type"] == "sequence.enrollment.resumed"]
    assert resumed["reason"] == "out_of_office_ended"
