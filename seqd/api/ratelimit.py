"""Per-API-key rate limit: a middleware after auth, one EVALSHA per authenticated request.

The count lives in Redis (`store/ratelimits.py`, GCRA), so every seqd process sharing the
store enforces one limit per key. Over the limit is a 429 problem with `Retry-After`; every
answer to an authenticated request, errors included, carries the IETF draft's
`RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds until the quota
is whole again) and `RateLimit-Policy`.
"""

from __future__ import annotations

import math

from aiohttp import web

from seqd.api.appkeys import CONFIG, KEY_DIGEST, RATE_HEADERS, STORE, TENANT
from seqd.api.problems import problem
from seqd.api.routing import Handler
from seqd.config import Config, RateLimitConfig
from seqd.times import now_ms


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


@web.middleware
async def ratelimit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    digest = request.get(KEY_DIGEST)
    if digest is None:  # not an authenticated route
        return await handler(request)
    rule = limit_for(request.app[CONFIG], request[TENANT])
    if not rule.enabled:
        return await handler(request)
    verdict = await request.app[STORE].ratelimits.take(
        digest, limit=rule.limit, period_ms=rule.period_seconds * 1000, now=now_ms()
    )
    request[RATE_HEADERS] = {
        "RateLimit-Limit": str(rule.limit),
        "RateLimit-Remaining": str(verdict.remaining),
        "RateLimit-Reset": str(math.ceil(verdict.reset_ms / 1000)),
        "RateLimit-Policy": f"{rule.limit};w={rule.period_seconds}",
    }
    if not verdict.allowed:
        wait = max(1, math.ceil(verdict.retry_after_ms / 1000))
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
