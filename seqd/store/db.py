"""The Store: one Redis client, the deployment's key builder, and a facade per resource
(each built on the `StoreContext` the Store is)."""

from __future__ import annotations

import secrets

from redis.exceptions import WatchError

from seqd.store import keys as keymod
from seqd.store import migrate
from seqd.store.client import Client, connect
from seqd.store.contacts import Contacts
from seqd.store.context import StoreContext
from seqd.store.deliveries import Deliveries
from seqd.store.enrollment_search import EnrollmentSearch
from seqd.store.enrollments import Enrollments
from seqd.store.events import Events
from seqd.store.forecast import Forecasts
from seqd.store.keys import Keys
from seqd.store.lifecycle import Lifecycle
from seqd.store.mailboxes import Mailboxes
from seqd.store.outbox import Outbox
from seqd.store.ratelimits import RateLimits
from seqd.store.replays import Replays
from seqd.store.schedules import Schedules
from seqd.store.senders import SenderRecords
from seqd.store.sequences import Sequences
from seqd.store.settings import TenantSettingsStore
from seqd.store.suppressions import Suppressions
from seqd.store.tenants import Tenants
from seqd.store.webhooks import Webhooks

__all__ = ["Store", "connect", "init_meta"]


async def init_meta(client: Client, prefix: str, default_shards: int) -> tuple[int, int, bool]:
    """Fix the shard count, the schema and the shard tags on first use of a store; later
    starts read them back: (shards, schema, whether the shard tags spread).

    A new store's shard tags spread over the cluster slots (keys.spread_tags); one made
    before keeps `{<prefix>:<shard>}`. The three are written at once (WATCH, MULTI: one
    key), so a process starting beside the first never takes a half-made store for an old
    one."""
    meta = Keys(prefix, 1).meta()
    async with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(meta)
                shards, schema, tags = await pipe.hmget(meta, ["shards", "schema", "tags"])
                if shards is not None:
                    return int(shards), int(schema or 1), tags == keymod.SPREAD
                pipe.multi()  # type: ignore[no-untyped-call]
                made: list[str | int] = [
                    *("shards", default_shards),
                    *("schema", migrate.SCHEMA),
                    *("tags", keymod.SPREAD),
                ]
                pipe.hset(meta, items=made)
                await pipe.execute()
                return default_shards, migrate.SCHEMA, True
            except WatchError:
                continue


class Store(StoreContext):
    """Facade over Redis; construct with `await Store.open(...)`."""

    def __init__(self, client: Client, keys: Keys) -> None:
        super().__init__(client, keys)
        self.tenants = Tenants(self)
        self.contacts = Contacts(self)
        self.sequences = Sequences(self)
        self.enrollments = Enrollments(self)
        self.suppressions = Suppressions(self)
        self.lifecycle = Lifecycle(self, self.sequences)
        self.events = Events(self)
        self.outbox = Outbox(self)
        self.ratelimits = RateLimits(self)
        self.deliveries = Deliveries(self)
        self.webhooks = Webhooks(self, self.deliveries)
        self.replays = Replays(self)
        self.schedules = Schedules(self)
        self.mailboxes = Mailboxes(self)
        self.senders = SenderRecords(self)
        self.settings = TenantSettingsStore(self)
        self.forecasts = Forecasts(self)
        self.enrollment_search = EnrollmentSearch(self, self.enrollments, self.sequences)

    @classmethod
    async def open(cls, client: Client, prefix: str, default_shards: int) -> Store:
        shards, schema, spread = await init_meta(client, prefix, default_shards)
        store = cls(client, Keys(prefix, shards, spread=spread))
        await store.runner.load_all()
        await migrate.upgrade(store, schema)
        if schema < migrate.SCHEMA:
            await client.hset(Keys(prefix, 1).meta(), "schema", migrate.SCHEMA)
        return store

    async def secret(self, name: str) -> str:
        """The secret `name` of this store: generated on first use and kept in its meta key,
        so every process sharing the store agrees and it outlives restarts."""
        meta = self.keys.meta()
        await self.client.hsetnx(meta, name, secrets.token_urlsafe(32))
        return str(await self.client.hget(meta, name))

    async def close(self) -> None:
        await self.client.aclose()
