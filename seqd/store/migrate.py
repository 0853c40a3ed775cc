"""Schema migrations, run by `Store.open` before anything else touches the data.

Schema 2 (this version): an active enrollment is one member of its sequence's queue per
shard (keys.py "queue"), found through the shard's heads; schema 1 had one due index per
shard, the items of paused sequences parked aside, and an active listing per sequence.
"""

from __future__ import annotations

from seqd.store import calls
from seqd.store import keys as keymod
from seqd.store.context import StoreContext

SCHEMA = 2

# Members one migration call moves at most: bounds how long it holds Redis.
STEP = 1000


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


async def upgrade(store: StoreContext, schema: int) -> None:
    """Bring a store at `schema` to SCHEMA (the caller then records it).

    Also at schema 2: a seqd of schema 1 still running beside a new one (an upgrade that
    did not stop every process first) writes due items the new one would never read, so
    every start moves what such a process left (one EXISTS per shard when there is none).
    """
    if schema < 2 or await _v1_left(store):
        await to_queues(store)


async def _v1_left(store: StoreContext) -> bool:
    keys = store.keys
    pipe = store.client.pipeline(transaction=False)
    for shard in range(keys.shards):
        pipe.exists(keymod.V1_SHARD_DUE.format(tag=keys.shard_tag(shard)))
    return any(await pipe.execute())
