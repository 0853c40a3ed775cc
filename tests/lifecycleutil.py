"""Helpers of the lifecycle tests: a config with Twilio senders per tenant, an HTTP client,
signed Twilio requests, and running the dispatcher so steps are really sent."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

from aiohttp.test_utils import TestClient, TestServer

from seqd.api.app import create_app
from seqd.config import (
    ChannelsConfig,
    Config,
    HttpConfig,
    LifecycleConfig,
    SmtpConfig,
    TenantConfig,
    TwilioConfig,
)
from seqd.lifecycle import twilio_signature
from seqd.store.db import Store
from tests.conftest import QUIET_OFF
from tests.dispatchutil import Clock, Recorder, dispatcher

PUBLIC = "https://seqd.example.com"
_sids = itertools.count(1)
# tenant -> (auth token, sender number)
SENDERS = {
    "acme": ("acme-token", "+15005550001"),
    "beta": ("beta-token", "+15005550002"),
}
BETA_INBOUND_SECRET = "beta-inbound-0123456789"
PHONE = "+14155550100"
EMAIL = "ada@example.com"


def twilio(tenant: str) -> ChannelsConfig:
    token, number = SENDERS[tenant]
    return ChannelsConfig(
        sms="twilio",
        twilio=TwilioConfig(account_sid="AC1", auth_token=token, from_number=number),
        smtp=SmtpConfig(from_address=f"hello@{tenant}.example.com"),
    )


def config(**lifecycle: Any) -> Config:
    # SMS quiet hours off, as in conftest's `api`: the steps these tests send are due at
    # once at any time of day (on, a +1415 number's step waits from 05:00 to 16:00 UTC).
    return Config(
        http=HttpConfig(public_url=PUBLIC),
        compliance=QUIET_OFF,
        tenants={
            "acme": TenantConfig(channels=twilio("acme")),
            "beta": TenantConfig(channels=twilio("beta"), inbound_email_secret=BETA_INBOUND_SECRET),
        },
        lifecycle=LifecycleConfig(**lifecycle),
    )


class Client:
    """A TestClient on the app, with an API key per tenant."""

    def __init__(self, client: TestClient[Any, Any], keys: dict[str, str], cfg: Config) -> None:
        self.http = client
        self.keys = keys
        self.config = cfg

    async def call(
        self, method: str, path: str, body: Any = None, *, tenant: str = "acme", **kw: Any
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.keys[tenant]}", **kw.pop("headers", {})}
        if body is not None:
            kw["json"] = body
        resp = await self.http.request(method, "/v1" + path, headers=headers, **kw)
        text = await resp.text()
        try:
            return resp.status, json.loads(text) if text else None
        except ValueError:
            return resp.status, text

    async def twilio(
        self,
        path: str,
        params: dict[str, str],
        *,
        token: str | None = None,
        signature: str | None = None,
    ) -> tuple[int, str]:
        """POST a form as Twilio does, signed with `token` (default: the To tenant's)."""
        url = f"{PUBLIC}/v1{path}"
        if signature is None and token is not None:
            signature = twilio_signature.compute(token, url, params.items())
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if signature is not None:
            headers["X-Twilio-Signature"] = signature
        resp = await self.http.post("/v1" + path, data=urlencode(params), headers=headers)
        return resp.status, await resp.text()

    async def sms(
        self, tenant: str, phone: str, body: str, *, sid: str | None = None, **kw: Any
    ) -> tuple[int, str]:
        """A new message (its own MessageSid, as Twilio gives each) unless `sid` repeats one."""
        token, number = SENDERS[tenant]
        sid = sid or f"SM{next(_sids):032x}"
        params = {"From": phone, "To": number, "Body": body, "MessageSid": sid}
        return await self.twilio("/inbound/twilio/sms", params, token=kw.get("token", token))


@asynccontextmanager
async def client(store: Store, cfg: Config | None = None) -> AsyncIterator[Client]:
    cfg = cfg or config()
    keys = {}
    for tenant in ("acme", "beta"):
        _, keys[tenant] = await store.tenants.create_key(tenant)
    async with TestClient(TestServer(create_app(cfg, store))) as http:
        yield Client(http, keys, cfg)


async def send_due(store: Store, clock: Clock, sender: Recorder | None = None) -> Recorder:
    """One dispatcher round at `clock`: every due step is sent (recorded)."""
    sender = sender or Recorder()
    await dispatcher(store, sender, clock).run_once(clock())
    return sender


async def contact(store: Store, tenant: str = "acme", **fields: Any) -> str:
    """A contact with PHONE and EMAIL (fields override; None leaves one out)."""
    values = {"first_name": "Ada", "phone": PHONE, "email": EMAIL, **fields}
    values = {k: v for k, v in values.items() if v is not None}
    return (await store.contacts.create(tenant, values)).id
