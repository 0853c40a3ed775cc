"""Helpers of the webhook and event tests: a real HTTP receiver, a clock, outbox events."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from seqd.api.app import create_app
from seqd.config import Config, WebhooksConfig
from seqd.events import signing
from seqd.events.client import WebhookClient
from seqd.events.deliverer import Deliverer, session
from seqd.events.reader import Reader
from seqd.store.db import Store
from seqd.store.webhooks import EndpointRecord
from seqd.times import now_ms
from tests.conftest import QUIET_OFF, Api, free_port

TENANT = "acme"
# Retries a test can drive in a few clock steps; no jitter, so due times are exact.
SCHEDULE = [0, 5, 60, 600]


def settings(**over: Any) -> WebhooksConfig:
    values: dict[str, Any] = {
        "allow_private_targets": True,
        "retry_schedule_seconds": SCHEDULE,
        "jitter": 0.0,
        "timeout_seconds": 2.0,
        "lease_seconds": 5.0,
        "idle_poll_ms": 20,
        **over,
    }
    return WebhooksConfig(**values)


class Clock:
    """An injected clock in ms, moved by the test."""

    def __init__(self, now: int | None = None) -> None:
        self.now = now_ms() if now is None else now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> int:
        self.now += int(seconds * 1000)
        return self.now


class Received(msgspec.Struct):
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A real HTTP server on a free loopback port that records every POST.

    `plan[path]` lists the statuses to answer in turn (then 200); `delay` holds each
    answer back that many seconds (a slow receiver).
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[Received] = []
        self.plan: dict[str, list[int]] = {}
        self.delay: dict[str, float] = {}
        self.arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(Received(request.path, dict(request.headers), body))
        self.arrived.set()
        pause = self.delay.get(request.path, 0.0)
        if pause:
            await asyncio.sleep(pause)
        plan = self.plan.get(request.path)
        status = plan.pop(0) if plan else 200
        return web.Response(status=status, text="nope" if status >= 300 else "ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


class Pipeline:
    """A reader and a deliverer on one store (one "seqd process"), driven step by step."""

    def __init__(
        self, store: Store, config: WebhooksConfig, clock: Clock, http: WebhookClient
    ) -> None:
        self.store = store
        self.clock = clock
        self.reader = Reader(store, config, clock=clock)
        self.deliverer = Deliverer(store, config, http, clock=clock, rng=random.Random(7))

    async def read(self) -> int:
        """Read the outbox until it is empty, as the reader's loop does; returns the events
        handled."""
        handled = await self.reader.run_once()
        while self.reader.more:
            handled += await self.reader.run_once()
        return handled

    async def step(self) -> int:
        """Read the outbox, then claim and send what is due; returns requests made."""
        await self.read()
        sent = await self.deliverer.run_once()
        await self.deliverer.drain()
        return sent


@asynccontextmanager
async def pipeline(
    store: Store, config: WebhooksConfig | None = None, clock: Clock | None = None
) -> AsyncIterator[Pipeline]:
    config = config or settings()
    http = session(config)
    try:
        yield Pipeline(store, config, clock or Clock(), http)
    finally:
        await http.close()


async def endpoint(
    store: Store,
    url: str,
    events: list[str] | None = None,
    *,
    tenant: str = TENANT,
    now: int | None = None,
) -> tuple[EndpointRecord, str]:
    secret = signing.new_secret()
    record = await store.webhooks.create(
        tenant,
        url=url,
        events=events or ["*"],
        description="",
        secret=secret,
        now=now or now_ms(),
        max_endpoints=50,
    )
    return record, secret


async def emit(
    store: Store,
    etype: str = "contact.opted_in",
    data: dict[str, Any] | None = None,
    *,
    tenant: str = TENANT,
    shard: int = 0,
    at: int | None = None,
) -> str:
    """Append an event to a shard's outbox as the scripts do (type, tenant, at, data)."""
    entry: str = await store.client.xadd(
        store.keys.outbox(shard),
        {
            "type": etype,
            "tenant": tenant,
            "at": str(at or now_ms()),
            "data": json.dumps(data if data is not None else {"contact_id": "con_x"}),
        },
    )
    return entry


@asynccontextmanager
async def api_client(store: Store, config: Config | None = None) -> AsyncIterator[Api]:
    """The HTTP API (no background parts) with a key of tenant `acme`; by default SMS
    quiet hours off, so that what is sent does not depend on the time of day."""
    config = config or Config(webhooks=settings(), compliance=QUIET_OFF)
    _, key = await store.tenants.create_key(TENANT)
    async with TestClient(TestServer(create_app(config, store))) as client:
        yield Api(client, key, store)


async def pending(store: Store, endpoint_id: str) -> list[dict[str, str]]:
    """The stored hashes of an endpoint's pending deliveries, over every shard."""
    out = []
    for shard in range(store.shards):
        for did in await store.client.zrange(store.keys.delivery_queue(shard, endpoint_id), 0, -1):
            out.append(await store.client.hgetall(store.keys.delivery(shard, did)))
    return out


async def until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait for a condition that a background task makes true (real time, bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
