"""Per-API-key request limits: the one `limitRate` call (GCRA, seqd/store/lua/limitRate-1.lua)."""

from __future__ import annotations

import msgspec

from seqd.store import calls
from seqd.store.context import StoreContext


class Verdict(msgspec.Struct, frozen=True):
    """One request's answer from the limiter; times in ms."""

    allowed: bool
    limit: int
    remaining: int
    retry_after_ms: int
    reset_ms: int


class RateLimits:
    def __init__(self, store: StoreContext) -> None:
        self.store = store

    async def take(
        self, key_digest: str, *, limit: int, period_ms: int, now: int, cost: int = 1
    ) -> Verdict:
        """Count `cost` requests of the key whose sha256 is `key_digest` (all or none): one
        EVALSHA."""
        allowed, remaining, retry_after, reset = await self.store.runner.run(
            calls.limit_rate(self.store.keys, key_digest, now, limit, period_ms, cost)
        )
        return Verdict(bool(allowed), limit, int(remaining), int(retry_after), int(reset))
