"""The event log script and the outbox reader, on a real valkey-server and on fakeredis."""

from __future__ import annotations

import asyncio

import pytest

from seqd import models
from seqd.events.reader import Reader
from seqd.store import calls
from seqd.store import events as events_mod
from seqd.store.db import Store
from seqd.store.enrollments import EnrollItem
from seqd.store.events import RECORD_BATCH, EventFilter, LogItem
from seqd.store.outbox import GROUP
from seqd.store.scripts import ScriptError
from tests.conftest import ScriptCalls
from tests.dispatchutil import contacts_in_shard
from tests.webhookutil import TENANT, Clock, emit, endpoint, settings

NOW = 1_800_000_000_000
DAY = 86_400_000
SEQ = models.SequenceCreate(
    name="s", status="active", steps=[models.StepIn(kind="sms", body="a", wait_minutes=5)]
)


def _eid(n: int) -> str:
    return f"evt_{n:022d}"


def _item(n: int, etype: str = "contact.opted_in", **kw: str) -> LogItem:
    """A payload of one event, number `n`."""
    tenant, eid, cid = (
        kw.get("tenant", TENANT),
        kw.get("enrollment_id", ""),
        kw.get("contact_id", ""),
    )
    return LogItem(
        tenant=tenant,
        type=etype,
        created_at=NOW,
        payload=f'{{"id":"{_eid(n)}","type":"{etype}","created_at":"x","data":{{}}}}'.encode(),
        events=[(_eid(n), eid, cid)],
    )


async def test_record_event_appends_once_with_retention(any_store: Store) -> None:
    s = any_store
    now = await _server_now(s)
    assert await s.events.record([_item(1), _item(2)], now=now, retention_ms=DAY) == 2
    assert await s.events.record([_item(1)], now=now, retention_ms=DAY) == 0
    rows = await s.client.xrange(s.keys.events(TENANT))
    assert [r[1]["v"] for r in rows] == [_eid(1), _eid(2)]
    assert "e" not in rows[0][1] and rows[0][1]["y"] == "contact.opted_in"
    ttl = await s.client.pttl(s.keys.event(TENANT, _eid(1)))
    assert 0 < ttl <= DAY


async def test_record_event_trims_by_age(any_store: Store) -> None:
    s = any_store
    log = s.keys.events(TENANT)
    now = await _server_now(s)
    await s.tenants.ensure(TENANT)
    # Old entries (ids from two days ago) are cut when a new one comes in; approximate
    # trimming frees whole stream nodes, so the exact trim is checked via Events.trim.
    for i in range(3):
        await s.client.xadd(log, {"v": f"old{i}"}, id=f"{now - 2 * DAY}-{i + 1}")
    await s.events.record([_item(7)], now=now, retention_ms=DAY)
    await s.events.trim(now=now, retention_ms=DAY)
    assert [r[1]["v"] for r in await s.client.xrange(log)] == [_eid(7)]


async def _logged(s: Store, tenant: str) -> list[str]:
    return [r[1]["v"] for r in await s.client.xrange(s.keys.events(tenant))]


async def test_record_batches_per_tenant_and_appends_each_event_once(
    any_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = any_store
    now = await _server_now(s)
    calls = ScriptCalls(s, monkeypatch).calls
    a, b, c = TENANT, "other", "third"
    first = [
        _item(1, tenant=a, contact_id="con_1"),
        _item(2, tenant=b, enrollment_id="enr_2"),
        _item(3, tenant=a),
        _item(1, tenant=a, contact_id="con_1"),  # twice in one call
        _item(4, tenant=c, etype="contact.bounced"),
        _item(3, tenant=a),
        _item(5, tenant=b),
    ]
    assert await s.events.record(first, now=now, retention_ms=DAY) == 5
    # One script call per tenant, each on its tenant's slot only.
    assert [(name, tag) for name, _, tag in calls] == [
        ("recordEvents", s.keys.tenant_tag(t)) for t in (a, b, c)
    ]
    assert [keys for _, keys, _ in calls] == [[s.keys.events(t)] for t in (a, b, c)]
    ids = {n: _eid(n) for n in range(1, 8)}
    assert await _logged(s, a) == [ids[1], ids[3]]
    assert await _logged(s, b) == [ids[2], ids[5]]
    assert await _logged(s, c) == [ids[4]]
    [(_, one), (_, three)] = await s.client.xrange(s.keys.events(a))
    assert one == {"v": ids[1], "y": "contact.opted_in", "at": str(NOW), "c": "con_1"}
    assert three == {"v": ids[3], "y": "contact.opted_in", "at": str(NOW)}
    [(_, two), _] = await s.client.xrange(s.keys.events(b))
    assert two["e"] == "enr_2" and "c" not in two
    for t, n in [(a, 1), (a, 3), (b, 2), (b, 5), (c, 4)]:
        key = s.keys.event(t, ids[n])
        [payload] = {it.payload for it in first if it.events[0][0] == ids[n] and it.tenant == t}
        assert await s.client.get(key) == payload.decode()
        assert 0 < await s.client.pttl(key) <= DAY
    # The same event id under another tenant is that tenant's own event.
    assert not await s.client.exists(s.keys.event(b, ids[1]))

    # Across calls: what is logged already appends nothing, new ones do.
    again = [_item(3, tenant=a), _item(2, tenant=b), _item(6, tenant=a), _item(4, tenant=c)]
    assert await s.events.record(again, now=now, retention_ms=DAY) == 1
    assert await s.events.record(again, now=now, retention_ms=DAY) == 0
    assert await _logged(s, a) == [ids[1], ids[3], ids[6]]
    assert await _logged(s, b) == [ids[2], ids[5]]
    assert await _logged(s, c) == [ids[4]]


async def test_record_splits_a_large_group_and_keeps_its_order(
    any_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = any_store
    now = await _server_now(s)
    calls = ScriptCalls(s, monkeypatch).calls
    n = 2 * RECORD_BATCH + 1
    items = [_item(i) for i in range(n)] + [_item(0, tenant="other")]
    # Duplicates of events in the first chunk, landing in the last one.
    items[-2] = _item(5)
    assert await s.events.record(items, now=now, retention_ms=DAY) == n
    assert [(name, tag) for name, _, tag in calls] == [
        ("recordEvents", s.keys.tenant_tag(TENANT)),
        ("recordEvents", s.keys.tenant_tag(TENANT)),
        ("recordEvents", s.keys.tenant_tag(TENANT)),
        ("recordEvents", s.keys.tenant_tag("other")),
    ]
    assert await _logged(s, TENANT) == [_eid(i) for i in range(n - 1)]
    assert await _logged(s, "other") == [_eid(0)]


async def test_record_batch_size_bounds_each_call(
    any_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = any_store
    now = await _server_now(s)
    monkeypatch.setattr(events_mod, "RECORD_BATCH", 2)
    calls = ScriptCalls(s, monkeypatch).calls
    items = [_item(1), _item(2), _item(1), _item(3), _item(2)]
    assert await s.events.record(items, now=now, retention_ms=DAY) == 3
    assert len(calls) == 3
    assert await _logged(s, TENANT) == [_eid(n) for n in (1, 2, 3)]


async def test_record_logs_a_batch_under_one_payload_once(
    any_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batched entry's events: one payload key (its first event's id) for all, one log
    entry each in order, all or nothing; a batch counts its events toward RECORD_BATCH but
    is never split."""
    s = any_store
    now = await _server_now(s)
    monkeypatch.setattr(events_mod, "RECORD_BATCH", 2)
    spied = ScriptCalls(s, monkeypatch).calls
    batch = LogItem(
        tenant=TENANT,
        type="sequence.step.sent",
        created_at=NOW,
        payload=b'{"batch":1}',
        events=[(_eid(n), f"enr_{n}", f"con_{n}") for n in (10, 11, 12)],
    )
    items = [_item(1), batch, _item(2), batch]
    assert await s.events.record(items, now=now, retention_ms=DAY) == 5
    assert len(spied) == 4  # [1], [batch], [2], [batch again]
    assert await _logged(s, TENANT) == [_eid(n) for n in (1, 10, 11, 12, 2)]
    rows = await s.client.xrange(s.keys.events(TENANT))
    assert rows[2][1] == {
        "v": _eid(11),
        "y": "sequence.step.sent",
        "at": str(NOW),
        "e": "enr_11",
        "c": "con_11",
    }
    assert await s.client.get(s.keys.event(TENANT, _eid(10))) == '{"batch":1}'
    assert not await s.client.exists(s.keys.event(TENANT, _eid(11)))
    assert await s.events.record([batch], now=now, retention_ms=DAY) == 0
    with pytest.raises(ScriptError, match="BAD_ITEMS"):
        await s.runner.run(
            calls.record_events(s.keys, TENANT, DAY, "0-0", ["t", NOW, b"{}", 2, _eid(20), "", ""])
        )
    assert len(await _logged(s, TENANT)) == 5


async def test_record_trims_the_log_once_per_call(any_store: Store) -> None:
    s = any_store
    log = s.keys.events(TENANT)
    now = await _server_now(s)
    # Past retention: enough entries to fill whole stream nodes (100 entries each by
    # default), which approximate trimming frees without Events.trim.
    pipe = s.client.pipeline(transaction=False)
    for i in range(250):
        pipe.xadd(log, {"v": f"old{i}"}, id=f"{now - 2 * DAY}-{i + 1}")
    await pipe.execute()
    new = [_item(i) for i in range(10)]
    assert await s.events.record(new, now=now, retention_ms=DAY) == 10
    logged = await _logged(s, TENANT)
    assert logged[-10:] == [it.events[0][0] for it in new]
    assert len(logged) - 10 < 100, "the full nodes of old entries are gone"


async def test_record_calls_xtrim_once_per_script_call(store: Store) -> None:
    s = store
    now = await _server_now(s)

    async def xtrims() -> int:
        stats = await s.client.info("commandstats")
        return int(stats.get("cmdstat_xtrim", {}).get("calls", 0))

    before = await xtrims()
    items = [_item(i, tenant=t) for t in (TENANT, "other") for i in range(20)]
    assert await s.events.record(items, now=now, retention_ms=DAY) == 40
    assert await xtrims() - before == 2


async def _server_now(s: Store) -> int:
    sec, usec = await s.client.time()
    return int(sec) * 1000 + int(usec) // 1000


async def test_reader_logs_schedules_and_acknowledges(any_store: Store) -> None:
    s = any_store
    clock = Clock()
    ep, _ = await endpoint(s, "http://127.0.0.1:9/x", ["contact.opted_in"])
    await endpoint(s, "http://127.0.0.1:9/y", ["contact.bounced"])
    reader = Reader(s, settings(), clock=clock)
    for shard in range(s.shards):
        await emit(s, "contact.opted_in", {"contact_id": f"con_{shard}"}, shard=shard)
    await emit(s, "contact.opted_in", tenant="other")
    assert await reader.run_once() == s.shards + 1
    assert await s.outbox.backlog() == 0
    events, _, total = await s.events.list(
        TENANT, limit=50, after=None, flt=EventFilter(), now=clock.now, retention_ms=DAY
    )
    assert total == s.shards and len(events) == s.shards
    # One delivery per event, to the subscribed endpoint only, due now.
    heads = [h for h in await s.deliveries.heads() if h is not None]
    assert len(heads) == s.shards and set(heads) == {clock.now}
    for shard in range(s.shards):
        assert await s.client.zcard(s.keys.delivery_queue(shard, ep.id)) == 1
    assert await reader.run_once() == 0


async def test_reader_handles_entries_of_many_events(any_store: Store) -> None:
    """`enroll` writes entries of up to 200 `created` events: each event is logged once
    under its own id and gets its own delivery; each entry is acknowledged with them; a
    read asks for about `batch_size` events; a stale reader's second pass writes nothing."""
    s = any_store
    clock = Clock()
    ep, _ = await endpoint(s, "http://127.0.0.1:9/x", ["sequence.enrollment.created"])
    seq = await s.sequences.create(TENANT, SEQ)
    cids = await contacts_in_shard(s, 450)
    enrolled = await s.enrollments.enroll(TENANT, seq, [EnrollItem(c, {}) for c in cids])
    await s.outbox.ensure_group()
    entries = await s.outbox.read("stale", 10)
    assert len(entries) == 3

    config = settings(batch_size=100, lease_seconds=0.3, timeout_seconds=0.1)
    reader = Reader(s, config, clock=clock)
    await asyncio.sleep(0.35)  # the stale reader's lease runs out: its entries are reclaimed
    handled = [await reader.run_once()]
    while reader.more:
        handled.append(await reader.run_once())
    # At first 2 entries (100 // 50, the guess); then 1 (100 // 200, what they held).
    assert handled == [400, 50, 0]
    assert await s.outbox.backlog() == 0
    logged, _, total = await s.events.list(
        TENANT, limit=1000, after=None, flt=EventFilter(), now=clock.now, retention_ms=DAY
    )
    assert total == 450 and len({e.id for e in logged}) == 450
    assert sorted(e.data["id"] for e in logged) == sorted(r.id or "" for r in enrolled)
    assert await s.client.zcard(s.keys.delivery_queue(0, ep.id)) == 450

    # The reader that read them first wakes up and handles its stale read: no-op.
    await reader.handle(entries, clock.now)
    assert await s.client.xlen(s.keys.events(TENANT)) == 450
    assert await s.client.zcard(s.keys.delivery_queue(0, ep.id)) == 450


async def test_an_entry_left_by_a_dead_reader_is_handled_once(store: Store) -> None:
    s = store
    clock = Clock()
    config = settings(lease_seconds=0.3, timeout_seconds=0.1)
    await endpoint(s, "http://127.0.0.1:9/x")
    dead = Reader(s, config, consumer="dead", clock=clock)
    alive = Reader(s, config, consumer="alive", clock=clock)
    await s.outbox.ensure_group()
    await emit(s)
    # The dead reader took the entry and wrote the log, then died before fanning out.
    entries = await s.outbox.read("dead", 10)
    assert len(entries) == 1
    from seqd.events import envelope

    [converted] = envelope.convert(entries[0], s.shards)
    await s.events.record(
        [
            LogItem(
                tenant=TENANT,
                type=converted.type,
                created_at=converted.created,
                payload=converted.logged(),
                events=[(converted.id, "", converted.contact_id)],
            )
        ],
        now=clock.now,
        retention_ms=DAY,
    )
    assert await alive.run_once() == 0, "not before the lease ends"
    await asyncio.sleep(0.35)
    clock.advance(1)
    assert await alive.run_once() == 1
    # The dead reader wakes up and finishes its stale batch: nothing more is written.
    await dead.handle(entries, clock.now)
    assert await s.client.xlen(s.keys.events(TENANT)) == 1
    queues = [await s.client.zcard(s.keys.delivery_due(sh)) for sh in range(s.shards)]
    assert sum(queues) == 1
    [shard] = [sh for sh, n in enumerate(queues) if n]
    [ep] = await s.client.zrange(s.keys.delivery_due(shard), 0, -1)
    assert await s.client.zcard(s.keys.delivery_queue(shard, ep)) == 1
    assert (await s.client.xpending(s.keys.outbox(0), GROUP))["pending"] == 0


async def test_unroutable_entries_are_acknowledged_and_dropped(any_store: Store) -> None:
    s = any_store
    await s.client.xadd(s.keys.outbox(1), {"type": "x"})
    await s.client.xadd(s.keys.outbox(1), {"type": "x", "tenant": TENANT, "data": "not json"})
    reader = Reader(s, settings(), clock=Clock())
    assert await reader.run_once() == 2
    assert await s.outbox.backlog() == 0
    assert await s.client.xlen(s.keys.events(TENANT)) == 1


async def test_reader_recreates_a_vanished_group(any_store: Store) -> None:
    s = any_store
    reader = Reader(s, settings(), clock=Clock())
    await reader.run_once()
    await s.client.delete(s.keys.outbox(2))
    await emit(s, shard=2)  # XADD recreates the stream, without the group
    assert await reader.run_once() == 0, "NOGROUP: the group is recreated for next time"
    assert await reader.run_once() == 1, "from the stream's start: nothing is skipped"
