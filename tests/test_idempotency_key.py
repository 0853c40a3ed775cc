"""Idempotency-Key on authenticated POSTs: replay, mismatch, and a request still running."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from seqd.api.app import create_app
from seqd.config import Config
from seqd.store.db import Store

SEQUENCE = {
    "name": "Nurture",
    "status": "active",
    "steps": [{"kind": "sms", "wait_minutes": 60, "body": "Hi"}],
}


class Gate:
    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0
        self.flaky_calls = 0


@pytest.fixture
async def client(store: Store) -> AsyncIterator[tuple[TestClient, dict[str, str], Gate]]:
    _, key = await store.tenants.create_key("acme")
    app = create_app(Config(), store)
    gate = Gate()

    async def slow(request: web.Request) -> web.Response:
        """A handler that runs until the test lets it finish."""
        gate.calls += 1
        gate.entered.set()
        await gate.release.wait()
        return web.json_response({"n": gate.calls}, status=201)

    async def flaky(request: web.Request) -> web.Response:
        """503 on its first call, 201 after."""
        gate.flaky_calls += 1
        status = 503 if gate.flaky_calls == 1 else 201
        return web.json_response({"calls": gate.flaky_calls}, status=status)

    app.router.add_post("/v1/test-slow", slow)
    app.router.add_post("/v1/test-flaky", flaky)
    async with TestClient(TestServer(app)) as c:
        yield c, {"Authorization": f"Bearer {key}"}, gate


async def _post(
    c: TestClient, path: str, headers: dict[str, str], body: object, key: str | None
) -> tuple[int, dict[str, str], object]:
    h = {**headers, "Content-Type": "application/json"}
    if key is not None:
        h["Idempotency-Key"] = key
    resp = await c.post("/v1" + path, data=json.dumps(body), headers=h)
    text = await resp.text()
    return resp.status, dict(resp.headers), json.loads(text) if text else None


async def test_same_key_and_body_replays_the_first_response(
    client: tuple[TestClient, dict[str, str], Gate], store: Store
) -> None:
    c, headers, _ = client
    first = await _post(c, "/sequences", headers, SEQUENCE, "k-1")
    assert first[0] == 201 and "Idempotent-Replayed" not in first[1]
    again = await _post(c, "/sequences", headers, SEQUENCE, "k-1")
    assert again[0] == 201 and again[1]["Idempotent-Replayed"] == "true"
    assert again[2] == first[2]
    assert again[1]["Content-Type"].startswith("application/json")
    _, _, listing = await _post_get(c, headers)
    assert listing["total"] == 1  # type: ignore[index]
    # Without the header, or with another key, the POST runs again.
    assert (await _post(c, "/sequences", headers, SEQUENCE, None))[0] == 201
    assert (await _post(c, "/sequences", headers, SEQUENCE, "k-2"))[0] == 201
    digest = hashlib.sha256(b"k-1").hexdigest()
    ttl = await store.client.ttl(store.keys.idempotency("acme", digest))
    assert 86_000 < ttl <= 86_400


async def _post_get(c: TestClient, headers: dict[str, str]) -> tuple[int, None, object]:
    resp = await c.get("/v1/sequences", headers=headers)
    return resp.status, None, await resp.json()


async def test_errors_are_replayed_too_and_keys_are_per_tenant(
    client: tuple[TestClient, dict[str, str], Gate], store: Store
) -> None:
    c, headers, _ = client
    bad = {"name": "x", "steps": []}
    first = await _post(c, "/sequences", headers, bad, "k-err")
    assert first[0] == 422
    again = await _post(c, "/sequences", headers, bad, "k-err")
    assert again[0] == 422 and again[1]["Idempotent-Replayed"] == "true"
    assert again[1]["Content-Type"].startswith("application/problem+json")
    _, other_key = await store.tenants.create_key("bravo")
    other = {"Authorization": f"Bearer {other_key}"}
    theirs = await _post(c, "/sequences", other, SEQUENCE, "k-err")
    assert theirs[0] == 201 and "Idempotent-Replayed" not in theirs[1]


async def test_same_key_with_another_body_is_a_422(
    client: tuple[TestClient, dict[str, str], Gate],
) -> None:
    c, headers, _ = client
    assert (await _post(c, "/sequences", headers, SEQUENCE, "k-3"))[0] == 201
    changed = {**SEQUENCE, "name": "Other"}
    status, _, body = await _post(c, "/sequences", headers, changed, "k-3")
    assert status == 422
    assert body["errors"][0]["path"] == "header.Idempotency-Key"  # type: ignore[index]
    status, _, body = await _post(c, "/contacts", headers, SEQUENCE, "k-3")  # another path
    assert status == 422
    status, _, body = await _post(c, "/sequences", headers, SEQUENCE, "x" * 256)
    assert status == 422


async def test_a_second_request_while_the_first_runs_is_a_409(
    client: tuple[TestClient, dict[str, str], Gate],
) -> None:
    c, headers, gate = client
    first = asyncio.create_task(_post(c, "/test-slow", headers, {"a": 1}, "k-slow"))
    await asyncio.wait_for(gate.entered.wait(), 5)
    concurrent = await _post(c, "/test-slow", headers, {"a": 1}, "k-slow")
    assert concurrent[0] == 409
    gate.release.set()
    done = await first
    assert done[0] == 201 and done[2] == {"n": 1}
    replay = await _post(c, "/test-slow", headers, {"a": 1}, "k-slow")
    assert replay[0] == 201 and replay[2] == {"n": 1} and gate.calls == 1


async def test_two_concurrent_requests_with_one_key_run_once(
    client: tuple[TestClient, dict[str, str], Gate],
) -> None:
    c, headers, gate = client
    gate.release.set()
    a, b = await asyncio.gather(
        _post(c, "/test-slow", headers, {"b": 2}, "k-race"),
        _post(c, "/test-slow", headers, {"b": 2}, "k-race"),
    )
    assert gate.calls == 1
    assert sorted([a[0], b[0]]) in ([201, 201], [201, 409])


async def test_a_5xx_frees_the_key_for_a_retry(
    client: tuple[TestClient, dict[str, str], Gate],
) -> None:
    c, headers, _ = client
    first = await _post(c, "/test-flaky", headers, {}, "k-5xx")
    assert first[0] == 503
    retry = await _post(c, "/test-flaky", headers, {}, "k-5xx")
    assert retry[0] == 201 and "Idempotent-Replayed" not in retry[1]
    replay = await _post(c, "/test-flaky", headers, {}, "k-5xx")
    assert replay[0] == 201 and replay[1]["Idempotent-Replayed"] == "true"
    assert replay[2] == {"calls": 2}
