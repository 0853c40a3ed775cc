"""The Redis intake stream end to end: writers XADD with plain redis-py, seqd enrolls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestServer

from seqd import intake, models, service
from seqd.api.app import create_app
from seqd.appkeys import LIVENESS
from seqd.config import Config, IntakeConfig, cluster_seeds, is_cluster_url
from seqd.intake import Intake
from seqd.store.db import Store
from tests.dispatchutil import events

SMS_ONLY = models.SequenceCreate(
    name="Nurture",
    status="active",
    steps=[models.StepIn(kind="sms", wait_minutes=60, body="Hi {{first_name|there}}")],
)


def _config(**intake_settings: Any) -> Config:
    settings = {"block_ms": 50, "lease_seconds": 0.2, **intake_settings}
    return Config(intake=IntakeConfig(**settings))


@pytest.fixture
def writer(store_url: str) -> redis.Redis:
    """Another service: plain redis-py (its cluster client on a cluster), bytes in and out,
    knows nothing of seqd's code."""
    if is_cluster_url(store_url):
        host, port = cluster_seeds(store_url)[1][0]
        client = redis.RedisCluster(host, port)
    else:
        client = redis.Redis.from_url(store_url)
    yield client
    client.close()


@pytest.fixture
async def tenant(store: Store) -> str:
    await store.tenants.create_key("acme")
    return "acme"


async def _sequence(store: Store, tenant: str, body: models.SequenceCreate = SMS_ONLY) -> str:
    return (await store.sequences.create(tenant, body)).id


async def _contacts(store: Store, tenant: str, n: int) -> list[str]:
    return [
        (await store.contacts.create(tenant, {"phone": f"+1415555{i:04d}"})).id for i in range(n)
    ]


def _entry(tenant: str, seq: str, **fields: Any) -> dict[str, str]:
    out = {"tenant": tenant, "sequence_id": seq}
    for name, value in fields.items():
        out[name] = value if isinstance(value, str | bytes) else json.dumps(value)
    return out


async def _drain(consumer: Intake, rounds: int = 50) -> None:
    for _ in range(rounds):
        await consumer.run_once(block_ms=0)
        if await consumer.backlog() == 0:
            return
    raise AssertionError("the intake stream was not drained")


async def _eventually(check: Any, within: float = 5.0) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def _rejected(writer: redis.Redis, store: Store) -> list[dict[str, str]]:
    rows = writer.xrange(store.keys.intake_rejected())
    return [{k.decode(): v.decode(errors="replace") for k, v in f.items()} for _, f in rows]


async def _created_events(store: Store) -> list[dict[str, Any]]:
    return [e for e in await events(store) if e["type"] == "sequence.enrollment.created"]


@pytest.fixture
async def consumer(store: Store) -> AsyncIterator[Intake]:
    c = Intake(_config(), store, consumer="test-1")
    await c.stream.ensure_group()
    yield c
    await c.stream.close()


async def test_writer_xadd_is_enrolled_by_the_running_server(
    store: Store, tenant: str, writer: redis.Redis
) -> None:
    seq = await _sequence(store, tenant)
    contacts = await _contacts(store, tenant, 20)
    config = _config()
    app = create_app(config, store)
    app.cleanup_ctx.append(service.background(intake.part, config))
    async with TestServer(app):
        pipe = writer.pipeline(transaction=False)
        for cid in contacts:
            pipe.xadd(
                store.keys.intake(),
                _entry(tenant, seq, contact_id=cid, metadata={"source": "call"}),
            )
        pipe.execute()

        async def all_enrolled() -> bool:
            stats = (await store.sequences.stats([seq]))[seq]
            return stats.active == 20

        await _eventually(all_enrolled)
        await _eventually(lambda: _zero(store))
    events = await _created_events(store)
    assert sorted(e["fields"]["c"] for e in events) == sorted(contacts)
    assert {json.loads(e["fields"]["md"])["source"] for e in events} == {"call"}
    assert writer.xlen(store.keys.intake()) == 0  # acknowledged and deleted
    assert _rejected(writer, store) == []


async def test_a_process_runs_its_configured_consumers_and_leaves_the_group_on_stop(
    store: Store, tenant: str, writer: redis.Redis
) -> None:
    seq = await _sequence(store, tenant)
    contacts = await _contacts(store, tenant, 30)
    config = _config(consumers=3, batch_size=4)
    app = create_app(config, store)
    app.cleanup_ctx.append(service.background(intake.part, config))
    async with TestServer(app):
        assert [n for n in app[LIVENESS].running() if n.startswith("intake")] == [
            "intake-1",
            "intake-2",
            "intake-3",
        ]
        for cid in contacts:
            writer.xadd(store.keys.intake(), _entry(tenant, seq, contact_id=cid))

        async def all_enrolled() -> bool:
            return (await store.sequences.stats([seq]))[seq].active == 30

        await _eventually(all_enrolled)
        members = writer.xinfo_consumers(store.keys.intake(), config.intake.group)
        names = sorted(m["name"].decode() for m in members)
        # Three members of the group, one process's: the same name but for the number.
        assert len(names) == 3 and len({n.rpartition("-")[0] for n in names}) == 1
    assert len(await _created_events(store)) == 30  # each entry enrolled once
    assert writer.xinfo_consumers(store.keys.intake(), config.intake.group) == []
    assert not [n for n in app[LIVENESS].running() if n.startswith("intake")]


async def _zero(store: Store) -> bool:
    return int(await store.client.xlen(store.keys.intake())) == 0


async def test_inline_contact_is_upserted_by_external_id_then_phone_then_email(
    store: Store, tenant: str, writer: redis.Redis, consumer: Intake
) -> None:
    seq = await _sequence(store, tenant)
    existing = await store.contacts.create(tenant, {"email": "old@example.com"})
    key = store.keys.intake()
    writer.xadd(key, _entry(tenant, seq, contact={"external_id": "crm-7", "phone": "+14155550100"}))
    writer.xadd(
        key,
        _entry(
            tenant,
            seq,
            contact={
                "external_id": "crm-7",
                "phone": "+14155550100",
                "first_name": "Ada",
                "attributes": {"plan": "pro"},
            },
        ),
    )
    writer.xadd(key, _entry(tenant, seq, contact={"phone": "+1 415 555 0100"}))
    writer.xadd(key, _entry(tenant, seq, contact={"email": "old@EXAMPLE.com", "last_name": "X"}))
    await _drain(consumer)

    cid = await store.contacts.find(tenant, "external_id", "crm-7")
    assert cid is not None
    contact = await store.contacts.get(tenant, cid)
    assert contact.first_name == "Ada" and contact.attributes == {"plan": "pro"}
    assert await store.contacts.find(tenant, "phone", "+14155550100") == cid
    updated = await store.contacts.get(tenant, existing.id)
    assert updated.last_name == "X"  # matched by email (normalised), not duplicated
    stats = (await store.sequences.stats([seq]))[seq]
    assert stats.active == 2  # one enrollment per contact; the repeats were idempotent
    assert len(await _created_events(store)) == 2
    assert _rejected(writer, store) == []


async def test_request_id_makes_a_retried_entry_a_no_op(
    store: Store, tenant: str, writer: redis.Redis, consumer: Intake
) -> None:
    seq = await _sequence(store, tenant)
    [cid] = await _contacts(store, tenant, 1)
    entry = _entry(tenant, seq, contact_id=cid, request_id="lead-42")
    writer.xadd(store.keys.intake(), entry)
    writer.xadd(store.keys.intake(), entry)  # a retry in the same batch
    await _drain(consumer)
    result_key = store.keys.intake_result(tenant, "lead-42")
    result = json.loads(writer.get(result_key))
    assert result["status"] == "enrolled" and result["contact_id"] == cid
    assert result["idempotent"] is False
    assert 0 < writer.ttl(result_key) <= 86_400

    # The contact's enrollment is cancelled; a late retry must not enroll it again.
    await store.enrollments.transition(tenant, result["enrollment_id"], "cancel", "manual")
    writer.xadd(store.keys.intake(), entry)
    await _drain(consumer)
    assert json.loads(writer.get(result_key)) == result
    stats = (await store.sequences.stats([seq]))[seq]
    assert (stats.active, stats.cancelled) == (0, 1)
    assert len(await _created_events(store)) == 1


async def test_entries_that_cannot_be_enrolled_land_in_rejected_with_a_reason(
    store: Store, tenant: str, writer: redis.Redis, consumer: Intake
) -> None:
    seq = await _sequence(store, tenant)
    paused = await _sequence(store, tenant)
    await store.sequences.change(tenant, paused, status=models.SequenceStatus.PAUSED)
    [cid, blocked] = await _contacts(store, tenant, 2)
    blocked_phone = (await store.contacts.get(tenant, blocked)).phone
    await store.client.hset(store.keys.suppressions(tenant, "sms"), blocked_phone, "{}")
    key = store.keys.intake()
    cases = [
        ({"sequence_id": seq, "contact_id": cid}, "invalid", "tenant"),
        (_entry("nobody", seq, contact_id=cid), "unknown_tenant", "tenant"),
        (_entry("Bad Tenant!", seq, contact_id=cid), "unknown_tenant", "tenant"),
        (_entry(tenant, "seq_nope", contact_id=cid), "unknown_sequence", "sequence_id"),
        (_entry(tenant, paused, contact_id=cid), "sequence_not_active", "sequence_id"),
        (_entry(tenant, seq), "invalid", "contact_id"),
        (
            _entry(tenant, seq, contact_id=cid, contact={"phone": "+14155550199"}),
            "invalid",
            "contact_id",
        ),
        (_entry(tenant, seq, contact={"phone": "12"}), "invalid", "contact.phone"),
        (_entry(tenant, seq, contact={"phone": 5}), "invalid", "contact.phone"),
        (_entry(tenant, seq, contact="{not json"), "invalid", "contact"),
        (_entry(tenant, seq, contact={}), "invalid", "contact.phone"),
        (
            _entry(tenant, seq, contact_id="con_0000000000000000000000"),
            "contact_not_found",
            "contact_id",
        ),
        (_entry(tenant, seq, contact_id=cid, metadata="[1, 2]"), "invalid", "metadata"),
        (_entry(tenant, seq, contact_id=cid, colour="blue"), "invalid", "colour"),
        (_entry(tenant, seq, contact_id=b"\xff\xfe"), "invalid", "contact_id"),
        (
            _entry(tenant, seq, contact_id=blocked, request_id="r-blocked"),
            "suppressed",
            "contact_id",
        ),
    ]
    for fields, _, _ in cases:
        writer.xadd(key, fields)
    writer.xadd(key, _entry(tenant, seq, contact_id=cid))  # the one good entry
    await _drain(consumer)

    rejected = _rejected(writer, store)
    assert [(r["reason"], r.get("field")) for r in rejected] == [
        (reason, field) for _, reason, field in cases
    ]
    for r, (fields, _, _) in zip(rejected, cases, strict=True):
        assert r["detail"] and r["intake_id"]
        for name, value in fields.items():  # the original entry, byte for byte
            assert r[name] == (
                value.decode(errors="replace") if isinstance(value, bytes) else value
            )
    raw = writer.xrange(store.keys.intake_rejected())
    assert raw[14][1][b"contact_id"] == b"\xff\xfe"
    outcome = json.loads(writer.get(store.keys.intake_result(tenant, "r-blocked")))
    assert outcome["status"] == "rejected" and outcome["reason"] == "suppressed"
    stats = (await store.sequences.stats([seq]))[seq]
    assert stats.active == 1
    assert writer.xlen(key) == 0
    assert writer.xpending(key, "seqd")["pending"] == 0


async def test_entries_of_a_consumer_that_died_mid_batch_are_enrolled_exactly_once(
    store: Store, tenant: str, writer: redis.Redis
) -> None:
    seq = await _sequence(store, tenant)
    contacts = await _contacts(store, tenant, 30)
    for i, cid in enumerate(contacts):
        fields = _entry(tenant, seq, contact_id=cid)
        if i % 3 == 0:
            fields = _entry(tenant, seq, contact={"phone": f"+1415666{i:04d}"})
        writer.xadd(store.keys.intake(), fields)

    # Consumer A reads the batch and enrolls it, then dies before acknowledging anything.
    dying = Intake(_config(), store, consumer="dies")
    await dying.stream.ensure_group()

    async def crash(*args: object, **kwargs: object) -> None:
        raise ConnectionError("process killed")

    dying.stream.finish = crash  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await dying.run_once(block_ms=0)
    await dying.stream.close()
    assert writer.xpending(store.keys.intake(), "seqd")["pending"] == 30
    assert (await store.sequences.stats([seq]))[seq].active == 30

    # Consumer B reads nothing new, and takes the batch over once the lease has passed.
    survivor = Intake(_config(), store, consumer="survives")
    assert await survivor.run_once(block_ms=0) == 0
    await asyncio.sleep(0.25)
    survivor._next_reclaim = 0.0
    assert await survivor.run_once(block_ms=0) == 30
    await survivor.stream.close()

    assert writer.xlen(store.keys.intake()) == 0
    assert writer.xpending(store.keys.intake(), "seqd")["pending"] == 0
    stats = (await store.sequences.stats([seq]))[seq]
    assert stats.active == 30
    events = await _created_events(store)
    assert len(events) == 30 and len({e["fields"]["c"] for e in events}) == 30
    assert _rejected(writer, store) == []


async def test_an_entry_that_keeps_failing_is_rejected_after_max_deliveries(
    store: Store, tenant: str, writer: redis.Redis
) -> None:
    seq = await _sequence(store, tenant)
    [cid] = await _contacts(store, tenant, 1)
    writer.xadd(store.keys.intake(), _entry(tenant, seq, contact_id=cid))
    c = Intake(_config(max_deliveries=2), store, consumer="c")
    await c.stream.ensure_group()
    real_finish = c.stream.finish

    async def crash(*args: object, **kwargs: object) -> None:
        raise ConnectionError("down")

    c.stream.finish = crash  # type: ignore[method-assign]
    for _ in range(2):
        with pytest.raises(ConnectionError):
            c._next_reclaim = 0.0
            await c.run_once(block_ms=0)
        await asyncio.sleep(0.25)
    c.stream.finish = real_finish  # type: ignore[method-assign]
    c._next_reclaim = 0.0
    assert await c.run_once(block_ms=0) == 1
    await c.stream.close()
    [rejected] = _rejected(writer, store)
    assert rejected["reason"] == "failed" and rejected["contact_id"] == cid


async def test_stop_leaves_no_consumer_behind(store: Store, tenant: str) -> None:
    c = Intake(_config(), store)
    await c.start()

    async def reading() -> bool:  # its first XREADGROUP made it a consumer of the group
        consumers = await store.client.xinfo_consumers(store.keys.intake(), "seqd")
        return [x["name"] for x in consumers] == [c.consumer]

    await _eventually(reading)
    await c.stop()
    consumers = await store.client.xinfo_consumers(store.keys.intake(), "seqd")
    assert consumers == []


async def test_stop_cuts_the_pause_after_a_failed_batch_short(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis away: a failed batch is followed by a back-off pause, which stop() wakes
    instead of waiting out (the intake used to sleep through it)."""
    monkeypatch.setattr(intake, "RETRY_SECONDS", 30.0)
    c = Intake(_config(), store, consumer="c")
    failed = asyncio.Event()

    async def away(*args: object, **kwargs: object) -> list[Any]:
        failed.set()
        raise ConnectionError("down")

    c.stream.read = away  # type: ignore[method-assign]
    await c.start()
    await failed.wait()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await c.stop()
    assert loop.time() - started < 10, "stop waited out the 30 s pause"
