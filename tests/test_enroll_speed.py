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
from seqd.store import calls, event_types, upserts
from seqd.store import tenants as tenants_mod
from seqd.store.calls import ScriptError
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


async def test_new_contacts_of_an_upsert_equal_what_was_stored_and_cover_every_shard(
    store: Store,
) -> None:
    """`upserts.upsert_many` builds each new contact from its row (not read back), and
    makes its ids a shard at a time."""
    rows: list[dict[str, Any]] = [{"phone": f"+1646555{i:04d}"} for i in range(40)]
    rows[0] |= {"first_name": "Ada", "attributes": {"plan": "pro", "seats": 3}}
    rows[1] |= {"email": "b@example.com", "external_id": "ext-1", "timezone": "Europe/Paris"}
    done = await upserts.upsert_many(store, "t", rows)
    made = [d.contact for d in done if isinstance(d, upserts.Upserted)]
    assert [d.change for d in done if isinstance(d, upserts.Upserted)] == ["created"] * 40
    for contact in made:
        assert contact == await store.contacts.get("t", contact.id)
    shards = {ids.shard_of(c.id, store.keys.shards) for c in made}
    assert shards == set(range(store.keys.shards))
    [single] = await upserts.upsert_many(store, "t", [{"phone": "+16465559999"}])
    assert isinstance(single, upserts.Upserted)
    assert single.contact == await store.contacts.get("t", single.contact.id)


async def test_link_contacts_claims_in_order_in_a_fixed_number_of_commands(store: Store) -> None:
    """linkContacts: a value owned already, or taken by an earlier contact of the batch, is
    that contact's conflict and nothing of it is linked; batches beyond what one command
    takes (2,500 contacts) are linked whole."""
    keys, tag = store.keys, "t"
    await store.client.hset(keys.contact_lookup(tag, "email"), "old@example.com", "con_old")
    batch = [
        ("con_a", {"phone": "+16465550001", "email": "a@example.com"}),
        ("con_b", {"phone": "+16465550002", "email": "old@example.com"}),  # owned
        ("con_c", {"phone": "+16465550001"}),  # taken by con_a just before
        ("con_d", {"phone": "+16465550002", "external_id": "x-d"}),  # con_b took nothing
    ]
    replies = await store.runner.run(calls.link_contacts(keys, tag, batch))
    assert replies == [[], ["email", "con_old"], ["phone", "con_a"], []]
    # Entries hold the ids without their prefix (includes/contacts.lua).
    assert await store.client.hgetall(keys.contact_lookup(tag, "phone")) == {
        "+16465550001": "a",
        "+16465550002": "d",
    }
    assert await store.client.hget(keys.contact_lookup(tag, "external_id"), "x-d") == "d"
    replies = await store.runner.run(calls.link_contacts(keys, tag, [("con_e", batch[2][1])]))
    assert replies == [["phone", "con_a"]]
    many = [(f"con_{i}", {"phone": f"+1212555{i:04d}"}) for i in range(2500)]
    replies = await store.runner.run(calls.link_contacts(keys, tag, many))
    assert replies == [[]] * 2500
    assert await store.client.hlen(keys.contact_lookup(tag, "phone")) == 2502


async def test_create_contacts_writes_a_batch_larger_than_one_command_takes(store: Store) -> None:
    keys = store.keys
    made = ids.many_in_shard(ids.CONTACT, 0, keys.shards, 2500, 1_700_000_000_000)
    batch = [(cid, ["phone", f"+1212555{i:04d}", "first_name", "\0"]) for i, cid in enumerate(made)]
    call = calls.create_contacts(keys, 0, 1_700_000_000_000, "t", batch)
    assert await store.runner.run(call) == []
    assert await store.client.zcard(keys.tenant_contacts(0, "t")) == 2500
    last = await store.client.hgetall(keys.contact(0, made[-1]))
    assert last == {"tenant": "t", "phone": "+12125552499"}  # created_at: the id's time
    with pytest.raises(ScriptError, match="EXISTS"):
        await store.runner.run(calls.create_contacts(keys, 0, 1, "t", batch[2400:]))


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
