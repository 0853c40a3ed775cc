"""The per-key rate limit: the GCRA script (real valkey and fakeredis), 429 and headers
over HTTP, per-tenant settings, and two app instances sharing one limit."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer

from seqd.api.app import create_app
from seqd.api.ratelimit import limit_for
from seqd.config import Config, RateLimitConfig, TenantConfig, TenantRateLimit
from seqd.store.db import Store

NOW = 1_800_000_000_000


async def test_script_allows_the_limit_then_refuses(any_store: Store) -> None:
    take = any_store.ratelimits.take
    seen = [await take("k1", limit=5, period_ms=10_000, now=NOW) for _ in range(5)]
    assert [v.allowed for v in seen] == [True] * 5
    assert [v.remaining for v in seen] == [4, 3, 2, 1, 0]
    assert seen[-1].reset_ms == 10_000
    refused = await take("k1", limit=5, period_ms=10_000, now=NOW)
    assert not refused.allowed and refused.remaining == 0
    # One request comes back every period / limit = 2 s.
    assert refused.retry_after_ms == 2_000
    assert not (await take("k1", limit=5, period_ms=10_000, now=NOW + 1_999)).allowed
    again = await take("k1", limit=5, period_ms=10_000, now=NOW + 2_000)
    assert again.allowed and again.remaining == 0
    # Another key has its own quota.
    assert (await take("k2", limit=5, period_ms=10_000, now=NOW)).remaining == 4


async def test_script_restores_the_whole_quota_after_a_period(any_store: Store) -> None:
    take = any_store.ratelimits.take
    for _ in range(3):
        await take("k", limit=3, period_ms=3_000, now=NOW)
    assert not (await take("k", limit=3, period_ms=3_000, now=NOW)).allowed
    later = await take("k", limit=3, period_ms=3_000, now=NOW + 3_000)
    assert later.allowed and later.remaining == 2
    # The key expires once the quota is whole again: no state left for idle keys.
    key = any_store.keys.rate_limit("k")
    assert 0 < await any_store.client.pttl(key) <= 1_000


async def test_default_rate_is_fractional_interval(any_store: Store) -> None:
    """100,000 per 300 s is one request per 3 ms; a burst of the whole quota is allowed."""
    take = any_store.ratelimits.take
    first = await take("d", limit=100_000, period_ms=300_000, now=NOW)
    assert first.allowed and first.remaining == 99_999


def test_tenant_settings_override_the_defaults() -> None:
    config = Config(
        ratelimit=RateLimitConfig(limit=50, period_seconds=60),
        tenants={
            "small": TenantConfig(ratelimit=TenantRateLimit(limit=5)),
            "free": TenantConfig(ratelimit=TenantRateLimit(enabled=False)),
        },
    )
    assert limit_for(config, "small") == RateLimitConfig(limit=5, period_seconds=60)
    assert not limit_for(config, "free").enabled
    assert limit_for(config, "other") == RateLimitConfig(limit=50, period_seconds=60)


def _config(limit: int) -> Config:
    return Config(tenants={"acme": TenantConfig(ratelimit=TenantRateLimit(limit=limit))})


async def test_429_with_retry_after_and_ratelimit_headers(store: Store) -> None:
    _, key = await store.tenants.create_key("acme")
    auth = {"Authorization": f"Bearer {key}"}
    async with TestClient(TestServer(create_app(_config(3), store))) as client:
        answers = [await client.get("/v1/contacts", headers=auth) for _ in range(3)]
        assert [r.status for r in answers] == [200, 200, 200]
        assert [r.headers["RateLimit-Remaining"] for r in answers] == ["2", "1", "0"]
        assert answers[0].headers["RateLimit-Limit"] == "3"
        assert answers[0].headers["RateLimit-Policy"] == "3;w=300"
        assert 0 < int(answers[0].headers["RateLimit-Reset"]) <= 300
        # Errors of a counted request carry the headers too.
        missing = await client.get("/v1/contacts/con_nope", headers=auth)
        assert missing.status == 429
        assert missing.content_type == "application/problem+json"
        body = await missing.json(content_type=None)
        assert body["type"] == "urn:seqd:problem:rate_limited" and body["status"] == 429
        assert int(missing.headers["Retry-After"]) == 100  # 300 s / 3
        assert missing.headers["RateLimit-Remaining"] == "0"
        # Routes without a key are not counted.
        assert (await client.get("/v1/openapi.json")).status == 200
        assert "RateLimit-Limit" not in (await client.get("/v1/openapi.json")).headers


async def test_headers_on_error_answers_of_allowed_requests(store: Store) -> None:
    _, key = await store.tenants.create_key("acme")
    auth = {"Authorization": f"Bearer {key}"}
    async with TestClient(TestServer(create_app(Config(), store))) as client:
        resp = await client.get("/v1/contacts/con_nope", headers=auth)
        assert resp.status == 404
        assert resp.headers["RateLimit-Limit"] == "100000"
        assert resp.headers["RateLimit-Remaining"] == "99999"


async def test_disabled_limit_sends_no_headers(store: Store) -> None:
    _, key = await store.tenants.create_key("acme")
    config = Config(ratelimit=RateLimitConfig(enabled=False, limit=1))
    async with TestClient(TestServer(create_app(config, store))) as client:
        for _ in range(3):
            resp = await client.get("/v1/contacts", headers={"Authorization": f"Bearer {key}"})
            assert resp.status == 200 and "RateLimit-Limit" not in resp.headers


async def test_two_app_instances_share_one_limit(store: Store) -> None:
    """Two processes' apps on one store: the key's quota is spent across both."""
    _, key = await store.tenants.create_key("acme")
    _, other = await store.tenants.create_key("acme")
    auth = {"Authorization": f"Bearer {key}"}
    async with (
        TestClient(TestServer(create_app(_config(4), store))) as one,
        TestClient(TestServer(create_app(_config(4), store))) as two,
    ):
        statuses = []
        for client in (one, two, one, two, one, two):
            statuses.append((await client.get("/v1/contacts", headers=auth)).status)
        assert statuses == [200, 200, 200, 200, 429, 429]
        # The limit is per key, not per tenant: the tenant's other key is untouched.
        resp = await two.get("/v1/contacts", headers={"Authorization": f"Bearer {other}"})
        assert resp.status == 200 and resp.headers["RateLimit-Remaining"] == "3"


async def test_script_takes_several_requests_all_or_none(any_store: Store) -> None:
    take = any_store.ratelimits.take
    first = await take("n", limit=5, period_ms=10_000, now=NOW, cost=3)
    assert first.allowed and first.remaining == 2
    refused = await take("n", limit=5, period_ms=10_000, now=NOW, cost=3)
    assert not refused.allowed and refused.retry_after_ms == 2_000
    # Nothing was taken by the refusal: the two left are still there.
    rest = await take("n", limit=5, period_ms=10_000, now=NOW, cost=2)
    assert rest.allowed and rest.remaining == 0


async def _evalsha_calls(store: Store) -> int:
    stats = await store.client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_busy_key_takes_requests_ahead_and_never_exceeds_the_limit(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """600 per 60 s: a process takes up to 10 requests (one second of quota) per round trip;
    two processes together still allow no more than 600 (the clock stands still, so
    none comes back meanwhile)."""
    monkeypatch.setattr("seqd.api.ratelimit.now_ms", lambda: NOW)
    _, key = await store.tenants.create_key("acme")
    auth = {"Authorization": f"Bearer {key}"}
    async with (
        TestClient(TestServer(create_app(_config_period(600, 60), store))) as one,
        TestClient(TestServer(create_app(_config_period(600, 60), store))) as two,
    ):
        before = await _evalsha_calls(store)
        statuses = []
        for n in range(700):
            resp = await (one if n % 2 else two).get("/v1/contacts", headers=auth)
            statuses.append(resp.status)
        calls = await _evalsha_calls(store) - before
    allowed = statuses.count(200)
    assert statuses.count(200) + statuses.count(429) == 700
    # Requests held unspent by each process at the end are the only ones lost.
    assert 600 - 2 * 10 <= allowed <= 600
    # Far fewer round trips than requests while the quota lasts; one per request after.
    assert calls < 600 / 5 + (700 - allowed) + 4


async def test_a_key_used_now_and_then_is_counted_request_by_request(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests more than a second apart never grow a lease: each is taken on its own, so
    nothing is charged ahead for a key that would not use it."""
    clock = [NOW]
    monkeypatch.setattr("seqd.api.ratelimit.now_ms", lambda: clock[0])
    _, key = await store.tenants.create_key("acme")
    auth = {"Authorization": f"Bearer {key}"}
    async with TestClient(TestServer(create_app(_config_period(600, 60), store))) as client:
        before = await _evalsha_calls(store)
        remaining = []
        for _ in range(5):
            resp = await client.get("/v1/contacts", headers=auth)
            remaining.append(resp.headers["RateLimit-Remaining"])
            clock[0] += 1_500
        assert await _evalsha_calls(store) - before == 5
    # 1.5 s gives back 15 requests: the quota is whole again before each.
    assert remaining == ["599"] * 5


def _config_period(limit: int, period: int) -> Config:
    return Config(
        tenants={
            "acme": TenantConfig(ratelimit=TenantRateLimit(limit=limit, period_seconds=period))
        }
    )
