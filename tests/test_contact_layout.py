"""A contact's stored hash holds no time that its id already says, its lookup index entries
hold its id without the prefix, and contacts stored before either was so still read back
(their times) and are still found, matched and unlinked (their index entries)."""

from __future__ import annotations

import pytest

from seqd import ids
from seqd.errors import Conflict
from seqd.store import upserts
from seqd.store.db import Store
from seqd.times import to_rfc3339

pytestmark = pytest.mark.asyncio


async def _stored(store: Store, cid: str) -> dict[str, str]:
    key = store.keys.contact(ids.shard_of(cid, store.keys.shards), cid)
    return await store.client.hgetall(key)  # type: ignore[no-any-return]


async def test_created_contact_takes_its_times_from_its_id(any_store: Store) -> None:
    made = await any_store.contacts.create("t1", {"phone": "+14155550100", "first_name": "Ada"})
    assert made.created_at == made.updated_at == to_rfc3339(ids.time_of(made.id))
    stored = await _stored(any_store, made.id)
    assert "created_at" not in stored and "updated_at" not in stored
    assert await any_store.contacts.get("t1", made.id) == made

    changed = await any_store.contacts.update("t1", made.id, {"first_name": "Grace"})
    assert changed.created_at == made.created_at
    assert changed.updated_at >= made.created_at
    assert (await _stored(any_store, made.id))["updated_at"]
    assert await any_store.contacts.get("t1", made.id) == changed


async def test_batch_created_contacts_read_back_as_answered(any_store: Store) -> None:
    rows = [{"phone": f"+1415555{i:04d}", "first_name": f"C{i}"} for i in range(20)]
    done = await upserts.upsert_many(any_store, "t1", rows)
    for result in done:
        assert isinstance(result, upserts.Upserted) and result.change == "created"
        answered = result.contact
        assert answered.created_at == to_rfc3339(ids.time_of(answered.id))
        assert "created_at" not in await _stored(any_store, answered.id)
        assert await any_store.contacts.get("t1", answered.id) == answered


async def test_contact_stored_with_its_times_keeps_them(any_store: Store) -> None:
    """A contact written before the times were left out (both fields in its hash)."""
    made = await any_store.contacts.create("t1", {"phone": "+14155550101"})
    key = any_store.keys.contact(ids.shard_of(made.id, any_store.keys.shards), made.id)
    created, updated = ids.time_of(made.id) - 5000, ids.time_of(made.id) - 1000
    await any_store.client.hset(key, mapping={"created_at": created, "updated_at": updated})
    read = await any_store.contacts.get("t1", made.id)
    assert read.created_at == to_rfc3339(created)
    assert read.updated_at == to_rfc3339(updated)
    changed = await any_store.contacts.update("t1", made.id, {"first_name": "Alan"})
    assert changed.created_at == to_rfc3339(created)
    assert changed.updated_at > to_rfc3339(updated)


async def _entry(store: Store, field: str, value: str) -> str | None:
    return await store.client.hget(store.keys.contact_lookup("t1", field), value)  # type: ignore[no-any-return]


async def test_lookup_entries_hold_the_id_without_its_prefix(any_store: Store) -> None:
    made = await any_store.contacts.create("t1", {"phone": "+14155550102", "email": "a@x.io"})
    assert await _entry(any_store, "phone", "+14155550102") == made.id.removeprefix("con_")
    assert await any_store.contacts.find("t1", "email", "a@x.io") == made.id
    [again] = await upserts.upsert_many(any_store, "t1", [{"phone": "+14155550102"}])
    assert isinstance(again, upserts.Upserted) and again.contact.id == made.id
    with pytest.raises(Conflict) as info:
        await any_store.contacts.create("t1", {"email": "a@x.io"})
    assert info.value.extra["contact_id"] == made.id


async def test_lookup_entries_holding_the_whole_id_still_work(any_store: Store) -> None:
    """Entries written before the prefix was left out: found, matched, a conflict, moved."""
    made = await any_store.contacts.create("t1", {"phone": "+14155550103"})
    await any_store.client.hset(
        any_store.keys.contact_lookup("t1", "phone"), "+14155550103", made.id
    )
    assert await any_store.contacts.find("t1", "phone", "+14155550103") == made.id
    [matched] = await upserts.upsert_many(any_store, "t1", [{"phone": "+14155550103"}])
    assert isinstance(matched, upserts.Upserted) and matched.change == "unchanged"
    with pytest.raises(Conflict):
        await any_store.contacts.create("t1", {"phone": "+14155550103"})
    # An update unlinks the old value it still owns, whichever form names it.
    await any_store.contacts.update("t1", made.id, {"phone": "+14155550104"})
    assert await _entry(any_store, "phone", "+14155550103") is None
    assert await any_store.contacts.find("t1", "phone", "+14155550104") == made.id
