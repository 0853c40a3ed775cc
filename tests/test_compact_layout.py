"""The compact key layout of schema 3 (store/migrate.py): a tenant's contact listing holds
contact ids without their prefix. A store written the schema 2 way is read the same once
opened, and what an older process still running writes is moved at the next start. On
valkey and on fakeredis."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from seqd import ids
from seqd.store import codec, migrate
from seqd.store.contacts import listing_member
from seqd.store.db import Store
from tests.dispatchutil import TENANT, contacts
from tests.test_queues import reopen  # the fixture, exported below

__all__ = ["reopen"]


async def listed(store: Store, limit: int) -> list[str]:
    """Every contact id of TENANT's listing, page by page."""
    out: list[str] = []
    after = None
    while True:
        page, after, _ = await store.contacts.list(TENANT, limit=limit, after=after, filters={})
        out += [c.id for c in page]
        if after is None:
            return out


async def as_schema_2(store: Store, cids: list[str]) -> None:
    """Rewrite the listing members of `cids` as schema 2 wrote them: the whole id."""
    for cid in cids:
        listing = store.keys.tenant_contacts(ids.shard_of(cid, store.shards), TENANT)
        assert await store.client.zrem(listing, listing_member(cid)) == 1
        await store.client.zadd(listing, {cid: 0})


async def test_a_listing_holds_ids_without_their_prefix(any_store: Store) -> None:
    s = any_store
    cids = await contacts(s, 5)
    for cid in cids:
        listing = s.keys.tenant_contacts(ids.shard_of(cid, s.shards), TENANT)
        assert await s.client.zscore(listing, cid.removeprefix("con_")) == 0
        assert await s.client.zscore(listing, cid) is None
    assert await listed(s, 2) == sorted(cids)
    await s.contacts.delete(TENANT, cids[0])
    assert await listed(s, 10) == sorted(cids[1:])


async def test_a_schema_2_store_is_listed_the_same_once_opened(
    reopen: Callable[[], Redis], prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrate, "STEP", 2)
    s = await Store.open(reopen(), prefix, 4)
    try:
        await s.tenants.ensure(TENANT)
        cids = await contacts(s, 9)
        await as_schema_2(s, cids)
        await s.client.hset(s.keys.meta(), "schema", 2)
    finally:
        await s.close()

    s = await Store.open(reopen(), prefix, 4)
    try:
        assert await s.client.hget(s.keys.meta(), "schema") == str(migrate.SCHEMA)
        for cid in cids:
            listing = s.keys.tenant_contacts(ids.shard_of(cid, s.shards), TENANT)
            assert await s.client.zscore(listing, cid) is None
        assert await listed(s, 4) == sorted(cids)
        # A schema 2 process still running lists a contact the old way: it is listed and
        # deleted as it is, and the next start moves it.
        straggler, gone = cids[0], cids[1]
        await as_schema_2(s, [straggler, gone])
        assert sorted(await listed(s, 100)) == sorted(cids)
        await s.contacts.delete(TENANT, gone)
        assert gone not in await listed(s, 100)
    finally:
        await s.close()

    s = await Store.open(reopen(), prefix, 4)
    try:
        listing = s.keys.tenant_contacts(ids.shard_of(straggler, s.shards), TENANT)
        assert await s.client.zscore(listing, listing_member(straggler)) == 0
        assert await listed(s, 3) == sorted(c for c in cids if c != gone)
    finally:
        await s.close()


def test_an_enrollment_zone_is_kept_short_and_read_in_both_forms() -> None:
    """`z` keeps its source as one letter; a hash written before holds the whole word."""
    eid = ids.new(ids.ENROLLMENT)
    h = {"t": "t", "s": "seq_x", "c": "con_x", "st": "active", "i": "0", "n": "1000"}
    assert codec.zone_field("phone", "America/New_York") == "p:America/New_York"
    for stored in ("p:America/New_York", "phone:America/New_York"):
        got = codec.enrollment(eid, {**h, "z": stored})
        assert (got.timezone_source, got.timezone_used) == ("phone", "America/New_York")
    for source in ("contact", "phone", "default"):
        assert codec.zone_of(codec.zone_field(source, "UTC")) == (source, "UTC")
        assert codec.zone_of(f"{source}:UTC") == (source, "UTC")
    assert codec.zone_of("") == (None, None)
