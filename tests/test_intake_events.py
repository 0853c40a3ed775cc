"""Contact events on the Redis intake stream (`type contact_event`): recorded as POST
/contacts/{id}/events records them, goals included, once per event id and request_id."""

from __future__ import annotations

import json

import redis

from seqd import models
from seqd.intake import Intake
from seqd.store.db import Store
from seqd.store.event_types import shape
from tests.dispatchutil import enroll, events
from tests.test_intake import _contacts, _drain, _rejected, _sequence, consumer, tenant, writer

__all__ = ["consumer", "tenant", "writer"]  # the fixtures, used by name

GOAL = models.SequenceCreate(
    name="Trial",
    status="active",
    steps=[models.StepIn(kind="sms", wait_minutes=60, body="Hi")],
    exit_on=[{"event": "deal_stage", "where": {"properties.stage": "won"}}],  # type: ignore[list-item]
)


def _event(tenant: str, cid: str, **fields: str) -> dict[str, str]:
    return {"type": "contact_event", "tenant": tenant, "contact_id": cid, **fields}


async def test_an_event_entry_meets_a_goal(
    store: Store, tenant: str, writer: redis.Redis, consumer: Intake
) -> None:
    seq = await _sequence(store, tenant, GOAL)
    [cid] = await _contacts(store, tenant, 1)
    enrollment_id = (await enroll(store, await store.sequences.get(tenant, seq), [cid]))[0].id
    won = _event(
        tenant, cid, name="deal_stage", properties=json.dumps({"stage": "won"}),
        event_id="crm-7", occurred_at="2026-12-01T09:00:00Z", request_id="r-7",
    )  # fmt: skip
    writer.xadd(store.keys.intake(), won)
    writer.xadd(store.keys.intake(), {**won, "request_id": "r-8"})  # the same event again
    await _drain(consumer)
    got = await store.enrollments.get(tenant, enrollment_id)
    assert (got.status, got.completed_reason, got.goal) == ("completed", "goal", "deal_stage")
    first = json.loads(writer.get(store.keys.intake_result(tenant, "r-7")))
    assert first["status"] == "recorded" and first["event_id"] == "crm-7"
    assert first["completed"] == [enrollment_id] and first["idempotent"] is False
    second = json.loads(writer.get(store.keys.intake_result(tenant, "r-8")))
    assert second["idempotent"] is True and second["completed"] == [enrollment_id]
    (recorded,) = [e for e in await events(store) if e["type"] == "contact.event_recorded"]
    # As webhooks and GET /events show it:
    data = shape("contact.event_recorded", {k: v for k, v in recorded.items() if k != "type"})
    assert data["occurred_at"] == "2026-12-01T09:00:00.000Z" and data["id"] == "crm-7"
    assert writer.xlen(store.keys.intake()) == 0


async def test_bad_event_entries_are_rejected_with_a_reason(
    store: Store, tenant: str, writer: redis.Redis, consumer: Intake
) -> None:
    [cid] = await _contacts(store, tenant, 1)
    cases = [
        (_event(tenant, cid), "invalid", "name"),
        (_event(tenant, "", name="x"), "invalid", "contact_id"),
        (_event(tenant, cid, name="has space"), "invalid", "name"),
        (_event(tenant, cid, name="x", properties="[1]"), "invalid", "properties"),
        (_event(tenant, cid, name="x", properties="{no"), "invalid", "properties"),
        (_event(tenant, cid, name="x", occurred_at="soon"), "invalid", "occurred_at"),
        (_event(tenant, cid, name="x", event_id="e" * 65), "invalid", "event_id"),
        (_event(tenant, cid, name="x", sequence_id="seq_1"), "invalid", "sequence_id"),
        ({**_event(tenant, cid, name="x"), "type": "poke"}, "invalid", "type"),
        (_event(tenant, "con_0000000000000000000000", name="x"), "contact_not_found", "contact_id"),
    ]
    for fields, _, _ in cases:
        writer.xadd(store.keys.intake(), fields)
    writer.xadd(store.keys.intake(), _event(tenant, cid, name="page_viewed"))
    await _drain(consumer)
    rejected = _rejected(writer, store)
    assert [(r["reason"], r.get("field")) for r in rejected] == [(r, f) for _, r, f in cases]
    recorded = [e for e in await events(store) if e["type"] == "contact.event_recorded"]
    assert [e["name"] for e in recorded] == ["page_viewed"]
