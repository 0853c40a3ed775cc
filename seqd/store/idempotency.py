"""Stored POST responses by Idempotency-Key, per tenant (`keys.idempotency`).

One STRING per key: while the first request runs it holds that request's claim (its
fingerprint and a random owner token) with a short TTL, so a process that died mid-request
frees the key; once it is answered, the response, kept for the replay window. Writes after
the claim check the owner under WATCH, so a request that outlived its claim cannot
overwrite the answer of the one that took the key over.
"""

from __future__ import annotations

import secrets

import msgspec
from redis.exceptions import WatchError

from seqd.store.context import StoreContext


class IdempotencyRecord(msgspec.Struct, omit_defaults=True):
    # sha256 of method, path and body.
    fp: str
    # The running request's token; empty once answered.
    owner: str = ""
    status: int = 0
    content_type: str = ""
    body: str = ""


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(IdempotencyRecord).decode


class Claim(msgspec.Struct, frozen=True):
    key: str
    value: str


class IdempotencyKeys:
    def __init__(self, store: StoreContext) -> None:
        self.client = store.client
        self.keys = store.keys

    async def claim(
        self, tenant: str, key_digest: str, fp: str, lock_seconds: int
    ) -> Claim | IdempotencyRecord:
        """Take the key for a new request (a Claim), or the record already under it."""
        key = self.keys.idempotency(tenant, key_digest)
        value = _encode(IdempotencyRecord(fp=fp, owner=secrets.token_hex(8))).decode()
        while True:
            if await self.client.set(key, value, nx=True, ex=lock_seconds):
                return Claim(key, value)
            raw = await self.client.get(key)
            if raw is not None:  # else it expired between the two calls: try again
                return _decode(raw)

    async def _swap(self, claim: Claim, new: str | None, ttl_seconds: int) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(claim.key)
                if await pipe.get(claim.key) != claim.value:
                    return  # our claim expired and someone else holds the key now
                pipe.multi()  # type: ignore[no-untyped-call]
                if new is None:
                    pipe.delete(claim.key)
                else:
                    pipe.set(claim.key, new, ex=ttl_seconds)
                await pipe.execute()
            except WatchError:
                return

    async def answer(
        self, claim: Claim, fp: str, status: int, content_type: str, body: str, ttl_seconds: int
    ) -> None:
        record = IdempotencyRecord(fp=fp, status=status, content_type=content_type, body=body)
        await self._swap(claim, _encode(record).decode(), ttl_seconds)

    async def release(self, claim: Claim) -> None:
        """Free the key of a request that produced no answer to keep (a 5xx, a crash)."""
        await self._swap(claim, None, 0)
