"""The twilio channel against a local server speaking Twilio's Messages API wire format."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from seqd.channels import outcomes
from seqd.channels.base import OutboundMessage
from seqd.channels.twilio import TwilioSender
from seqd.config import HttpConfig, TwilioConfig
from tests.conftest import free_port

SID = "AC0123456789abcdef"
TOKEN = "secret-token"


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None
    form: dict[str, str]
    peer: tuple[str, int]


@dataclass
class FakeTwilio:
    """Answers by the `To` number, like Twilio would for the case it stands for."""

    server: TestServer
    seen: list[Seen] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


FAKE = web.AppKey("fake", FakeTwilio)


async def _messages(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE]
    form = {k: str(v) for k, v in (await request.post()).items()}
    peer = request.transport.get_extra_info("peername") if request.transport else ("", 0)
    fake.seen.append(
        Seen(request.method, request.path, request.headers.get("Authorization"), form, peer)
    )
    if request.match_info["sid"] != SID:
        return web.json_response({"code": 20404, "message": "not found", "status": 404}, status=404)
    to = form.get("To", "")
    if to.endswith("0429"):
        return web.json_response(
            {"code": 20429, "message": "Too Many Requests", "status": 429},
            status=429,
            headers={"Retry-After": "7"},
        )
    if to.endswith("0500"):
        return web.json_response({"code": 20500, "message": "Internal"}, status=500)
    if to.endswith("1610"):
        return web.json_response(
            {
                "code": 21610,
                "message": "Attempt to send to unsubscribed recipient",
                "more_info": "https://www.twilio.com/docs/errors/21610",
                "status": 400,
            },
            status=400,
        )
    if to.endswith("1211"):
        return web.json_response(
            {"code": 21211, "message": "The 'To' number is not valid.", "status": 400},
            status=400,
        )
    if to.endswith("0401"):
        return web.json_response({"code": 20003, "message": "Authenticate"}, status=401)
    if to.endswith("0002"):
        await asyncio.sleep(5)
    if to.endswith("0003") and request.transport is not None:
        # The request arrived, and the connection dies before the answer.
        request.transport.abort()
        await asyncio.sleep(1)
    return web.json_response(
        {"sid": f"SM{len(fake.seen):032d}", "status": "queued", "to": to, "body": form["Body"]},
        status=201,
    )


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", _messages)
    server = TestServer(app)
    fake = FakeTwilio(server)
    app[FAKE] = fake
    await server.start_server()
    yield fake
    await server.close()


def outbound(to: str = "+15551230001", step: int = 0) -> OutboundMessage:
    return OutboundMessage(
        tenant="acme",
        enrollment_id="enr_01",
        contact_id="con_01",
        sequence_id="seq_01",
        step=step,
        kind="sms",
        to=to,
        body="Hi Ada, it's Bo",
    )


def make_sender(base_url: str, **over: object) -> TwilioSender:
    settings: dict[str, object] = {
        "account_sid": SID,
        "auth_token": TOKEN,
        "from_number": "+15550000001",
        "base_url": base_url,
        "timeout_seconds": 2.0,
    }
    settings.update(over)
    http = HttpConfig(public_url="https://seqd.example.com", base_path="/v1")
    return TwilioSender(TwilioConfig(**settings), http)  # type: ignore[arg-type]


async def test_sent_speaks_the_wire_format(twilio: FakeTwilio) -> None:
    sender = make_sender(twilio.base_url)
    try:
        result = await sender.send(outbound())
    finally:
        await sender.close()
    assert result.outcome == "sent"
    assert result.provider_id is not None and result.provider_id.startswith("SM")
    (seen,) = twilio.seen
    assert seen.method == "POST"
    assert seen.path == f"/2010-04-01/Accounts/{SID}/Messages.json"
    assert seen.authorization == "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
    assert seen.form == {"To": "+15551230001", "From": "+15550000001", "Body": "Hi Ada, it's Bo"}


async def test_messaging_service_and_status_callback(twilio: FakeTwilio) -> None:
    sender = make_sender(twilio.base_url, messaging_service_sid="MG123", status_callback=True)
    try:
        assert (await sender.send(outbound(step=2))).outcome == "sent"
    finally:
        await sender.close()
    form = twilio.seen[0].form
    assert form["MessagingServiceSid"] == "MG123"
    assert "From" not in form
    assert (
        form["StatusCallback"] == "https://seqd.example.com/v1/inbound/twilio/status?e=enr_01&s=2"
    )


async def test_one_pooled_connection_for_many_messages(twilio: FakeTwilio) -> None:
    sender = make_sender(twilio.base_url)
    try:
        for step in range(5):
            assert (await sender.send(outbound(step=step))).outcome == "sent"
    finally:
        await sender.close()
    assert len({seen.peer for seen in twilio.seen}) == 1


async def test_unsubscribed_recipient_fails_and_suppresses(twilio: FakeTwilio) -> None:
    sender = make_sender(twilio.base_url)
    try:
        result = await sender.send(outbound("+15550021610"))
    finally:
        await sender.close()
    assert result.outcome == "failed"
    assert result.suppress is True
    assert result.error is not None
    assert "21610" in result.error and "unsubscribed recipient" in result.error


async def test_other_4xx_fails_with_code_and_message(twilio: FakeTwilio) -> None:
    sender = make_sender(twilio.base_url)
    try:
        result = await sender.send(outbound("+15550001211"))
    finally:
        await sender.close()
    assert result.outcome == "failed" and result.suppress is False
    assert result.error == "twilio 400 code 21211: The 'To' number is not valid."


async def test_rate_limit_is_a_retry_with_retry_after(twilio: FakeTwilio) -> None:
    sender = make_sender(twilio.base_url)
    try:
        result = await sender.send(outbound("+15550000429"))
    finally:
        await sender.close()
    assert result.outcome == "retry"
    assert result.retry_after == 7.0
    assert result.error is not None and "20429" in result.error


async def test_server_error_and_bad_credentials_are_retries(twilio: FakeTwilio) -> None:
    sender = make_sender(twilio.base_url)
    try:
        server_error = await sender.send(outbound("+15550000500"))
        unauthorised = await sender.send(outbound("+15550000401"))
    finally:
        await sender.close()
    assert server_error.outcome == "retry" and server_error.retry_after is None
    assert unauthorised.outcome == "retry"
    assert unauthorised.error is not None and "20003" in unauthorised.error


async def test_timeout_after_the_request_is_unknown(twilio: FakeTwilio) -> None:
    sender = make_sender(twilio.base_url, timeout_seconds=0.3)
    try:
        result = await sender.send(outbound("+15550000002"))
    finally:
        await sender.close()
    assert result.outcome == "unknown"
    assert len(twilio.seen) == 1


async def test_connection_lost_after_the_request_is_unknown(twilio: FakeTwilio) -> None:
    sender = make_sender(twilio.base_url)
    try:
        result = await sender.send(outbound("+15550000003"))
    finally:
        await sender.close()
    assert result.outcome == "unknown"
    assert len(twilio.seen) == 1


async def test_connection_refused_is_a_retry() -> None:
    sender = make_sender(f"http://127.0.0.1:{free_port()}")
    try:
        result = await sender.send(outbound())
    finally:
        await sender.close()
    assert result.outcome == "retry"
    assert result.error is not None and "cannot connect" in result.error


async def test_unresolvable_host_is_a_retry() -> None:
    sender = make_sender("http://seqd-test.invalid", timeout_seconds=3.0)
    try:
        result = await sender.send(outbound())
    finally:
        await sender.close()
    assert result.outcome == "retry"


def test_retry_after_forms() -> None:
    assert outcomes.retry_after({"Retry-After": "12"}) == 12.0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    seconds = outcomes.retry_after({"Retry-After": later})
    assert seconds is not None and 55 <= seconds <= 60
    assert outcomes.retry_after({"Retry-After": "soon"}) is None
    assert outcomes.retry_after({}) is None
