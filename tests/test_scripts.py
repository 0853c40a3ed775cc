"""Each Lua script called directly, on a real valkey-server and on fakeredis."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest

from seqd import ids, models
from seqd.store import calls
from seqd.store.contacts import lookup_owner
from seqd.store.db import Store
from seqd.store.dispatch import Dispatch
from seqd.store.enrollments import EnrollItem
from seqd.store.scripts import LUA, SCRIPTS, CrossSlotError, Runner, ScriptError
from seqd.times import to_rfc3339
from tests.dispatchutil import claim, contacts_in_shard, events, settled

SEQ = models.SequenceCreate(
    name="s",
    status="active",
    steps=[
        models.StepIn(kind="sms", body="a", wait_minutes=5),
        models.StepIn(kind="sms", body="b", wait_minutes=10),
    ],
)


def test_header_key_count_matches_file_name() -> None:
    for entry in LUA.iterdir():
        match = re.fullmatch(r"(\w+)-(\d+)\.lua", entry.name)
        if not match:
            continue
        text = entry.read_text()
        declared = set(re.findall(r"KEYS\[(\d+)\]", text.split("]]", 1)[0]))
        assert len(declared) == int(match.group(2)), entry.name
        used = {int(n) for n in re.findall(r"KEYS\[(\d+)\]", text)}
        assert used <= {int(n) for n in declared}, entry.name
        assert "TIME" not in text, f"{entry.name} reads the clock"
        assert "cmsgpack" not in text and "struct." not in text, entry.name
        assert SCRIPTS[match.group(1)].num_keys == int(match.group(2))


async def test_cross_slot_call_fails(store: Store) -> None:
    keys = [store.keys.heads(0), store.keys.outbox(1)]
    with pytest.raises(CrossSlotError):
        await store.runner.call("transition", keys, ["x"], tag=store.keys.shard_tag(0))


async def _setup(s: Store) -> tuple[str, models.Sequence]:
    c = await s.contacts.create("acme", {"phone": "+14155550100"})
    seq = await s.sequences.create("acme", SEQ)
    return c.id, seq


async def test_enroll_is_idempotent_and_indexes(any_store: Store) -> None:
    s = any_store
    cid, seq = await _setup(s)
    [first] = await s.enrollments.enroll("acme", seq, [EnrollItem(cid, {"a": 1})])
    assert first.enrollment is not None and not first.idempotent
    eid = first.enrollment.id
    shard = ids.shard_of(cid, s.shards)
    assert ids.shard_of(eid, s.shards) == shard
    # Due at enrolled_at + 5 minutes.
    score = await s.client.zscore(s.keys.queue(shard, seq.id), eid)
    assert score == ids.time_of(eid) + 5 * 60_000
    assert await s.client.zscore(s.keys.heads(shard), seq.id) == score
    assert first.enrollment.enrolled_at == to_rfc3339(ids.time_of(eid))
    assert await s.client.hget(s.keys.contact(shard, cid), f"e:{seq.id}") == eid
    # The queue is the listing of active enrollments: no index of their own.
    assert await s.client.exists(f"{s.keys.shard_tag(shard)}:ix:{seq.id}:active") == 0
    assert await s.client.hget(s.keys.counts(shard, seq.id), "active") == "1"
    [data] = await events(s, shard)
    assert data["type"] == "sequence.enrollment.created"
    assert data["id"] == eid and data["fields"]["st"] == "active"

    [again] = await s.enrollments.enroll("acme", seq, [EnrollItem(cid, {})])
    assert again.idempotent and again.enrollment is not None and again.enrollment.id == eid
    assert len(await events(s, shard)) == 1


async def test_enroll_puts_a_calls_created_events_in_entries_of_200(any_store: Store) -> None:
    """One outbox entry per 200 created events (`items`, a JSON array), in item order, each
    event's data what it would be alone; nothing for an idempotent item."""
    s = any_store
    seq = await s.sequences.create("acme", SEQ)
    cids = await contacts_in_shard(s, 450)
    results = await s.enrollments.enroll("acme", seq, [EnrollItem(c, {}) for c in cids])
    rows = await s.client.xrange(s.keys.outbox(0))
    assert [len(json.loads(f["items"])) for _, f in rows] == [200, 200, 50]
    for _, f in rows:
        assert f["type"] == "sequence.enrollment.created" and f["tenant"] == "acme"
        assert "data" not in f
    created = await events(s, 0)
    assert [e["id"] for e in created] == [r.id for r in results]
    assert [e["fields"]["c"] for e in created] == cids
    again = await s.enrollments.enroll("acme", seq, [EnrollItem(c, {}) for c in cids[:10]])
    assert all(r.idempotent for r in again)
    assert len(await s.client.xrange(s.keys.outbox(0))) == 3


async def test_enroll_error_codes(any_store: Store) -> None:
    s = any_store
    cid, seq = await _setup(s)
    other = await s.contacts.create("bravo", {"phone": "+14155550100"})
    results = await s.enrollments.enroll(
        "acme", seq, [EnrollItem(other.id, {}), EnrollItem(ids.new(ids.CONTACT), {})]
    )
    assert [r.code for r in results] == ["CONTACT_NOT_FOUND", "CONTACT_NOT_FOUND"]
    paused = await s.sequences.change(
        "acme",
        seq.id,
        status=models.SequenceStatus.PAUSED,
        allowed_from=frozenset({models.SequenceStatus.ACTIVE}),
    )
    [r] = await s.enrollments.enroll("acme", paused, [EnrollItem(cid, {})])
    assert (r.code, r.detail) == ("SEQUENCE_NOT_ACTIVE", "paused")


async def test_transition_codes_and_fencing(any_store: Store) -> None:
    s = any_store
    cid, seq = await _setup(s)
    [r] = await s.enrollments.enroll("acme", seq, [EnrollItem(cid, {})])
    assert r.enrollment is not None
    eid = r.enrollment.id
    shard = ids.shard_of(eid, s.shards)
    ekey = s.keys.enrollment(shard, eid)
    with pytest.raises(Exception, match="no enrollment"):
        await s.enrollments.transition("bravo", eid, "pause", "manual")
    # A claim in flight while the enrollment is paused is fenced off: its token (the lease
    # score) is gone with the due member, so its outcome is stale.
    far = 10**13
    dispatch = Dispatch(s)
    [claimed] = (await claim(s, shard, far, lease_ms=60_000, limit=10)).items
    paused = await s.enrollments.transition("acme", eid, "pause", "manual")
    assert paused.status == "paused"
    assert await s.client.zscore(s.keys.queue(shard, seq.id), eid) is None
    assert await s.client.zrange(s.keys.status_index(shard, seq.id, "paused"), 0, -1) == [eid]
    retry = settled(
        id=eid, token=claimed.enrollment.token, step=0, kind="sms", at=far, outcome="retry", delay=5
    )
    assert (await dispatch.advance(shard, [retry], now=far, max_attempts=3)).stale == [eid]
    assert (await s.client.hgetall(ekey)).get("a") is None
    with pytest.raises(Exception, match="cannot pause an enrollment that is paused"):
        await s.enrollments.transition("acme", eid, "pause", "manual")
    resumed = await s.enrollments.transition("acme", eid, "resume", "")
    assert resumed.status == "active"
    assert await s.client.zscore(s.keys.queue(shard, seq.id), eid) is not None
    assert await s.client.zcard(s.keys.status_index(shard, seq.id, "paused")) == 0
    done = await s.enrollments.transition("acme", eid, "complete", "")
    assert done.status == "completed" and done.completed_at is not None
    assert await s.client.hget(s.keys.contact(shard, cid), f"e:{seq.id}") is None
    counts = await s.client.hgetall(s.keys.counts(shard, seq.id))
    assert counts == {"active": "0", "paused": "0", "completed": "1"}
    types = [e["type"] for e in await events(s, shard)]
    assert types == [
        "sequence.enrollment.created",
        "sequence.enrollment.paused",
        "sequence.enrollment.resumed",
        "sequence.enrollment.completed",
    ]
    runner = Runner(s.client)
    with pytest.raises(ScriptError) as info:
        await runner.run(calls.transition(s.keys, shard, 1, "acme", eid, "explode", ""))
    assert info.value.code == "BAD_ACTION"
    with pytest.raises(ScriptError) as info:
        await runner.run(calls.transition(s.keys, shard, 1, "acme", eid, "resume", ""))
    assert (info.value.code, info.value.detail) == ("INVALID_TRANSITION", "completed")


async def test_sync_sequence_sweeps_in_batches(
    any_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from seqd.store import sequences

    monkeypatch.setattr(sequences, "SWEEP_BATCH", 3)
    s = any_store
    seq = await s.sequences.create("acme", SEQ)
    items = []
    for i in range(10):
        c = await s.contacts.create("acme", {"phone": f"+1415555{i:04d}"})
        items.append(EnrollItem(c.id, {}))
    results = await s.enrollments.enroll("acme", seq, items)
    assert all(r.enrollment for r in results)
    archived = await s.sequences.change("acme", seq.id, status=models.SequenceStatus.ARCHIVED)
    assert archived.stats.cancelled == 10 and archived.stats.active == 0
    for shard in range(s.shards):
        mirror = await s.client.hget(s.keys.mirrors(shard), seq.id)
        assert mirror is not None and mirror.startswith("archived:")
        assert await s.client.zcard(s.keys.queue(shard, seq.id)) == 0
        assert await s.client.zcard(s.keys.heads(shard)) == 0


async def test_sync_sequence_never_lowers_the_mirror_version(store: Store) -> None:
    seq = await store.sequences.create("acme", SEQ)
    k = store.keys
    await store.runner.run(calls.sync_sequence(k, 0, 1, seq.id, "paused:5:2", "", 10, "", ""))
    await store.runner.run(calls.sync_sequence(k, 0, 1, seq.id, "active:4:2", "", 10, "", ""))
    assert await store.client.hget(k.mirrors(0), seq.id) == "paused:5:2"


async def test_link_contact_conflict_and_stale_entries(any_store: Store) -> None:
    s = any_store
    a = await s.contacts.create("acme", {"email": "a@example.com"})
    with pytest.raises(Exception, match="email already belongs"):
        await s.contacts.create("acme", {"email": "a@example.com"})
    # A dangling index entry (crash between index and contact writes) is overwritten.
    ghost = ids.new(ids.CONTACT)
    await s.client.hset(s.keys.contact_lookup("acme", "phone"), "+14155550111", ghost)
    b = await s.contacts.create("acme", {"phone": "+14155550111"})
    assert await s.contacts.find("acme", "phone", "+14155550111") == b.id
    assert a.id != b.id


async def test_link_contacts_claims_values_in_order(any_store: Store) -> None:
    """A later contact of the batch conflicts with an earlier one (or one stored before)
    that took its value, and then links none of its values."""
    s = any_store
    old = await s.contacts.create("acme", {"email": "old@example.com"})
    a, b, c = (ids.new(ids.CONTACT) for _ in range(3))
    rows = [
        (a, {"phone": "+14155550120", "external_id": "x1"}),
        (b, {"phone": "+14155550120", "email": "b@example.com"}),
        (c, {"phone": "+14155550121", "email": "old@example.com"}),
    ]
    replies = await s.runner.run(calls.link_contacts(s.keys, "acme", rows))
    assert replies == [[], ["phone", a], ["email", old.id]]

    async def owner(field: str, value: str) -> str | None:
        stored = await s.client.hget(s.keys.contact_lookup("acme", field), value)
        return lookup_owner(stored)  # type: ignore[arg-type]

    assert await owner("phone", "+14155550120") == a
    assert await owner("external_id", "x1") == a
    assert await owner("email", "b@example.com") is None
    assert await owner("phone", "+14155550121") is None


async def test_create_contacts_writes_all_or_nothing(any_store: Store) -> None:
    s = any_store
    taken = await s.contacts.create("acme", {"phone": "+14155550130"})
    shard = ids.shard_of(taken.id, s.shards)
    fresh = next(i for i in (ids.new(ids.CONTACT) for _ in range(200))
                 if ids.shard_of(i, s.shards) == shard)  # fmt: skip
    fields = ["phone", "+14155550131", "attributes", "\0"]
    with pytest.raises(ScriptError) as info:
        await s.runner.run(
            calls.create_contacts(s.keys, shard, 5, "acme", [(fresh, fields), (taken.id, [])])
        )
    assert info.value.code == "EXISTS"
    assert not await s.client.exists(s.keys.contact(shard, fresh))
    await s.runner.run(calls.create_contacts(s.keys, shard, 5, "acme", [(fresh, fields)]))
    # No times: the contact's created_at is the time in its id (store/codec.py `contact`).
    assert await s.client.hgetall(s.keys.contact(shard, fresh)) == {
        "tenant": "acme", "phone": "+14155550131"
    }  # fmt: skip
    # Listed without its prefix (schema 3).
    assert await s.client.zscore(s.keys.tenant_contacts(shard, "acme"), fresh[4:]) == 0


async def test_put_sequence_optimistic_concurrency(any_store: Store) -> None:
    s = any_store
    seq = await s.sequences.create("acme", SEQ)
    with pytest.raises(ScriptError) as info:
        await s.runner.run(calls.put_sequence(s.keys, "acme", seq.id, "{}", "active", 7))
    assert info.value.code == "CONFLICT"
    with pytest.raises(ScriptError) as info:
        await s.runner.run(calls.put_sequence(s.keys, "acme", seq.id, "{}", "active", 0))
    assert info.value.code == "EXISTS"
    with pytest.raises(ScriptError) as info:
        await s.runner.run(calls.put_sequence(s.keys, "acme", "seq_x", "{}", "active", 1))
    assert info.value.code == "NOT_FOUND"


async def test_put_and_delete_contact_codes(any_store: Store) -> None:
    s = any_store
    c = await s.contacts.create("acme", {"phone": "+14155550100"})
    shard = ids.shard_of(c.id, s.shards)
    with pytest.raises(ScriptError) as info:
        await s.runner.run(calls.put_contact(s.keys, shard, 1, "acme", c.id, "create", []))
    assert info.value.code == "EXISTS"
    with pytest.raises(ScriptError) as info:
        await s.runner.run(calls.put_contact(s.keys, shard, 1, "bravo", c.id, "update", []))
    assert info.value.code == "NOT_FOUND"
    with pytest.raises(ScriptError) as info:
        await s.runner.run(calls.delete_contact(s.keys, shard, 1, "bravo", c.id))
    assert info.value.code == "NOT_FOUND"


async def test_trim_intake_deletes_only_the_finished_head(any_store: Store) -> None:
    """Entries leave once every group is done with them and with all before them: a pending
    entry holds back those finished after it, an unread one (or a group that has read
    nothing) everything from it on."""
    s = any_store
    key = s.keys.intake()

    async def trim() -> int:
        return int(await s.runner.run(calls.trim_intake(s.keys)))

    assert await trim() == 0, "no stream (yet, or deleted): nothing to do"
    ids_ = [await s.client.xadd(key, {"n": str(n)}) for n in range(5)]
    await s.client.xgroup_create(key, "g", id="0")
    assert await trim() == 0
    await s.client.xreadgroup("g", "c", {key: ">"}, count=3)
    await s.client.xack(key, "g", ids_[1])
    assert await trim() == 0, "the oldest read entry is still pending"
    await s.client.xack(key, "g", ids_[0])
    assert await trim() == 2 and await s.client.xlen(key) == 3
    await s.client.xack(key, "g", ids_[2])
    assert await trim() == 1 and await s.client.xlen(key) == 2, "two never read"
    # A group that starts after the 4th entry (it will never read it).
    await s.client.xgroup_create(key, "other", id=ids_[3])
    await s.client.xreadgroup("g", "c", {key: ">"})
    await s.client.xack(key, "g", ids_[3], ids_[4])
    assert await trim() == 1 and await s.client.xlen(key) == 1, "other has the 5th to read"
    await s.client.xreadgroup("other", "c", {key: ">"})
    assert await trim() == 0, "pending with other"
    await s.client.xack(key, "other", ids_[4])
    assert await trim() == 1 and await s.client.xlen(key) == 0
    assert await trim() == 0


def test_each_script_has_one_builder() -> None:
    """Every script is called through its builder in store/calls.py."""
    built = re.findall(r'Call\(\s*"(\w+)"', inspect.getsource(calls))
    assert len(built) == len(set(built))
    assert sorted(built) == sorted(SCRIPTS)


def test_enroll_rows_read_as_one_error_type() -> None:
    rows = [[1, "enr_a", 0], [1, "enr_b", 1, ["st", "active"]], [0, "CONTACT_NOT_FOUND", "con_x"]]
    created, existing, refused = calls.enrolled(rows)
    assert created == calls.Enrolled("enr_a", False, [])
    assert existing == calls.Enrolled("enr_b", True, ["st", "active"])
    assert isinstance(refused, ScriptError)
    assert (refused.code, refused.detail) == ("CONTACT_NOT_FOUND", "con_x")


def test_the_docs_script_table_points_at_each_script_once() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    linked = re.findall(r"\]\(\.\./seqd/store/lua/([\w-]+)\.lua\)", doc)
    files = [e.name.removesuffix(".lua") for e in LUA.iterdir() if e.name.endswith(".lua")]
    assert sorted(linked) == sorted(files)
