"""Tenants and their API keys. Keys are stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import time

import msgspec

from seqd import ids
from seqd.models import ApiKey
from seqd.store.context import StoreContext
from seqd.times import now_ms, to_rfc3339

TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_ALPHABET = string.ascii_letters + string.digits
# 32 base62 characters: about 190 bits.
SECRET_CHARS = 32
DEFAULT_TENANT = "default"
# How long a process trusts a key -> tenant answer it read: authenticating is then no round
# trip for a busy key, and a key revoked elsewhere (another process, the CLI) stops
# working within this time (at once in the process that revoked it).
AUTH_CACHE_SECONDS = 1.0
# Keys remembered at most; the cache starts over when full.
AUTH_CACHE_MAX = 10_000


# Meta hash fields: the first key has been shown; its secret until then.
_BOOTSTRAPPED = "bootstrapped"
_BOOTSTRAP_SECRET = "bootstrap_secret"


def _new_secret(test: bool) -> str:
    return ("sk_test_" if test else "sk_live_") + "".join(
        secrets.choice(_ALPHABET) for _ in range(SECRET_CHARS)
    )


class KeyRecord(msgspec.Struct):
    id: str
    tenant: str
    label: str
    prefix: str
    created_at: int


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(KeyRecord).decode


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def valid_tenant(name: str) -> bool:
    return bool(TENANT_RE.match(name))


class Tenants:
    def __init__(self, store: StoreContext) -> None:
        self.store = store
        self.keys = store.keys
        self.client = store.client
        # digest -> (tenant, monotonic time until which it may be used); valid keys only.
        self._known: dict[str, tuple[str, float]] = {}

    async def ensure(self, tenant: str) -> None:
        await self.client.sadd(self.keys.tenants(), tenant)

    async def names(self) -> set[str]:
        """Every tenant the store knows: given a key, or written to by a configured one."""
        found: set[str] = await self.client.smembers(self.keys.tenants())  # type: ignore[assignment]
        return found

    async def exists(self, tenant: str) -> bool:
        return bool(await self.client.sismember(self.keys.tenants(), tenant))

    async def create_key(
        self, tenant: str, label: str = "", *, test: bool = False
    ) -> tuple[ApiKey, str]:
        """A new key for `tenant`; the secret is returned once and never stored."""
        secret = _new_secret(test)
        return await self._add_key(tenant, label, secret), secret

    async def _add_key(self, tenant: str, label: str, secret: str) -> ApiKey:
        record = KeyRecord(
            id=ids.new(ids.API_KEY),
            tenant=tenant,
            label=label,
            prefix=secret[:12],
            created_at=now_ms(),
        )
        digest = hash_key(secret)
        pipe = self.client.pipeline(transaction=True)
        pipe.sadd(self.keys.tenants(), tenant)
        pipe.hset(self.keys.api_keys(), digest, _encode(record))
        pipe.hset(self.keys.api_key_ids(), record.id, digest)
        await pipe.execute()
        return self._public(record)

    async def authenticate(self, secret: str) -> str | None:
        """The tenant a key belongs to. The lookup is by hash, so timing reveals nothing of it.
        A valid key's answer is reused for AUTH_CACHE_SECONDS."""
        digest = hash_key(secret)
        now = time.monotonic()
        known = self._known.get(digest)
        if known is not None and known[1] > now:
            return known[0]
        raw = await self.client.hget(self.keys.api_keys(), digest)
        if not raw:
            self._known.pop(digest, None)
            return None
        tenant = _decode(raw).tenant
        if len(self._known) >= AUTH_CACHE_MAX:
            self._known.clear()
        self._known[digest] = (tenant, now + AUTH_CACHE_SECONDS)
        return tenant

    async def all_keys(self) -> list[ApiKey]:
        raw = await self.client.hgetall(self.keys.api_keys())
        return sorted((self._public(_decode(v)) for v in raw.values()), key=lambda k: k.id)

    async def list_keys(self, tenant: str) -> list[ApiKey]:
        return [k for k in await self.all_keys() if k.tenant == tenant]

    async def revoke(self, key_id: str) -> bool:
        digest = await self.client.hget(self.keys.api_key_ids(), key_id)
        if digest is None:
            return False
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.keys.api_keys(), digest)
        pipe.hdel(self.keys.api_key_ids(), key_id)
        await pipe.execute()
        self._known.pop(str(digest), None)
        return True

    async def bootstrap(self) -> str | None:
        """Until a start has shown it (`bootstrap_shown`): tenant `default`'s first key.

        The secret is kept in the meta hash only until then, so a start that created it and
        died before showing it (or whose output was lost) leaves it to the next start to
        show; the first writer's secret wins when two processes start at once."""
        meta = self.keys.meta()
        if await self.client.hexists(meta, _BOOTSTRAPPED):
            return None
        await self.client.hsetnx(meta, _BOOTSTRAP_SECRET, _new_secret(False))
        secret = str(await self.client.hget(meta, _BOOTSTRAP_SECRET))
        if not await self.client.hexists(self.keys.api_keys(), hash_key(secret)):
            await self._add_key(DEFAULT_TENANT, "created on first start", secret)
        return secret

    async def bootstrap_shown(self) -> None:
        """The first key has been shown: forget its secret, and never show one again."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.keys.meta(), _BOOTSTRAPPED, now_ms())
        pipe.hdel(self.keys.meta(), _BOOTSTRAP_SECRET)
        await pipe.execute()

    @staticmethod
    def _public(record: KeyRecord) -> ApiKey:
        return ApiKey(
            id=record.id,
            tenant=record.tenant,
            label=record.label,
            prefix=record.prefix,
            created_at=to_rfc3339(record.created_at),
        )
