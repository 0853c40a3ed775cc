"""The deliverer's HTTP client (pyreqwest): the SSRF guard's pinned addresses, no redirects,
bounded answers, TLS verified."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from standardwebhooks import Webhook

from seqd.config import WebhooksConfig
from seqd.events import client as webhook_client
from seqd.events import ssrf
from seqd.events.client import WebhookClient
from seqd.store.db import Store
from tests.conftest import free_port
from tests.test_channels_smtp import certificate, server_tls
from tests.webhookutil import (
    Clock,
    Pipeline,
    emit,
    endpoint,
    pending,
    receiving,
    settings,
)

__all__ = ["certificate"]

GUARDED = settings(allow_private_targets=False, retry_schedule_seconds=[0, 60])


class Answers(AbstractResolver):
    """A resolver answering from a table (names under .invalid exist in no DNS)."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        if host not in self.table:
            raise OSError(f"{host} does not resolve")
        return [
            ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=0)
            for a in self.table[host]
        ]

    async def close(self) -> None:
        pass


@asynccontextmanager
async def deliverer(
    store: Store, config: WebhooksConfig, resolver: AbstractResolver | None = None
) -> AsyncIterator[Pipeline]:
    http = WebhookClient(config, resolver)
    try:
        yield Pipeline(store, config, Clock(), http)
    finally:
        await http.close()


@asynccontextmanager
async def app(
    routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]],
    certificate: tuple[Path, Path] | None = None,
) -> AsyncIterator[int]:
    """An aiohttp app on a free loopback port answering POSTs with the given handlers."""
    application = web.Application()
    for path, handler in routes.items():
        application.router.add_post(path, handler)
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    port = free_port()
    context = server_tls(certificate) if certificate else None
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield port
    finally:
        await runner.cleanup()


async def only_failure(store: Store, endpoint_id: str) -> dict[str, str]:
    [row] = await pending(store, endpoint_id)
    return row


async def one_attempt(store: Store, p: Pipeline, url: str) -> dict[str, str]:
    """One event to a new endpoint at `url`, sent once: its delivery's stored hash after."""
    ep, _ = await endpoint(store, url)
    await emit(store)
    await p.step()
    return await only_failure(store, ep.id)


async def test_a_host_name_is_sent_to_the_address_its_checked_answer_gave(store: Store) -> None:
    # `hooks.invalid` exists in no DNS: the request reaches the receiver only through the
    # resolver's answer the client was pinned to, and still names the host.
    answers = Answers({"hooks.invalid": ["127.0.0.1"]})
    async with receiving() as rx, deliverer(store, settings(), answers) as p:
        _, secret = await endpoint(store, f"http://hooks.invalid:{rx.port}/hook")
        for _ in range(3):
            await emit(store)
        assert await p.step() == 3
        assert len(rx.requests) == 3
        got = rx.requests[0]
        assert got.headers["Host"] == f"hooks.invalid:{rx.port}"
        Webhook(secret).verify(got.body, got.headers)
        # Resolved once for the three, not per request.
        assert answers.asked == ["hooks.invalid"]


async def test_a_name_is_resolved_again_and_re_pinned_when_its_answer_changes(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhook_client, "RESOLVE_SECONDS", 0.0)
    answers = Answers({"hooks.invalid": ["127.0.0.1"]})
    async with receiving() as rx, deliverer(store, settings(), answers) as p:
        ep, _ = await endpoint(store, f"http://hooks.invalid:{rx.port}/hook")
        await emit(store)
        assert await p.step() == 1 and len(rx.requests) == 1
        # The name now points where nothing listens: the next request goes there.
        answers.table["hooks.invalid"] = ["127.0.0.2"]
        await emit(store)
        await p.step()
        assert len(rx.requests) == 1
        assert (await only_failure(store, ep.id))["le"].startswith("connection failed")


async def test_a_name_with_any_forbidden_address_is_refused_before_connecting(
    store: Store,
) -> None:
    # The guard wraps the resolver: one private address among public ones refuses the name.
    answers = Answers({"hooks.invalid": ["93.184.215.14", "127.0.0.1"]})
    async with receiving() as rx, deliverer(store, GUARDED, ssrf.GuardedResolver(answers)) as p:
        ep, _ = await endpoint(store, f"http://hooks.invalid:{rx.port}/hook")
        await emit(store)
        await p.step()
        assert rx.requests == []
        failure = await only_failure(store, ep.id)
        assert "lc" not in failure
        assert failure["le"] == "refused: hooks.invalid resolves to 127.0.0.1, not a public address"


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "2130706433", "0x7f.1", "[::ffff:127.0.0.1]", "[::1]", "0.0.0.0"]
)
async def test_private_ip_literals_in_every_form_are_refused(store: Store, host: str) -> None:
    async with receiving() as rx, deliverer(store, GUARDED) as p:
        failure = await one_attempt(store, p, f"http://{host}:{rx.port}/hook")
        assert rx.requests == []
        assert "not a public address" in failure["le"]


async def test_redirects_are_not_followed(store: Store) -> None:
    followed: list[str] = []

    async def moved(request: web.Request) -> web.Response:
        await request.read()
        raise web.HTTPTemporaryRedirect("/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        followed.append(request.path)
        return web.Response(status=204)

    async with (
        app({"/moved": moved, "/elsewhere": elsewhere}) as port,
        deliverer(store, settings()) as p,
    ):
        failure = await one_attempt(store, p, f"http://127.0.0.1:{port}/moved")
        assert followed == []
        assert failure["lc"] == "307" and failure["a"] == "1"


async def test_an_endless_answer_is_quoted_not_read_whole(store: Store) -> None:
    done = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=500)
        await response.prepare(request)
        # More than the client reads, then never the end: a client reading the whole
        # answer would wait for the timeout.
        await response.write(b"x" * (1 << 20))
        await done.wait()
        return response

    config = settings(timeout_seconds=2.0)
    async with app({"/endless": endless}) as port, deliverer(store, config) as p:
        ep, _ = await endpoint(store, f"http://127.0.0.1:{port}/endless")
        await emit(store)
        started = asyncio.get_running_loop().time()
        await p.step()
        assert asyncio.get_running_loop().time() - started < 1.5
        failure = await only_failure(store, ep.id)
        assert failure["lc"] == "500"
        assert failure["le"] == "HTTP 500: " + "x" * 200
        done.set()


async def test_a_certificate_that_does_not_verify_is_refused(
    store: Store, certificate: tuple[Path, Path]
) -> None:
    hits: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(status=204)

    async with (
        app({"/hook": hook}, certificate=certificate) as port,
        deliverer(store, settings()) as p,
    ):
        failure = await one_attempt(store, p, f"https://127.0.0.1:{port}/hook")
        assert hits == []
        assert "lc" not in failure
        assert failure["le"].startswith("connection failed") and "certificate" in failure["le"]
