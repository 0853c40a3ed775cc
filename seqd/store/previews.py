"""A preview's scratch copies of what the dispatcher's budget scripts read: the tenant's
senders' budgets (under a scratch tenant name) and the contact's frequency-cap windows
(under a scratch contact id in the contact's shard). The preview runs `takeBudget` and
`takeFrequency` on them step after step, as the dispatcher would at each step's moment,
so it charges nothing real; the copies expire on their own if the preview dies first."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import NamedTuple

from seqd.kinds import Kind
from seqd.store.context import StoreContext

# A scratch copy outlives its preview by at most this long.
SCRATCH_MS = 60_000
_BUDGET_FIELDS = ("s", "h", "g", "d")


class Scratch(NamedTuple):
    """Names the copies go under: the tenant whose budgets key holds the budget copy (for
    the real tenant `owner`), the contact whose frequency keys hold the windows' copies,
    the shard of the latter, and the kinds copied."""

    owner: str
    tenant: str
    contact: str
    shard: int
    kinds: tuple[Kind, ...]


async def open_scratch(
    store: StoreContext,
    tenant: str,
    senders: Iterable[str],
    pools: Iterable[str],
    shard: int,
    contact_id: str | None,
    kinds: Iterable[Kind],
) -> Scratch:
    """Copy the budgets of `senders` and the cursors of `pools` (rotation pool names), and
    the windows of `kinds` of `contact_id` (None: a contact with no messages yet)."""
    mark = secrets.token_hex(6)
    scratch = Scratch(tenant, f"{tenant}~preview~{mark}", f"preview~{mark}", shard, tuple(kinds))
    client, keys = store.client, store.keys
    fields = [f"{sid}:{f}" for sid in senders for f in _BUDGET_FIELDS]
    fields += [f"rr:{pool}" for pool in pools]
    if fields:
        values = await client.hmget(keys.sender_budgets(tenant), fields)
        found = [x for f, v in zip(fields, values, strict=True) if v is not None for x in (f, v)]
        if found:
            copy = keys.sender_budgets(scratch.tenant)
            await client.hset(copy, items=found)
            await client.pexpire(copy, SCRATCH_MS)
    if contact_id is not None:
        for kind in scratch.kinds:
            members = await client.zrange(
                keys.frequency(shard, contact_id, kind), 0, -1, withscores=True
            )
            if members:
                copy = keys.frequency(shard, scratch.contact, kind)
                await client.zadd(copy, {str(m): float(score) for m, score in members})  # type: ignore[str-unpack]
                await client.pexpire(copy, SCRATCH_MS)
    return scratch


async def close_scratch(store: StoreContext, scratch: Scratch) -> None:
    keys = store.keys
    await store.client.delete(keys.sender_budgets(scratch.tenant))
    for kind in scratch.kinds:
        await store.client.delete(keys.frequency(scratch.shard, scratch.contact, kind))
