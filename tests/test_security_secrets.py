"""No secret in logs, errors or /metrics: requests carrying an API key, a webhook signing
secret, a Twilio auth token (as signatures) and an inbound email secret, after which the
captured JSON log lines, every problem body and the /metrics text contain none of them."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient, TestServer

from seqd import logs
from seqd.api.app import create_app
from seqd.config import (
    ChannelsConfig,
    Config,
    HttpConfig,
    LifecycleConfig,
    LogConfig,
    SmtpConfig,
    TenantConfig,
    TwilioConfig,
)
from seqd.lifecycle import twilio_signature
from seqd.store.db import Store

PUBLIC = "https://seqd.example.com"
TWILIO_TOKEN = "twilio-auth-token-0f9e8d7c6b5a"
INBOUND_SECRET = "inbound-secret-5a6b7c8d9e0f"
UNSUBSCRIBE_SECRET = "unsubscribe-secret-1a2b3c4d5e6f7a8b"
SMTP_PASSWORD = "smtp-password-9z8y7x6w"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logs.setup(LogConfig(format="json", level="debug"), stream=out)
    yield out
    logs.setup(LogConfig(), stream=io.StringIO())


def _config() -> Config:
    channels = ChannelsConfig(
        sms="twilio",
        twilio=TwilioConfig(account_sid="AC1", auth_token=TWILIO_TOKEN, from_number="+15005550001"),
        smtp=SmtpConfig(username="u", password=SMTP_PASSWORD),
    )
    return Config(
        http=HttpConfig(public_url=PUBLIC),
        lifecycle=LifecycleConfig(unsubscribe_secret=UNSUBSCRIBE_SECRET),
        tenants={"acme": TenantConfig(channels=channels, inbound_email_secret=INBOUND_SECRET)},
    )


async def test_no_secret_in_logs_problems_or_metrics(store: Store, captured: io.StringIO) -> None:
    _, key = await store.tenants.create_key("acme")
    auth = {"Authorization": f"Bearer {key}"}
    problems: list[str] = []
    secrets = [key, TWILIO_TOKEN, INBOUND_SECRET, UNSUBSCRIBE_SECRET, SMTP_PASSWORD]
    async with TestClient(TestServer(create_app(_config(), store))) as http:

        async def call(method: str, path: str, **kw: object) -> int:
            resp = await http.request(method, path, **kw)  # type: ignore[arg-type]
            text = await resp.text()
            if resp.content_type == "application/problem+json":
                problems.append(text)
            return resp.status

        # The key, good and mistyped, in both headers; on good and bad requests.
        assert await call("GET", "/v1/contacts", headers=auth) == 200
        assert await call("GET", "/v1/contacts/con_nope", headers=auth) == 404
        assert await call("POST", "/v1/contacts", data=b"{", headers=auth) == 400
        assert await call("GET", "/v1/contacts", headers={"X-Api-Key": key + "x"}) == 401
        assert await call("GET", "/v1/contacts", headers={"Authorization": key}) == 401
        # A webhook endpoint: its secret is in the create and rotate answers only.
        resp = await http.post(
            "/v1/webhook-endpoints",
            json={"url": "https://93.184.216.34/hook", "events": ["*"]},
            headers=auth,
        )
        created = await resp.json()
        endpoint = created["webhook_endpoint"]["id"]
        secrets.append(created["secret"])
        resp = await http.post(f"/v1/webhook-endpoints/{endpoint}/rotate-secret", headers=auth)
        secrets.append((await resp.json())["secret"])
        assert await call("GET", f"/v1/webhook-endpoints/{endpoint}", headers=auth) == 200
        assert await call("GET", "/v1/webhook-endpoints", headers=auth) == 200
        # Twilio: a signed request (the token makes the signature) and a forged one.
        params = {"From": "+14155550100", "To": "+15005550001", "Body": "hi", "MessageSid": "SM1"}
        url = f"{PUBLIC}/v1/inbound/twilio/sms"
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        signed = twilio_signature.compute(TWILIO_TOKEN, url, params.items())
        for signature in (signed, "forged"):
            await call(
                "POST",
                "/v1/inbound/twilio/sms",
                data=urlencode(params),
                headers={**form, "X-Twilio-Signature": signature},
            )
        # Inbound email by secret: right, and wrong by one character; and a broken message.
        rfc822 = {"Content-Type": "message/rfc822"}
        message = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nbody\r\n"
        for path in (f"/v1/inbound/email/{INBOUND_SECRET}", f"/v1/inbound/email/{INBOUND_SECRET}x"):
            await call("POST", path, data=message, headers=rfc822)
            await call("POST", path, data=b"\xff" * 10, headers={"Content-Type": "text/plain"})
        resp = await http.get("/metrics")
        assert resp.status == 200
        metrics = await resp.text()

    log_lines = [json.loads(line) for line in captured.getvalue().splitlines() if line.strip()]
    assert any(line["event"] == "http.request" for line in log_lines)
    assert problems and len(secrets) == 7
    text = {"logs": captured.getvalue(), "problems": "\n".join(problems), "metrics": metrics}
    for where, content in text.items():
        for secret in secrets:
            assert secret not in content, (where, secret[:8])
            # Nor its distinctive half (a secret cut or wrapped in a message).
            assert secret[len(secret) // 2 :] not in content, (where, secret[:8])
