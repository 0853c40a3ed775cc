"""The http SMS channel against a real local webhook receiver."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from seqd.channels.base import OutboundMessage
from seqd.channels.http_sms import HttpSmsSender
from seqd.config import HttpSmsConfig
from tests.conftest import free_port


@dataclass
class Receiver:
    server: TestServer
    seen: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return str(self.server.make_url("/sms"))


RECEIVER = web.AppKey("receiver", Receiver)


async def _sms(request: web.Request) -> web.StreamResponse:
    receiver = request.app[RECEIVER]
    document = await request.json()
    receiver.seen.append((dict(request.headers), document))
    to = document["to"]
    if to.endswith("0429"):
        return web.json_response({"error": "slow down"}, status=429, headers={"Retry-After": "3"})
    if to.endswith("0503"):
        return web.Response(status=503, text="maintenance")
    if to.endswith("0400"):
        return web.json_response({"error": "number not reachable"}, status=400)
    if to.endswith("0422"):
        return web.Response(status=422, text="bad number")
    if to.endswith("0204"):
        return web.Response(status=204)
    if to.endswith("0002"):
        await asyncio.sleep(5)
    return web.json_response({"id": 4711, "queued": True}, status=202)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    app = web.Application()
    app.router.add_post("/sms", _sms)
    server = TestServer(app)
    fake = Receiver(server)
    app[RECEIVER] = fake
    await server.start_server()
    yield fake
    await server.close()


def outbound(to: str = "+15551230001", step: int = 1) -> OutboundMessage:
    return OutboundMessage(
        tenant="acme",
        enrollment_id="enr_01",
        contact_id="con_01",
        sequence_id="seq_01",
        step=step,
        kind="sms",
        to=to,
        body="Hi Ada",
    )


async def send(url: str, message: OutboundMessage, **over: Any) -> Any:
    settings: dict[str, Any] = {
        "url": url,
        "header_name": "X-Api-Key",
        "header_value": "k-123",
        "from_number": "+15550000001",
        "timeout_seconds": 2.0,
    }
    settings.update(over)
    sender = HttpSmsSender(HttpSmsConfig(**settings))
    try:
        return await sender.send(message)
    finally:
        await sender.close()


async def test_posts_the_document_with_header_and_idempotency_key(receiver: Receiver) -> None:
    result = await send(receiver.url, outbound())
    assert result.outcome == "sent"
    assert result.provider_id == "4711"
    ((headers, document),) = receiver.seen
    assert headers["X-Api-Key"] == "k-123"
    assert headers["Idempotency-Key"] == "enr_01.1"
    assert headers["Content-Type"] == "application/json"
    assert document == {
        "to": "+15551230001",
        "from": "+15550000001",
        "body": "Hi Ada",
        "tenant": "acme",
        "enrollment_id": "enr_01",
        "contact_id": "con_01",
        "sequence_id": "seq_01",
        "step": 1,
        "idempotency_key": "enr_01.1",
    }


async def test_no_id_in_the_answer_uses_the_key(receiver: Receiver) -> None:
    result = await send(receiver.url, outbound("+15550000204"))
    assert result.outcome == "sent" and result.provider_id == "enr_01.1"


async def test_retryable_statuses(receiver: Receiver) -> None:
    limited = await send(receiver.url, outbound("+15550000429"))
    assert limited.outcome == "retry" and limited.retry_after == 3.0
    assert limited.error == "http 429: slow down"
    down = await send(receiver.url, outbound("+15550000503"))
    assert down.outcome == "retry" and down.error == "http 503: maintenance"


async def test_other_4xx_fail(receiver: Receiver) -> None:
    refused = await send(receiver.url, outbound("+15550000400"))
    assert refused.outcome == "failed" and refused.error == "http 400: number not reachable"
    invalid = await send(receiver.url, outbound("+15550000422"))
    assert invalid.outcome == "failed" and invalid.error == "http 422: bad number"


async def test_timeout_is_unknown(receiver: Receiver) -> None:
    result = await send(receiver.url, outbound("+15550000002"), timeout_seconds=0.3)
    assert result.outcome == "unknown"


async def test_connection_refused_is_a_retry() -> None:
    result = await send(f"http://127.0.0.1:{free_port()}/sms", outbound())
    assert result.outcome == "retry"


async def test_no_header_when_unset(receiver: Receiver) -> None:
    await send(receiver.url, outbound(), header_value="", from_number=None)
    ((headers, document),) = receiver.seen
    assert "X-Api-Key" not in headers
    assert json.loads(json.dumps(document))["from"] is None


async def test_connection_dropped_after_the_request_is_unknown() -> None:
    """The receiver read the whole request, then closed without answering: it may have
    the message, so the step is not simply retried."""
    got = asyncio.Event()

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        got.set()
        writer.transport.abort()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await send(f"http://127.0.0.1:{port}/sms", outbound())
    finally:
        server.close()
        await server.wait_closed()
    assert got.is_set()
    assert result.outcome == "unknown", result
