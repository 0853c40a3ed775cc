"""Inbound replies and opt-outs find their tenant by the sender (POST /v1/senders) whose
number or mailbox they arrived on."""

from __future__ import annotations

from seqd.lifecycle import email_inbound
from seqd.store.db import Store
from tests.lifecycleutil import PHONE, client, config, contact

NUMBER = "+15005550077"
MAILBOX = "ana@beta.example.com"


async def test_a_stop_to_a_senders_number_reaches_its_tenant_only(store: Store) -> None:
    async with client(store) as api:
        status, made = await api.call(
            "POST", "/senders", {"channel": "sms", "address": NUMBER}, tenant="beta"
        )
        assert status == 201, made
        params = {"From": PHONE, "To": NUMBER, "Body": "STOP", "MessageSid": "SM" + "7" * 32}
        # Signed by another tenant: that tenant does not own the number.
        assert (await api.twilio("/inbound/twilio/sms", params, token="acme-token"))[0] == 403
        status, _ = await api.twilio("/inbound/twilio/sms", params, token="beta-token")
        assert status == 200
        beta = (await api.call("GET", "/suppressions", tenant="beta"))[1]
        acme = (await api.call("GET", "/suppressions", tenant="acme"))[1]
    assert [s["value"] for s in beta["data"]] == [PHONE] and acme["total"] == 0


async def test_an_email_to_a_senders_mailbox_reaches_its_tenant(store: Store) -> None:
    async with client(store) as api:
        status, _ = await api.call(
            "POST", "/senders", {"channel": "email", "address": MAILBOX}, tenant="beta"
        )
        assert status == 201
    await contact(store, "beta")
    raw = (
        b"From: Ada <ada@example.com>\r\nTo: Ana <ana@BETA.example.com>\r\n"
        b"Subject: Re: hello\r\nMessage-ID: <x1@example.com>\r\n\r\nSounds good\r\n"
    )
    # A shared MTA pipe names no tenant, and the message names no enrollment of seqd's.
    result = await email_inbound.ingest(config(), store, raw, None)
    assert result.tenant == "beta"
    other = raw.replace(b"ana@BETA", b"nobody@beta")
    assert (await email_inbound.ingest(config(), store, other, None)).tenant == "default"
