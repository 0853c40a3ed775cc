"""Schema migrations, run by `Store.open` before anything else touches the data.

Schema 2: an active enrollment is one member of its sequence's queue per shard (keys.py
"queue"), found through the shard's heads; schema 1 had one due index per shard, the items
of paused sequences parked aside, and an active listing per sequence.

Schema 3 (this version): a tenant's contact listing (keys.py "tenant_contacts") holds
contact ids without their prefix ("con_"), as the lookup indexes do: 16 B less a contact.
"""

from __future__ import annotations

from seqd.store import calls
from seqd.store import keys as keymod
from seqd.store.context import StoreContext

SCHEMA = 3

# Members one migration call moves at most: bounds how long it holds Redis.
STEP = 1000
# Migration calls sent in one round trip at most.
ROUND = 256


async def to_queues(store: StoreContext) -> int:
    """Move every shard's schema 1 due index and parked items into the queues; returns the
    members moved."""
    keys = store.keys
    moved = 0
    for shard in range(keys.shards):
        tag = keys.shard_tag(shard)
        due, parked = keymod.V1_SHARD_DUE.format(tag=tag), keymod.V1_PARKED.format(tag=tag)
        move = calls.migrate_queues(keys, shard, due, parked, STEP)
        done = 0
        while not done:
            done, count = await store.runner.run(move)
            moved += int(count)
    return moved


async def contact_lists(store: StoreContext) -> int:
    """Rewrite every tenant's contact listings' whole ids (schema 2) without their prefix;
    returns the members moved. A listing with none costs one call."""
    keys = store.keys
    tenants: set[str] = await store.client.smembers(keys.tenants())  # type: ignore[assignment]
    moved = 0
    steps = [
        calls.migrate_contact_list(keys, shard, tenant, STEP)
        for tenant in sorted(tenants)
        for shard in range(keys.shards)
    ]
    while steps:
        batch, steps = steps[:ROUND], steps[ROUND:]
        for step, result in zip(batch, await store.runner.call_many(batch), strict=True):
            if isinstance(result, Exception):
                raise result
            done, count = result
            moved += int(count)
            if not done:
                steps.append(step)
    return moved


async def upgrade(store: StoreContext, schema: int) -> None:
    """Bring a store at `schema` to SCHEMA (the caller then records it).

    Also at the current schema: a seqd of an older schema still running beside a new one
    (an upgrade that did not stop every process first) writes what the new one would not
    read (schema 1 due items, schema 2 listing members), so every start moves what such a
    process left (one EXISTS per shard, one call per tenant and shard, when there is none).
    """
    if schema < 2 or await _v1_left(store):
        await to_queues(store)
    await contact_lists(store)


async def _v1_left(store: StoreContext) -> bool:
    keys = store.keys
    pipe = store.client.pipeline(transaction=False)
    for shard in range(keys.shards):
        pipe.exists(keymod.V1_SHARD_DUE.format(tag=keys.shard_tag(shard)))
    return any(await pipe.execute())
