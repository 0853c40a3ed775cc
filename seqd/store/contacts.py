"""Contacts: a hash in the contact's shard, plus per-tenant lookup indexes.

Phone, email and external_id are unique per tenant. The lookup indexes live under the
tenant's tag and the contact under its shard's, so a create is two script calls; the
indexes are written first, and an entry left pointing at a contact that never came to be
(a crash between the two) is recognised as stale and overwritten.
"""

from __future__ import annotations

from typing import Any

from seqd import accounts, ids, models
from seqd.errors import Conflict, NotFound
from seqd.store import calls, codec
from seqd.store.context import StoreContext
from seqd.store.scripts import ScriptError
from seqd.times import now_ms

# The lookup indexes, in linkContact's order.
LOOKUP_FIELDS = calls.LINK_FIELDS


def lookup_owner(stored: str | None) -> str | None:
    """The contact id a lookup index entry names: entries hold the id without its prefix
    (includes/contacts.lua), those written before the whole id."""
    return None if stored is None else unprefixed_id(stored)


def unprefixed_id(stored: str) -> str:
    """The contact id of a stored id without its prefix (ids' bodies have no "_"); a
    whole id, as stored before, stays as it is."""
    return stored if "_" in stored else f"{ids.CONTACT}_{stored}"


def listing_member(cid: str) -> str:
    """A contact's member in its tenant's listing (keys.py "tenant_contacts"): its id
    without the prefix, as in the lookup indexes (schema 3; `migrate.contact_lists`)."""
    return cid.removeprefix(f"{ids.CONTACT}_")


def with_account(fields: dict[str, Any], current: dict[str, str] | None = None) -> dict[str, Any]:
    """`fields` (to write over the stored hash `current`, None for a new contact) with the
    contact's account digest (`ac`, seqd/accounts.py) when email or attributes change."""
    if current is not None and "email" not in fields and "attributes" not in fields:
        return fields
    email = fields["email"] if "email" in fields else (current or {}).get("email")
    if "attributes" in fields:
        attributes = fields["attributes"]
    else:
        stored = (current or {}).get("attributes")
        attributes = codec.decode_json(stored) if stored else None
    return {**fields, accounts.FIELD: accounts.field_value(email, attributes)}


class Contacts:
    def __init__(self, store: StoreContext) -> None:
        self.store = store
        self.keys = store.keys

    def _shard(self, cid: str) -> int:
        return ids.shard_of(cid, self.keys.shards)

    async def _raw(self, tenant: str, cid: str) -> dict[str, str] | None:
        if not ids.is_valid(cid, ids.CONTACT):
            return None
        h: dict[str, str] = await self.store.client.hgetall(  # type: ignore[assignment]
            self.keys.contact(self._shard(cid), cid)
        )
        return h if h.get("tenant") == tenant else None

    async def get(self, tenant: str, cid: str, *, field: str = "id") -> models.Contact:
        h = await self._raw(tenant, cid)
        if h is None:
            raise NotFound(f"no contact {cid}", field=field)
        return codec.contact(cid, h)

    async def exists(self, tenant: str, cid: str) -> bool:
        return await self._raw(tenant, cid) is not None

    async def _link(self, tenant: str, cid: str, new: dict[str, Any], old: dict[str, Any]) -> None:
        stale: list[str] = []
        while True:
            link = calls.link_contact(self.keys, tenant, cid, stale, new, old)
            conflict = await self.store.runner.run(link)
            if not conflict:
                return
            field, owner = conflict
            if owner in stale or await self.exists(tenant, owner):
                raise Conflict(
                    f"{field} already belongs to contact {owner}", field=field, contact_id=owner
                )
            stale.append(owner)

    async def create(self, tenant: str, fields: dict[str, Any]) -> models.Contact:
        now = now_ms()
        cid = ids.new(ids.CONTACT, now)  # its time is the contact's created_at
        await self._link(tenant, cid, fields, {})
        return await self._put(tenant, cid, "create", with_account(fields), now)

    async def _put(
        self, tenant: str, cid: str, mode: str, fields: dict[str, Any], now: int | None = None
    ) -> models.Contact:
        values = codec.contact_values(fields)
        at = now_ms() if now is None else now
        put = calls.put_contact(self.keys, self._shard(cid), at, tenant, cid, mode, values)
        try:
            flat = await self.store.runner.run(put)
        except ScriptError as exc:
            if exc.code == "NOT_FOUND":  # deleted meanwhile
                raise NotFound(f"no contact {cid}", field="id") from None
            raise
        return codec.contact(cid, codec.pairs(flat))

    async def update(self, tenant: str, cid: str, changes: dict[str, Any]) -> models.Contact:
        current = await self._raw(tenant, cid)
        if current is None:
            raise NotFound(f"no contact {cid}", field="id")
        linked = {f: changes[f] for f in LOOKUP_FIELDS if f in changes}
        if linked:
            old = {f: current.get(f) for f in linked}
            await self._link(tenant, cid, linked, old)
        return await self._put(tenant, cid, "update", with_account(changes, current))

    async def delete(self, tenant: str, cid: str) -> None:
        if not ids.is_valid(cid, ids.CONTACT):
            raise NotFound(f"no contact {cid}", field="id")
        try:
            flat = await self.store.runner.run(
                calls.delete_contact(self.keys, self._shard(cid), now_ms(), tenant, cid)
            )
        except ScriptError as exc:
            if exc.code == "NOT_FOUND":
                raise NotFound(f"no contact {cid}", field="id") from None
            raise
        old = codec.pairs(flat)
        await self._link(tenant, cid, {}, {f: old.get(f) for f in LOOKUP_FIELDS})

    async def find(self, tenant: str, field: str, value: str) -> str | None:
        """The contact id holding `value` in a lookup field, if it (still) exists."""
        stored = await self.store.client.hget(self.keys.contact_lookup(tenant, field), value)
        cid = lookup_owner(stored) if isinstance(stored, str) else None
        if cid is not None and await self.exists(tenant, cid):
            return cid
        return None

    async def list(
        self, tenant: str, *, limit: int, after: str | None, filters: dict[str, str]
    ) -> tuple[list[models.Contact], str | None, int]:
        if filters:
            found: set[str | None] = set()
            for field, value in filters.items():
                found.add(await self.find(tenant, field, value))
            cid = found.pop() if len(found) == 1 else None
            if cid is None or (after is not None and cid <= after):
                return [], None, 0 if cid is None else 1
            return [await self.get(tenant, cid)], None, 1
        index = [self.keys.tenant_contacts(s, tenant) for s in range(self.keys.shards)]
        cursor = None if after is None else listing_member(after)
        members, more = await self.store.merged_range(index, cursor, limit)
        page = [unprefixed_id(m) for m in members]
        pipe = self.store.client.pipeline(transaction=False)
        for cid in page:
            pipe.hgetall(self.keys.contact(self._shard(cid), cid))
        rows = await pipe.execute()
        data = [codec.contact(cid, h) for cid, h in zip(page, rows, strict=True) if h]
        total = await self.store.total(index)
        return data, (page[-1] if more and page else None), total
