"""The webhook Lua scripts called directly, on a real valkey-server and on fakeredis."""

from __future__ import annotations

from typing import Any

import pytest

from seqd import event_ids, ids
from seqd.store import calls, outbox
from seqd.store.db import Store
from seqd.store.outbox import GROUP, Fanout, ScheduledDelivery
from seqd.store.scripts import ScriptError
from tests.conftest import ScriptCalls

TENANT = "acme"
NOW = 1_800_000_000_000


async def _done(s: Store, *args: Any, **kw: Any) -> bool:
    recorded, _ = await s.deliveries.finish(*args, **kw)
    return recorded


async def _schedule(
    s: Store, endpoint: str, n: int, *, due: int = NOW, shard: int = 0
) -> list[str]:
    """`n` outbox entries on `shard`, read by the group and fanned out to `endpoint`."""
    await s.outbox.ensure_group()
    out = []
    for _ in range(n):
        await s.client.xadd(s.keys.outbox(shard), {"type": "t", "tenant": TENANT, "at": NOW})
    for entry in await s.outbox.read("c1", n):
        evt = event_ids.event_id(shard, entry.id, s.shards)
        did = event_ids.delivery_id(evt, endpoint, s.shards)
        delivery = ScheduledDelivery(did, endpoint, evt, "t", b'{"x":1}')
        item = Fanout(entry.id, TENANT, due + len(out), [delivery])
        await s.outbox.fanout({shard: [item]}, NOW)
        out.append(did)
    return out


async def test_fanout_acks_deletes_and_writes_each_delivery_once(any_store: Store) -> None:
    s = any_store
    await s.outbox.ensure_group()
    key = s.keys.outbox(0)
    await s.client.xadd(key, {"type": "t", "tenant": TENANT, "at": NOW})
    [entry] = await s.outbox.read("c1", 10)
    evt = event_ids.event_id(0, entry.id, s.shards)
    deliveries = [
        ScheduledDelivery(event_ids.delivery_id(evt, ep, s.shards), ep, evt, "t", b"{}")
        for ep in ("whe_a", "whe_b")
    ]
    item = Fanout(entry.id, TENANT, NOW, deliveries)
    assert await s.outbox.fanout({0: [item]}, NOW) == 2
    assert await s.client.xlen(key) == 0
    assert (await s.client.xpending(key, GROUP))["pending"] == 0
    # A second reader that had the same entry (lease ran out): acknowledged already, no-op.
    assert await s.outbox.fanout({0: [item]}, NOW) == 0
    h = await s.client.hgetall(s.keys.delivery(0, deliveries[0].id))
    assert h["t"] == TENANT and h["w"] == "whe_a" and h["v"] == evt and h["st"] == "pending"
    assert await s.client.zrange(s.keys.delivery_due(0), 0, -1, withscores=True) == [
        ("whe_a", NOW),
        ("whe_b", NOW),
    ]


async def test_fanout_acknowledges_entries_no_endpoint_wants_together(any_store: Store) -> None:
    """Most events go to no endpoint: they are acknowledged and deleted in one XACK and one
    XDEL beside the entries that do schedule deliveries, in the same call."""
    s = any_store
    await s.outbox.ensure_group()
    key = s.keys.outbox(0)
    for _ in range(5):
        await s.client.xadd(key, {"type": "t", "tenant": TENANT, "at": NOW})
    entries = await s.outbox.read("c1", 10)
    items = []
    for n, entry in enumerate(entries):
        evt = event_ids.event_id(0, entry.id, s.shards)
        did = event_ids.delivery_id(evt, "whe_a", s.shards)
        wanted = [ScheduledDelivery(did, "whe_a", evt, "t", b"{}")] if n == 2 else []
        items.append(Fanout(entry.id, TENANT, NOW, wanted))
    assert await s.outbox.fanout({0: items}, NOW) == 1
    assert await s.client.xlen(key) == 0
    assert (await s.client.xpending(key, GROUP))["pending"] == 0
    assert await s.client.zcard(s.keys.delivery_queue(0, "whe_a")) == 1
    # Handled again (a second reader after the lease): nothing more happens.
    assert await s.outbox.fanout({0: items}, NOW) == 0
    assert await s.client.zcard(s.keys.delivery_queue(0, "whe_a")) == 1


async def test_fanout_of_several_shards_goes_in_one_round_trip(
    any_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader hands every shard's entries over at once: each shard's are acknowledged
    in its own outbox, in calls of at most FANOUT_BATCH entries, in one pipeline."""
    s = any_store
    await s.outbox.ensure_group()
    per_shard = {0: outbox.FANOUT_BATCH + 3, 1: 2}
    for shard, n in per_shard.items():
        for _ in range(n):
            await s.client.xadd(s.keys.outbox(shard), {"type": "t", "tenant": TENANT, "at": NOW})
    entries = await s.outbox.read("c1", 500)
    by_shard: dict[int, list[Fanout]] = {0: [], 1: []}
    for entry in entries:
        evt = event_ids.event_id(entry.shard, entry.id, s.shards)
        did = event_ids.delivery_id(evt, "whe_a", s.shards)
        wanted = [ScheduledDelivery(did, "whe_a", evt, "t", b"{}")]
        by_shard[entry.shard].append(Fanout(entry.id, TENANT, NOW, wanted))
    spy = ScriptCalls(s, monkeypatch)
    assert await s.outbox.fanout(by_shard, NOW) == sum(per_shard.values())
    assert spy.trips == [3]  # shard 0 in two calls, shard 1 in one
    for shard in per_shard:
        assert await s.client.xlen(s.keys.outbox(shard)) == 0
        assert (await s.client.xpending(s.keys.outbox(shard), GROUP))["pending"] == 0
        assert await s.client.zcard(s.keys.delivery_queue(shard, "whe_a")) == per_shard[shard]


async def test_fanout_keeps_the_earliest_due_per_endpoint(any_store: Store) -> None:
    s = any_store
    await _schedule(s, "whe_a", 3, due=NOW + 1000)
    assert await s.client.zscore(s.keys.delivery_due(0), "whe_a") == NOW + 1000
    assert await s.client.zcard(s.keys.delivery_queue(0, "whe_a")) == 3


async def test_claim_respects_endpoint_slots_and_leases(any_store: Store) -> None:
    s = any_store
    a = await _schedule(s, "whe_a", 5)
    b = await _schedule(s, "whe_b", 2)
    got = await s.deliveries.claim(
        0, now=NOW + 10, lease_ms=1000, limit=100, per_endpoint=3, free={"whe_b": 1}
    )
    assert sorted(c.id for c in got) == sorted(a[:3] + b[:1])
    assert all(c.token == "1" and c.body == b'{"x":1}' and c.tenant == TENANT for c in got)
    # The endpoint's index score is now its earliest unclaimed delivery.
    assert await s.client.zscore(s.keys.delivery_due(0), "whe_a") == NOW + 3
    # An endpoint with no free slot is skipped; `limit` caps the total.
    again = await s.deliveries.claim(
        0, now=NOW + 10, lease_ms=1000, limit=1, per_endpoint=3, free={"whe_a": 0}
    )
    assert [c.id for c in again] == [b[1]]
    # Claimed ones come back when their lease ends, with a new token.
    later = await s.deliveries.claim(
        0, now=NOW + 1010, lease_ms=1000, limit=100, per_endpoint=10, free={}
    )
    assert {c.id for c in later} == set(a + b)
    assert {c.token for c in later if c.id == a[0]} == {"2"}


async def test_finish_outcomes_and_fencing(any_store: Store) -> None:
    s = any_store
    ids_ = await _schedule(s, "whe_a", 4)
    got = {
        c.id: c
        for c in await s.deliveries.claim(
            0, now=NOW + 10, lease_ms=1000, limit=10, per_endpoint=10, free={}
        )
    }
    one, two, three, four = (got[i] for i in ids_)
    assert await _done(s, one, "delivered", now=NOW + 20, status=200)
    assert not await s.client.exists(s.keys.delivery(0, one.id))
    assert await _done(
        s, two, "retry", now=NOW + 20, due_at=NOW + 5000, status=503, error="HTTP 503"
    )
    h = await s.client.hgetall(s.keys.delivery(0, two.id))
    assert h["a"] == "1" and h["n"] == str(NOW + 5000) and h["lc"] == "503" and h["la"]
    assert await _done(s, three, "failed", now=NOW + 20, error="timeout")
    h = await s.client.hgetall(s.keys.delivery(0, three.id))
    assert h["st"] == "failed" and h["le"] == "timeout" and "lc" not in h and "n" not in h
    assert await s.client.zrange(s.keys.failed_deliveries(0, "whe_a"), 0, -1) == [three.id]
    assert await s.client.zrange(s.keys.failed_all(0), 0, -1) == [three.id]
    assert await _done(s, four, "drop", now=NOW + 20, attempted=False)
    # Only `two` is left: the index holds its retry time.
    assert await s.client.zrange(s.keys.delivery_due(0), 0, -1, withscores=True) == [
        ("whe_a", NOW + 5000)
    ]
    # A stale token (another claim since) changes nothing.
    [retaken] = await s.deliveries.claim(
        0, now=NOW + 5000, lease_ms=1000, limit=10, per_endpoint=10, free={}
    )
    assert not await _done(s, two, "delivered", now=NOW + 5001)
    assert await s.client.exists(s.keys.delivery(0, two.id))
    with pytest.raises(ScriptError) as err:
        await s.deliveries.finish(retaken, "bogus", now=NOW + 5001)  # type: ignore[arg-type]
    assert err.value.code == "BAD_OUTCOME"
    assert await _done(s, retaken, "delivered", now=NOW + 5001)
    assert await s.client.zcard(s.keys.delivery_due(0)) == 0


async def test_finish_hands_the_slot_the_next_due_delivery(any_store: Store) -> None:
    s = any_store
    first, second, third = await _schedule(s, "whe_a", 3)
    [claimed] = await s.deliveries.claim(
        0, now=NOW + 10, lease_ms=1000, limit=1, per_endpoint=1, free={}
    )
    recorded, nxt = await s.deliveries.finish(
        claimed, "delivered", now=NOW + 20, chain_lease_ms=1000
    )
    assert recorded and nxt is not None and nxt.id == second and nxt.token == "1"
    assert await s.client.zscore(s.keys.delivery_queue(0, "whe_a"), second) == NOW + 1020
    assert await s.client.zscore(s.keys.delivery_due(0), "whe_a") == NOW + 2
    # Only after a success, and only what is due.
    recorded, after_retry = await s.deliveries.finish(
        nxt, "retry", now=NOW + 30, due_at=NOW + 9000, chain_lease_ms=1000
    )
    assert recorded and after_retry is None
    [again] = await s.deliveries.claim(
        0, now=NOW + 10, lease_ms=1000, limit=1, per_endpoint=1, free={}
    )
    assert again.id == third
    _, none_due = await s.deliveries.finish(again, "delivered", now=NOW + 40, chain_lease_ms=1000)
    assert none_due is None
    assert first not in await s.client.zrange(s.keys.delivery_queue(0, "whe_a"), 0, -1)


async def test_retry_codes(any_store: Store) -> None:
    s = any_store
    [did] = await _schedule(s, "whe_a", 1)
    [claimed] = await s.deliveries.claim(
        0, now=NOW, lease_ms=1000, limit=10, per_endpoint=10, free={}
    )
    from seqd.errors import Conflict, NotFound

    with pytest.raises(Conflict):
        await s.deliveries.retry(TENANT, "whe_a", did, NOW)
    await s.deliveries.finish(claimed, "failed", now=NOW + 1)
    for tenant, endpoint, delivery in (
        ("other", "whe_a", did),
        (TENANT, "whe_b", did),
        (TENANT, "whe_a", ids.new(ids.DELIVERY)),
        (TENANT, "whe_a", "nonsense"),
    ):
        with pytest.raises(NotFound):
            await s.deliveries.retry(tenant, endpoint, delivery, NOW)
    back = await s.deliveries.retry(TENANT, "whe_a", did, NOW + 50)
    assert back.status == "pending" and back.attempts == 0
    assert await s.client.zcard(s.keys.failed_deliveries(0, "whe_a")) == 0
    assert await s.client.zcard(s.keys.failed_all(0)) == 0
    assert await s.client.zscore(s.keys.delivery_due(0), "whe_a") == NOW + 50
    # The manual retry fences the old claim.
    assert not await _done(s, claimed, "delivered", now=NOW + 60)


async def test_purge_and_trim(any_store: Store) -> None:
    s = any_store
    keep = await _schedule(s, "whe_keep", 2)
    gone = await _schedule(s, "whe_gone", 3)
    claimed = await s.deliveries.claim(
        0, now=NOW + 10, lease_ms=1000, limit=10, per_endpoint=10, free={}
    )
    for c in claimed:
        if c.id in (gone[0], keep[0]):
            await s.deliveries.finish(c, "failed", now=NOW + 20)
    await s.deliveries.purge("whe_gone")
    for did in gone:
        assert not await s.client.exists(s.keys.delivery(0, did))
    assert await s.client.zrange(s.keys.delivery_due(0), 0, -1) == ["whe_keep"]
    assert await s.client.zrange(s.keys.failed_all(0), 0, -1) == [keep[0]]
    # Failed deliveries of events before the bound are trimmed, later ones kept.
    assert await s.deliveries.trim(ids.time_of(keep[0])) == 0
    assert await s.deliveries.trim(ids.time_of(keep[0]) + 1) == 1
    assert not await s.client.exists(s.keys.delivery(0, keep[0]))
    assert await s.client.zcard(s.keys.failed_deliveries(0, "whe_keep")) == 0
    assert await s.client.exists(s.keys.delivery(0, keep[1]))


async def test_put_endpoint_compare_and_set(any_store: Store) -> None:
    s = any_store

    async def put(eid: str, expected: str, record: str, limit: int) -> Any:
        return await s.runner.run(calls.put_endpoint(s.keys, TENANT, eid, expected, record, limit))

    assert await put("whe_1", "", "v1", 2) == 1
    with pytest.raises(ScriptError) as err:
        await put("whe_1", "", "v1", 2)
    assert err.value.code == "CONFLICT"
    assert await put("whe_2", "", "v2", 2) == 1
    with pytest.raises(ScriptError) as err:
        await put("whe_3", "", "v3", 2)
    assert (err.value.code, err.value.detail) == ("LIMIT", "2")
    with pytest.raises(ScriptError) as err:
        await put("whe_1", "stale", "v1b", 0)
    assert err.value.code == "CONFLICT"
    with pytest.raises(ScriptError) as err:
        await put("whe_9", "v9", "x", 0)
    assert err.value.code == "NOT_FOUND"
    assert await put("whe_1", "v1", "v1b", 0) == 1
    assert await put("whe_2", "v2", "", 0) == 1
    assert await s.client.hgetall(s.keys.webhook_endpoints(TENANT)) == {"whe_1": "v1b"}
