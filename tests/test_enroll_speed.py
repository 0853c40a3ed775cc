"""What the enroll speed work relies on: a new enrollment's answer is built from what was
sent (so it must equal what was stored), a new hash holds no zero or duplicate fields,
per-call batched index writes, API key answers cached for at most AUTH_CACHE_SECONDS,
the one-round-trip sequence read, and the id fast paths."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from seqd import bulk, ids, models
from seqd.errors import Conflict, NotFound
from seqd.store import event_types
from seqd.store import tenants as tenants_mod
from seqd.store.codec import decode_json
from seqd.store.db import Store
from seqd.store.enrollments import EnrollItem
from seqd.store.outbox import Entry
from seqd.store.tenants import Tenants
from tests.conftest import Api

SEQUENCE = {
    "name": "Speed",
    "status": "active",
    "steps": [{"kind": "sms", "wait_minutes": 60, "body": "Hi"}],
}


async def _sequence_and_contacts(api: Api, n: int) -> tuple[str, list[str]]:
    status, body = await api.call("POST", "/sequences", SEQUENCE)
    assert status == 201, body
    contacts = []
    for i in range(n):
        status, c = await api.call("POST", "/contacts", {"phone": f"+1415555020{i}"})
        assert status == 201, c
        contacts.append(c["contact"]["id"])  # type: ignore[index]
    return body["sequence"]["id"], contacts  # type: ignore[index]


async def _get(api: Api, eid: str) -> dict[str, Any]:
    status, body = await api.call("GET", f"/enrollments/{eid}")
    assert status == 200, body
    return body["enrollment"]  # type: ignore[index,no-any-return]


async def test_created_answers_equal_what_was_stored(api: Api) -> None:
    sid, (c0, c1, c2) = await _sequence_and_contacts(api, 3)
    md = {"plan": "pro", "n": 3, "nested": {"a": [1, 2.5, None, "x"]}}
    status, body = await api.call(
        "POST", f"/sequences/{sid}/enrollments", {"contact_id": c0, "metadata": md}
    )
    assert status == 201, body
    created = body["enrollment"]  # type: ignore[index]
    assert created == await _get(api, created["id"])
    assert created["metadata"] == md and created["updated_at"] == created["enrolled_at"]
    # Again: the idempotent answer is read back from the stored hash; same enrollment.
    status, again = await api.call("POST", f"/sequences/{sid}/enrollments", {"contact_id": c0})
    assert status == 200 and again["idempotent"] is True  # type: ignore[index]
    assert again["enrollment"] == created  # type: ignore[index]
    items = [{"contact_id": c1, "metadata": {"row": 1}}, {"contact_id": c2}]
    status, body = await api.call("POST", f"/sequences/{sid}/enrollments/batch", {"items": items})
    assert status == 200, body
    for result in body["results"]:  # type: ignore[index]
        assert result["outcome"] == "enrolled" and result["idempotent"] is False
        assert result["enrollment"] == await _get(api, result["enrollment"]["id"])


async def test_a_new_hash_holds_no_zero_or_duplicate_fields(api: Api) -> None:
    store = api.store
    sid, [cid] = await _sequence_and_contacts(api, 1)
    status, body = await api.call(
        "POST", f"/sequences/{sid}/enrollments", {"contact_id": cid, "metadata": {"a": 1}}
    )
    assert status == 201, body
    eid = body["enrollment"]["id"]  # type: ignore[index]
    shard = ids.shard_of(eid, store.keys.shards)
    h = await store.client.hgetall(store.keys.enrollment(shard, eid))
    assert set(h) == {"t", "s", "c", "st", "i", "n", "md"}  # no a, ua, nor enrolled_at
    assert h["st"] == "active" and h["i"] == "0" and decode_json(h["md"]) == {"a": 1}
    # The created event carries the stored hash but the tenant (the entry names it); its
    # API shape reads the absent fields.
    [(sid, event)] = await store.client.xrange(store.keys.outbox(shard))
    assert event["type"] == "sequence.enrollment.created" and event["tenant"] == "acme"
    [data] = Entry(shard, sid, event).events() or []
    assert data == {"id": eid, "fields": {f: v for f, v in h.items() if f != "t"}}
    shaped = event_types.shape(event["type"], data)
    assert shaped == body["enrollment"]  # type: ignore[index]
    # The first change writes `ua`, and the API reports it.
    await asyncio.sleep(0.002)
    status, paused = await api.call("POST", f"/enrollments/{eid}/pause")
    assert status == 200, paused
    assert paused["enrollment"]["updated_at"] > paused["enrollment"]["enrolled_at"]  # type: ignore[index]
    assert "ua" in await store.client.hgetall(store.keys.enrollment(shard, eid))


async def test_one_call_batches_its_index_and_counter_writes(store: Store) -> None:
    steps = [models.StepIn(kind="sms", wait_minutes=5, body="Hi")]
    seq = await store.sequences.create(
        "acme", models.SequenceCreate(name="S", status="active", steps=steps)
    )
    created = [await store.contacts.create("acme", {"phone": f"+1415555030{i}"}) for i in range(6)]
    cids = [c.id for c in created]
    # The same contact twice in one call: the second finds the first's enrollment.
    items = [EnrollItem(cid, {}) for cid in cids] + [EnrollItem(cids[0], {"late": True})]
    results = await store.enrollments.enroll("acme", seq, items)
    assert [r.idempotent for r in results] == [False] * 6 + [True]
    assert results[-1].id == results[0].id and results[-1].enrollment == results[0].enrollment
    eids = [r.id or "" for r in results[:6]]
    assert (await store.sequences.stats([seq.id]))[seq.id].active == 6
    for eid in eids:
        shard = ids.shard_of(eid, store.keys.shards)
        h = await store.client.hgetall(store.keys.enrollment(shard, eid))
        # Its queue entry is both its due time and its place in the active listing.
        assert await store.client.zscore(store.keys.queue(shard, seq.id), eid) == int(h["n"])
        assert int(h["n"]) == ids.time_of(eid) + 5 * 60_000
        assert await store.client.zscore(store.keys.heads(shard), seq.id) <= int(h["n"])
    # Ids only (the intake's and the import's way): the same enrollments, no Structs.
    lean = await store.enrollments.enroll("acme", seq, items[:2], full=False)
    expected = [(eids[0], True, None), (eids[1], True, None)]
    assert [(r.id, r.idempotent, r.enrollment) for r in lean] == expected


async def test_a_key_revoked_elsewhere_stops_within_the_cache_time(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tenants_mod, "AUTH_CACHE_SECONDS", 0.3)
    key, secret = await api.store.tenants.create_key("acme", "temp")
    assert (await api.call("GET", "/contacts", key=secret))[0] == 200
    assert tenants_mod.hash_key(secret) in api.store.tenants._known  # answered from now on
    # Another process (its own Tenants, its own cache) revokes the key.
    assert await Tenants(api.store).revoke(key.id)
    await asyncio.sleep(0.35)
    assert (await api.call("GET", "/contacts", key=secret))[0] == 401
    # An unknown key is never remembered: it is asked of Redis every time.
    assert (await api.call("GET", "/contacts", key="sk_live_" + "x" * 32))[0] == 401
    assert tenants_mod.hash_key("sk_live_" + "x" * 32) not in api.store.tenants._known


async def test_target_reads_the_sequence_and_the_lists_in_one_round_trip(store: Store) -> None:
    body = models.SequenceCreate(
        name="S", status="active", steps=[models.StepIn(kind="sms", wait_minutes=5, body="Hi")]
    )
    seq = await store.sequences.create("acme", body)
    into = await bulk.target(store, "acme", seq.id)
    assert into.seq.id == seq.id and into.version >= 1 and into.listed == frozenset()
    await store.client.hset(store.keys.suppressions("acme", "sms"), "+14155550100", "{}")
    assert (await bulk.target(store, "acme", seq.id)).listed == {"sms"}
    for sid in ("nope", ids.new(ids.SEQUENCE)):
        with pytest.raises(NotFound):
            await bulk.target(store, "acme", sid)
    with pytest.raises(NotFound):  # another tenant's sequence
        await bulk.target(store, "bravo", seq.id)
    draft = await store.sequences.create("acme", models.SequenceCreate(name="D", steps=body.steps))
    with pytest.raises(Conflict):
        await bulk.target(store, "acme", draft.id)


def test_id_fast_paths_agree_with_the_plain_algorithm() -> None:
    def plain(value: int, width: int) -> str:
        out = []
        for _ in range(width):
            out.append(ids.ALPHABET[value & 31])
            value >>= 5
        return "".join(reversed(out))

    rng = random.Random(7)
    for _ in range(2000):
        value = rng.getrandbits(60)
        for width in (9, 10, 12):
            text = ids._encode(value, width)
            assert text == plain(value, width)
            assert ids._decode(text) == value % (1 << (5 * width))
    made = ids.new_in_shard(ids.ENROLLMENT, 5, 16, 1_700_000_000_000)
    assert ids.is_valid(made, ids.ENROLLMENT) and ids.shard_of(made, 16) == 5
    assert ids.time_of(made) == 1_700_000_000_000
    assert ids.time_of(ids.new(ids.ENROLLMENT, 1_700_000_000_001)) == 1_700_000_000_001
    body = made.partition("_")[2]
    for bad in ("I", "L", "O", "U", "a", " ", "_", "é"):
        assert not ids.is_valid(f"enr_{body[:10]}{bad}{body[11:]}", ids.ENROLLMENT)
        with pytest.raises(KeyError):
            ids._decode(body[:5] + bad)
