"""/healthz and /readyz: the process answers; the store, scripts and running loops are fine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from seqd.api.app import create_app
from seqd.appkeys import LIVENESS
from seqd.config import Config, HttpConfig, RedisConfig
from seqd.health import Liveness
from seqd.store.db import Store, connect
from seqd.store.scripts import SCRIPTS
from tests.conftest import ValkeyProcess


@pytest.fixture
async def client(store: Store) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(Config(), store))) as c:
        yield c


async def test_healthz_and_readyz(client: TestClient) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ready", "checks": {"store": "ok", "scripts": "ok"}}


async def test_outside_base_path_and_without_auth(store: Store) -> None:
    config = Config(http=HttpConfig(base_path="/api/seqd"))
    async with TestClient(TestServer(create_app(config, store))) as c:
        assert (await c.get("/healthz")).status == 200
        assert (await c.get("/readyz")).status == 200
        assert (await c.get("/api/seqd/healthz")).status == 404
        doc = await (await c.get("/api/seqd/openapi.json")).json()
    for path in ("/healthz", "/readyz", "/metrics"):
        operation = doc["paths"][path]["get"]
        assert operation["security"] == []
        assert "401" not in operation["responses"]
    assert "/api/seqd/contacts" in doc["paths"]


async def test_a_late_loop_makes_it_not_ready(client: TestClient) -> None:
    clock = [100.0]
    liveness = client.app[LIVENESS]  # type: ignore[index]
    liveness.clock = lambda: clock[0]
    liveness.beat("dispatcher", 5.0)
    clock[0] = 104.0
    body = await (await client.get("/readyz")).json()
    assert body["checks"]["dispatcher"] == "ok"
    clock[0] = 106.5
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert resp.content_type == "application/problem+json"
    assert resp.headers["Retry-After"] == "1"
    problem = await resp.json()
    assert problem["type"] == "urn:seqd:problem:not_ready"
    assert "dispatcher: no heartbeat for 6.5 s" in problem["detail"]
    # A loop that stopped (drain, or dispatch disabled) is not required.
    liveness.stopped("dispatcher")
    assert (await client.get("/readyz")).status == 200


async def test_store_down_is_not_ready_but_healthy(valkey_factory: type[ValkeyProcess]) -> None:
    server = valkey_factory()
    server.start()
    store = await Store.open(connect(server.url, socket_timeout=1.0), "h", 2)
    try:
        async with TestClient(TestServer(create_app(Config(), store))) as c:
            server.kill()
            resp = await c.get("/readyz")
            assert resp.status == 503
            assert "store: unreachable" in (await resp.json())["detail"]
            assert (await c.get("/healthz")).status == 200
    finally:
        await store.close()


async def test_flushed_scripts_are_loaded_again(client: TestClient, store: Store) -> None:
    # A Redis restarted without its script cache: readyz loads them and stays ready.
    await store.client.script_flush()
    assert not any(await store.client.script_exists(*(s.sha for s in SCRIPTS.values())))
    assert (await client.get("/readyz")).status == 200
    assert all(await store.client.script_exists(*(s.sha for s in SCRIPTS.values())))


def test_liveness_bookkeeping() -> None:
    clock = [0.0]
    liveness = Liveness(clock=lambda: clock[0])
    assert liveness.late() == {} and liveness.running() == []
    liveness.beat("intake", 1.0)
    liveness.beat("dispatcher", 10.0)
    clock[0] = 2.0
    assert liveness.late() == {"intake": 2.0}
    assert liveness.running() == ["dispatcher", "intake"]


async def test_store_unreachable_too_long_is_unhealthy(
    valkey_factory: type[ValkeyProcess],
) -> None:
    """Past redis.unhealthy_after_seconds without the store, /healthz is a 503 (a supervisor
    restarts seqd); it is healthy again once the store answers."""
    server = valkey_factory()
    server.start()
    store = await Store.open(connect(server.url, socket_timeout=0.5), "h", 2)
    config = Config(redis=RedisConfig(unhealthy_after_seconds=1.0))
    try:
        async with TestClient(TestServer(create_app(config, store))) as c:
            assert (await c.get("/healthz")).status == 200
            server.kill()
            async with asyncio.timeout(15):
                while (resp := await c.get("/healthz")).status == 200:  # noqa: ASYNC110 - polling HTTP
                    await asyncio.sleep(0.05)
            assert resp.status == 503
            assert resp.content_type == "application/problem+json"
            problem = await resp.json()
            assert problem["type"] == "urn:seqd:problem:store_unreachable"
            assert "redis.unhealthy_after_seconds" in problem["detail"]
            server.start()
            async with asyncio.timeout(15):
                while (await c.get("/healthz")).status != 200:  # noqa: ASYNC110 - polling HTTP
                    await asyncio.sleep(0.05)
    finally:
        await store.close()
