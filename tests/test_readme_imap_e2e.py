"""The README's IMAP run, end to end: `seqd serve`'s app (API, dispatcher, mailbox reader)
on a real Valkey, an email step sent through a local SMTP server (aiosmtpd) and delivered
into the contact's mailbox on a local Dovecot, the contact's answer written back into the
sending mailbox, and seqd pausing the enrollment: at once with IDLE, within poll_seconds
when polling. Prints the delay from the reply's arrival to the pause."""

from __future__ import annotations

import asyncio
import email
import email.policy
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from seqd.config import (
    ChannelsConfig,
    Config,
    DispatchConfig,
    ImapConfig,
    IntakeConfig,
    SmtpConfig,
    TenantConfig,
    WebhooksConfig,
)
from seqd.service import build_app
from seqd.store.db import Store
from tests.conftest import Api
from tests.imaputil import PASSWORD, USER, needs_dovecot
from tests.test_channels_smtp import ServerFactory, smtp_server
from tests.test_lifecycle_imap import Inbox, dovecot, until_state

pytestmark = [needs_dovecot, pytest.mark.slow]
__all__ = ["dovecot", "smtp_server"]  # fixtures

SENDER = "sales@acme.example"


def serve_config(smtp_port: int, imap_port: int, folder: str, idle: bool) -> Config:
    """What the README's config says, on local servers."""
    imap = ImapConfig(
        host="127.0.0.1",
        port=imap_port,
        tls="none",
        username=USER,
        password=PASSWORD,
        folders=[folder],
        poll_seconds=30.0 if idle else 0.5,  # with IDLE only the server's push can read it
        idle=idle,
        timeout_seconds=5.0,
    )
    smtp = SmtpConfig(host="127.0.0.1", port=smtp_port, tls="none", from_address=SENDER)
    channels = ChannelsConfig(email="smtp", smtp=smtp, imap=imap)
    return Config(
        tenants={"acme": TenantConfig(channels=channels)},
        dispatch=DispatchConfig(idle_poll_ms=50),
        intake=IntakeConfig(enabled=False),
        webhooks=WebhooksConfig(enabled=False),
    )


def config_poll(config: Config) -> float:
    imap = config.tenants["acme"].channels.imap
    assert imap is not None
    return imap.poll_seconds


async def fetch_last(inbox: Inbox) -> bytes:
    """The contact's mail client: the newest message of its folder."""
    client = await inbox._client()
    try:
        assert (await client.select(inbox.folder)).result == "OK"
        response = await client.fetch("*", "(BODY.PEEK[])")
        assert response.result == "OK", response
        return next(bytes(line) for line in response.lines if isinstance(line, bytearray))
    finally:
        await inbox._done(client)


def answer(sent: bytes, text: str) -> bytes:
    """The contact's reply to `sent`, as a mail client writes it (threaded by Message-ID)."""
    original = email.message_from_bytes(sent, policy=email.policy.default)
    msg = EmailMessage()
    msg["From"] = str(original["To"])
    msg["To"] = str(original["From"])
    msg["Subject"] = f"Re: {original['Subject']}"
    msg["Message-ID"] = make_msgid(domain="bigco.example")
    msg["In-Reply-To"] = str(original["Message-ID"])
    msg["References"] = str(original["Message-ID"])
    msg.set_content(f"{text}\n\n> {original.get_content().strip()[:60]}")
    return msg.as_bytes()


@pytest.mark.parametrize("idle", [True, False], ids=["idle", "polling 0.5 s"])
async def test_readme_run_email_out_over_smtp_reply_back_over_imap(
    store: Store, dovecot: Any, smtp_server: ServerFactory, idle: bool
) -> None:
    contact_box, sending_box = Inbox(dovecot), Inbox(dovecot)
    await contact_box.create()
    await sending_box.create()
    smtp = smtp_server()
    config = serve_config(smtp.port, dovecot.port, sending_box.folder, idle)
    _, key = await store.tenants.create_key("acme")
    async with TestClient(TestServer(build_app(config, store))) as http:
        api = Api(http, key, store)
        code, seq = await api.call(
            "POST",
            "/sequences",
            {
                "name": "Intro",
                "status": "active",
                "steps": [
                    {"kind": "email", "subject": "Hello {{first_name}}", "body": "Shall we talk?"},
                    {
                        "kind": "email",
                        "wait_days": 3,
                        "subject": "Following up",
                        "body": "Any news?",
                    },
                ],
            },
        )
        assert code == 201, seq
        code, enrolled = await api.call(
            "POST",
            f"/sequences/{seq['sequence']['id']}/enrollments",
            {"contact": {"email": "ada@bigco.example", "first_name": "Ada"}},
        )
        assert code == 201, enrolled
        eid = enrolled["enrollment"]["id"]

        # The step goes out over SMTP; the local MTA delivers it to the contact's mailbox.
        async with asyncio.timeout(15):
            while not smtp.handler.received:  # noqa: ASYNC110 - the SMTP server's thread
                await asyncio.sleep(0.01)
        (received,) = smtp.handler.received
        assert received.rcpt_tos == ["ada@bigco.example"]
        await contact_box.deliver(received.message.as_bytes())
        sent = await fetch_last(contact_box)
        assert "Hello Ada" in str(email.message_from_bytes(sent)["Subject"])

        # The contact answers; the answer lands in the sending mailbox seqd reads.
        arrived = await sending_box.deliver(answer(sent, "Yes, Tuesday works."))
        paused = await until_state(store, eid, ("paused", "reply_received"))
        delay = paused - arrived
        print(f"\nreadme run, {'idle' if idle else 'polling 0.5 s'}: {1000 * delay:.0f} ms")
        # At once with IDLE (Dovecot batches its notifications for about half a second),
        # within poll_seconds when polling; seconds of slack for a loaded machine.
        assert delay < (0.5 if idle else config_poll(config)) + 3.0
        code, body = await api.call("GET", f"/enrollments/{eid}")
        assert code == 200 and body["enrollment"]["paused_reason"] == "reply_received"
