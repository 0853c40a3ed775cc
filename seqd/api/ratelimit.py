"""Per-API-key rate limit: a middleware after auth, counted in Redis and taken ahead of use.

The count lives in Redis (`store/ratelimits.py`, GCRA), so every seqd process sharing the
store enforces one limit per key. A key that keeps a process busy does not pay a round trip
per request: the process takes a lease of several requests at once (all or none) and
spends them locally. A lease starts at one request and doubles each time the last one was
spent within a second, up to one second of the key's quota; a key used less often is
counted one request at a time, exactly as before. Requests taken ahead are charged early,
never late, so the limit is never exceeded; at most one lease per process is charged and
never used (when the key goes quiet or the process stops).

Over the limit is a 429 problem with `Retry-After`; every answer to an authenticated
request, errors included, carries the IETF draft's `RateLimit-Limit`, `RateLimit-Remaining`
(the limiter's count at the last take, plus what this process holds unspent) and
`RateLimit-Reset` (seconds until the quota is whole again) and `RateLimit-Policy`.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

from aiohttp import web

from seqd.api.appkeys import KEY_DIGEST, RATE_HEADERS, RATE_LEASES, TENANT
from seqd.api.problems import problem
from seqd.api.routing import Handler
from seqd.appkeys import CONFIG, STORE
from seqd.config import Config, RateLimitConfig
from seqd.store.ratelimits import Verdict
from seqd.times import now_ms

# A lease grows when the previous one was spent within this window.
QUICK_MS = 1_000


@dataclass(slots=True)
class Lease:
    """Requests of one key this process has taken from the shared limit."""

    # Taken and not spent yet.
    tokens: int = 0
    # How many the next take asks for.
    size: int = 1
    # The limiter's answer at the last take: requests remaining, ms the quota is whole at.
    remaining: int = 0
    whole_at: int = 0
    taken_at: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def limit_for(config: Config, tenant: str) -> RateLimitConfig:
    """[ratelimit], with what [tenants.<tenant>.ratelimit] sets over it."""
    base = config.ratelimit
    own = config.tenants.get(tenant)
    if own is None:
        return base
    over = own.ratelimit
    return RateLimitConfig(
        enabled=base.enabled if over.enabled is None else over.enabled,
        limit=over.limit or base.limit,
        period_seconds=over.period_seconds or base.period_seconds,
    )


async def _refill(
    request: web.Request, digest: str, rule: RateLimitConfig, lease: Lease
) -> Verdict:
    """Take the next lease from Redis: `lease.size` requests when the limiter had that many
    left at the last take, else (or when refused) one."""
    take = request.app[STORE].ratelimits.take
    cap = max(1, rule.limit // rule.period_seconds)
    size = min(lease.size, cap)
    if size > lease.remaining:
        size = 1
    now = now_ms()
    period_ms = rule.period_seconds * 1000
    verdict = await take(digest, limit=rule.limit, period_ms=period_ms, now=now, cost=size)
    if not verdict.allowed and size > 1:
        size = 1
        verdict = await take(digest, limit=rule.limit, period_ms=period_ms, now=now)
    if verdict.allowed:
        quick = now - lease.taken_at < QUICK_MS
        lease.tokens = size
        lease.size = min(cap, size * 2) if quick else 1
        lease.taken_at = now
    else:
        lease.size = 1
    lease.remaining = verdict.remaining
    lease.whole_at = now + verdict.reset_ms
    return verdict


@web.middleware
async def ratelimit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    digest = request.get(KEY_DIGEST)
    if digest is None:  # not an authenticated route
        return await handler(request)
    rule = limit_for(request.app[CONFIG], request[TENANT])
    if not rule.enabled:
        return await handler(request)
    leases: dict[str, Lease] = request.app[RATE_LEASES]
    lease = leases.get(digest)
    if lease is None:
        lease = leases[digest] = Lease()
    refused: Verdict | None = None
    if lease.tokens == 0:
        async with lease.lock:
            if lease.tokens == 0:
                verdict = await _refill(request, digest, rule, lease)
                if not verdict.allowed:
                    refused = verdict
    if refused is None:
        lease.tokens -= 1
    request[RATE_HEADERS] = {
        "RateLimit-Limit": str(rule.limit),
        "RateLimit-Remaining": str(min(rule.limit, lease.remaining + lease.tokens)),
        "RateLimit-Reset": str(math.ceil(max(0, lease.whole_at - now_ms()) / 1000)),
        "RateLimit-Policy": f"{rule.limit};w={rule.period_seconds}",
    }
    if refused is not None:
        wait = max(1, math.ceil(refused.retry_after_ms / 1000))
        return problem(
            429,
            "rate_limited",
            "Too many requests",
            f"this API key may make {rule.limit} requests per {rule.period_seconds} s; "
            f"retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    return await handler(request)


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the RateLimit-* headers on every answer, errors included."""
    headers = request.get(RATE_HEADERS)
    if headers:
        response.headers.update(headers)
