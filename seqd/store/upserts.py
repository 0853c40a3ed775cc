"""Contacts by their fields rather than their id: match by external_id, then phone, then
email; update the match with what differs, or create a contact when nothing matches. A
row matched by phone or email to a contact with another external_id is a conflict, not a
takeover of that contact.

Every path that takes inline contacts uses this (enrollments with `contact`, the intake
stream, the CSV import), a batch at a time in a fixed number of round trips, each a few
commands whatever the batch's size: the lookups (one HMGET per index), the matched
contacts, then one `linkContacts` call for the new ones and one `createContacts` call per
shard (a reply per command costs the client more than the command costs the server). A
row that loses a race for one of its values (to another writer, or to an earlier row of
the same batch) falls back to the one-row path, which then finds the contact that won. A
row equal to its match writes nothing, so running the same rows twice changes nothing the
second time.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, Literal

import msgspec

from seqd import ids, models
from seqd.errors import Conflict, NotFound
from seqd.store import calls, codec
from seqd.store.contacts import lookup_owner, with_account
from seqd.store.db import Store
from seqd.times import now_ms, to_rfc3339

# The order in which a row's values pick its contact.
MATCH_ORDER = ("external_id", "phone", "email")
Change = Literal["created", "updated", "unchanged"]
# One-row fallbacks a row may go through when its values keep being taken meanwhile.
_RETRIES = 3


# An existing contact a row matched: id, stored hash, and the field it matched by.
Match = tuple[str, dict[str, str], str]


class Upserted(msgspec.Struct, frozen=True):
    contact: models.Contact
    change: Change


def changes(row: dict[str, Any], current: dict[str, str]) -> dict[str, Any]:
    """What `row` would change in the stored contact `current`; attributes are merged."""
    out: dict[str, Any] = {}
    for name, value in row.items():
        if name == "attributes":
            stored = codec.decode_json(current["attributes"]) if current.get("attributes") else {}
            merged = {**stored, **value}
            if merged != stored:
                out[name] = merged
        elif current.get(name) != str(value):
            out[name] = value
    return out


def mismatch(row: dict[str, Any], match: Match) -> Conflict | None:
    """A row matched by phone or email to a contact with another external_id: two records
    of the caller's system for one person, which is for a person to sort out."""
    cid, current, by = match
    theirs, ours = current.get("external_id"), row.get("external_id")
    if by == "external_id" or not theirs or not ours or theirs == ours:
        return None
    return Conflict(
        f"{by} already belongs to contact {cid} (external_id {theirs})", field=by, contact_id=cid
    )


async def _matches(store: Store, tenant: str, rows: list[dict[str, Any]]) -> list[Match | None]:
    """Each row's existing contact (id, stored hash, field matched by), if one matches."""
    keys = store.keys
    asked = {name: [(i, row[name]) for i, row in enumerate(rows) if row.get(name)]
             for name in MATCH_ORDER}  # fmt: skip
    asked = {name: values for name, values in asked.items() if values}
    pipe = store.client.pipeline(transaction=False)
    for name, values in asked.items():
        pipe.hmget(keys.contact_lookup(tenant, name), [value for _, value in values])
    owners: dict[tuple[int, str], str | None] = {}
    replies_by_name = await pipe.execute() if asked else []
    for (name, values), replies in zip(asked.items(), replies_by_name, strict=True):
        owners.update(
            ((i, name), lookup_owner(owner))
            for (i, _), owner in zip(values, replies, strict=True)
            if owner
        )
    if not owners:  # all new (a load of new contacts): nothing to read
        return [None] * len(rows)
    # In MATCH_ORDER within a row.
    rank = {name: k for k, name in enumerate(MATCH_ORDER)}
    probes = sorted(owners, key=lambda probe: (probe[0], rank[probe[1]]))
    found = [owners[probe] for probe in probes]
    candidates = sorted({c for c in found if c and ids.is_valid(c, ids.CONTACT)})
    pipe = store.client.pipeline(transaction=False)
    for cid in candidates:
        pipe.hgetall(keys.contact(ids.shard_of(cid, keys.shards), cid))
    hashes = dict(zip(candidates, await pipe.execute() if candidates else [], strict=True))
    out: list[Match | None] = [None] * len(rows)
    # Probes are in MATCH_ORDER within a row, so the first live one wins; an index entry
    # left pointing at a deleted contact is skipped.
    for (i, by), owner in zip(probes, found, strict=True):
        if out[i] is None and owner in hashes and hashes[owner].get("tenant") == tenant:
            out[i] = (owner, hashes[owner], by)
    return out


async def _create_many(
    store: Store, tenant: str, rows: list[dict[str, Any]]
) -> list[models.Contact | None]:
    """New contacts for rows that matched none; None where a value was taken meanwhile."""
    keys = store.keys
    now = now_ms()
    # Row i goes to shard (first + i) % shards, `first` drawn at random: ids made a shard at
    # a time (one random read each), spread as evenly as random ids would be. Made at `now`:
    # the time in a contact's id is its created_at (store/codec.py `contact`).
    shards = keys.shards
    first = random.randrange(shards)
    home = [(first + i) % shards for i in range(len(rows))]
    new_ids = [""] * len(rows)
    for step in range(min(shards, len(rows))):
        count = len(range(step, len(rows), shards))
        made = ids.many_in_shard(ids.CONTACT, home[step], shards, count, now)
        new_ids[step::shards] = made
    links = await store.runner.run(
        calls.link_contacts(keys, tenant, zip(new_ids, rows, strict=True))
    )
    stamp = to_rfc3339(now)
    by_shard: dict[int, list[tuple[str, list[str]]]] = {}
    out: list[models.Contact | None] = [None] * len(rows)
    for i, reply in enumerate(links):
        if reply == []:
            row = with_account(rows[i])
            by_shard.setdefault(home[i], []).append((new_ids[i], codec.contact_values(row)))
            # What codec.contact reads back from the hash createContacts writes.
            out[i] = models.Contact(
                id=new_ids[i],
                attributes=row.get("attributes") or {},
                created_at=stamp,
                updated_at=stamp,
                **{f: row.get(f) for f in codec.CONTACT_TEXT_FIELDS},
            )
    created = await store.runner.call_many(
        [
            calls.create_contacts(keys, shard, now, tenant, batch)
            for shard, batch in by_shard.items()
        ]
    )
    for reply in created:
        if isinstance(reply, Exception):
            raise reply
    return out


async def _update(
    store: Store, tenant: str, cid: str, diff: dict[str, Any]
) -> Upserted | Conflict | None:
    try:
        return Upserted(await store.contacts.update(tenant, cid, diff), "updated")
    except Conflict as exc:
        return exc
    except NotFound:  # deleted since it was matched: the one-row path decides again
        return None


async def upsert_one(store: Store, tenant: str, row: dict[str, Any]) -> Upserted | Conflict:
    """One row, retried while its values are being taken by concurrent writers."""
    last = Conflict("the contact kept changing while it was being upserted; try again")
    for _ in range(_RETRIES):
        [match] = await _matches(store, tenant, [row])
        if match is not None:
            cid, current, _ = match
            clash = mismatch(row, match)
            if clash is not None:
                return clash
            diff = changes(row, current)
            if not diff:
                return Upserted(codec.contact(cid, current), "unchanged")
            result = await _update(store, tenant, cid, diff)
            if result is not None:
                return result
            continue
        try:
            return Upserted(await store.contacts.create(tenant, row), "created")
        except Conflict as exc:
            last = exc  # created by someone else since the lookup: match it next time
    return last


async def upsert_many(
    store: Store, tenant: str, rows: list[dict[str, Any]]
) -> list[Upserted | Conflict]:
    """Upsert each row (validated, normalised contact fields); a Conflict names the field
    whose value belongs to another contact than the one the row matched."""
    out: list[Upserted | Conflict | None] = [None] * len(rows)
    matches = await _matches(store, tenant, rows)
    fresh: list[int] = []
    updates: list[tuple[int, str, dict[str, Any]]] = []
    for i, (row, match) in enumerate(zip(rows, matches, strict=True)):
        if match is None:
            fresh.append(i)
            continue
        cid, current, _ = match
        clash = mismatch(row, match)
        diff = changes(row, current)
        if clash is not None:
            out[i] = clash
        elif diff:
            updates.append((i, cid, diff))
        else:
            out[i] = Upserted(codec.contact(cid, current), "unchanged")
    if fresh:
        created = await _create_many(store, tenant, [rows[i] for i in fresh])
        for i, contact in zip(fresh, created, strict=True):
            if contact is not None:
                out[i] = Upserted(contact, "created")
    if updates:
        done = await asyncio.gather(*(_update(store, tenant, c, d) for _, c, d in updates))
        for (i, _, _), result in zip(updates, done, strict=True):
            out[i] = result
    # Rows that lost a race, in order, so a later duplicate finds what an earlier one made.
    for i, result in enumerate(out):
        if result is None:
            out[i] = await upsert_one(store, tenant, rows[i])
    return [r for r in out if r is not None]
