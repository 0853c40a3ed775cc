"""Inbound email: replies (by Message-ID, by sender), auto-replies and DSNs, all built with
the stdlib `email` package; the endpoints and `seqd ingest-email`."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from email.message import EmailMessage, Message
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import make_msgid

import pytest

from seqd import cli
from seqd.lifecycle import email_inbound, unsubscribe
from seqd.store.db import Store, connect
from tests.conftest import ValkeyProcess
from tests.dispatchutil import Clock, email, enroll, events, raw, sequence, sms
from tests.lifecycleutil import (
    BETA_INBOUND_SECRET,
    EMAIL,
    Client,
    client,
    config,
    contact,
    send_due,
)

OURS = "hello@acme.example.com"


def sent_id(eid: str, step: int = 0) -> str:
    """The Message-ID seqd's SMTP sender gives step `step` of `eid`."""
    return f"<{eid}.{step}@acme.example.com>"


def reply(
    *,
    sender: str = f"Ada <{EMAIL}>",
    in_reply_to: str | None = None,
    subject: str = "Re: Hello",
    **headers: str,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = OURS
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="example.com")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = f"<root@elsewhere.example> {in_reply_to}"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("Thanks, let's talk tomorrow.\n\n> quoted text")
    return msg.as_bytes()


def dsn(recipient: str, status: str, action: str = "failed", original_id: str | None = None,
        headers_only: bool = False) -> bytes:  # fmt: skip
    """An RFC 3464 delivery status notification, as an MTA builds one."""
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = "Mail Delivery System <MAILER-DAEMON@mx.acme.example.com>"
    report["To"] = OURS
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Auto-Submitted"] = "auto-replied"
    report.attach(
        MIMEText("I'm sorry to have to inform you that your message could not be delivered.")
    )
    status_part = MIMEBase("message", "delivery-status")
    per_message = Message()
    per_message["Reporting-MTA"] = "dns; mx.acme.example.com"
    per_recipient = Message()
    per_recipient["Final-Recipient"] = f"rfc822; {recipient}"
    per_recipient["Original-Recipient"] = f"rfc822;{recipient}"
    per_recipient["Action"] = action
    per_recipient["Status"] = status
    per_recipient["Diagnostic-Code"] = f"smtp; 550 {status} mailbox unavailable"
    status_part.set_payload([per_message, per_recipient])
    report.attach(status_part)
    original = EmailMessage()
    original["From"] = OURS
    original["To"] = recipient
    original["Subject"] = "Hello"
    original["Message-ID"] = original_id or make_msgid()
    original.set_content("Hello")
    if headers_only:
        part = MIMEText(str(original).split("\n\n", 1)[0], "rfc822-headers")
        report.attach(part)
    else:
        report.attach(MIMEMessage(original))
    return report.as_bytes()


def out_of_office(**headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Ada <{EMAIL}>"
    msg["To"] = OURS
    msg["Subject"] = headers.pop("subject", "Out of Office: Hello")
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("I am away until Monday with limited access to email.")
    return msg.as_bytes()


async def post(api: Client, raw_message: bytes, tenant: str = "acme") -> tuple[int, dict]:  # type: ignore[type-arg]
    code, body = await api.call(
        "POST",
        "/inbound/email",
        tenant=tenant,
        data=raw_message,
        headers={"Content-Type": "message/rfc822"},
    )
    return code, body


async def mailed(store: Store) -> tuple[str, str, str, str]:
    """A contact in an email-only sequence, a mixed one (email, then sms) and an SMS-only
    one, each first step sent."""
    cid = await contact(store)
    ids = []
    for steps in ((email(), email(wait=10)), (email(), sms(wait=10)), (sms(), sms(wait=10))):
        (e,) = await enroll(store, await sequence(store, *steps), [cid])
        ids.append(e.id)
    await send_due(store, Clock())
    return cid, ids[0], ids[1], ids[2]


async def state(store: Store, eid: str) -> tuple[str, str | None]:
    h = await raw(store, eid)
    return h["st"], h.get("pr") or h.get("cr")


# -- replies ------------------------------------------------------------------------------
async def test_reply_matched_by_in_reply_to(store: Store) -> None:
    _, only_email, mixed, only_sms = await mailed(store)
    async with client(store) as api:
        # Forwarded from another address: the Message-ID still names the enrollment.
        code, body = await post(
            api, reply(sender="assistant@other.example", in_reply_to=sent_id(mixed))
        )
    assert code == 200, body
    assert body["kind"] == "reply"
    assert body["enrollments"] == [{"id": mixed, "outcome": "paused"}]
    assert await state(store, mixed) == ("paused", "reply_received")
    assert await state(store, only_email) == ("active", None)
    assert await state(store, only_sms) == ("active", None)


async def test_reply_matched_by_sender(store: Store) -> None:
    _, only_email, mixed, only_sms = await mailed(store)
    async with client(store) as api:
        code, body = await post(api, reply(sender=f"ADA <{EMAIL.replace('example', 'EXAMPLE')}>"))
    assert code == 200
    assert sorted(body["enrollments"], key=lambda c: c["id"]) == sorted(
        [
            {"id": only_email, "outcome": "paused"},
            {"id": mixed, "outcome": "paused"},
            {"id": only_sms, "outcome": "not_sent"},
        ],
        key=lambda c: c["id"],
    )
    assert await state(store, only_email) == ("paused", "reply_received")
    assert await state(store, only_sms) == ("active", None)  # it never mailed


async def test_reply_from_a_stranger_changes_nothing(store: Store) -> None:
    _, only_email, _, _ = await mailed(store)
    async with client(store) as api:
        code, body = await post(api, reply(sender="stranger@example.org"))
    assert code == 200 and body["enrollments"] == [] and body["contact_id"] is None
    assert await state(store, only_email) == ("active", None)


async def test_another_tenants_message_id_is_not_followed(store: Store) -> None:
    _, only_email, _, _ = await mailed(store)
    async with client(store) as api:
        code, body = await post(
            api, reply(sender="x@example.org", in_reply_to=sent_id(only_email)), tenant="beta"
        )
    assert code == 200 and body["enrollments"] == []
    assert await state(store, only_email) == ("active", None)


# -- automatic replies -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        {"Auto_Submitted": "auto-replied"},
        {"Auto_Submitted": "auto-generated; type=vacation", "subject": "Re: Hello"},
        {"X_Autoreply": "yes", "subject": "Re: Hello"},
        {"Precedence": "auto_reply", "subject": "Re: Hello"},
        {"subject": "Automatic reply: Hello"},
        {"subject": "Out of the office until May 3"},
    ],
)
async def test_out_of_office_is_recorded_and_pauses_nothing(
    store: Store, headers: dict[str, str]
) -> None:
    cid, only_email, mixed, _ = await mailed(store)
    async with client(store) as api:
        code, body = await post(api, out_of_office(**headers))
    assert code == 200
    assert body["kind"] == "auto_reply" and body["contact_id"] == cid
    assert await state(store, only_email) == ("active", None)
    assert await state(store, mixed) == ("active", None)
    (recorded,) = [e for e in await events(store) if e["type"] == "contact.auto_replied"]
    assert recorded["contact_id"] == cid


async def test_auto_submitted_no_is_a_person(store: Store) -> None:
    _, only_email, _, _ = await mailed(store)
    async with client(store) as api:
        code, body = await post(api, reply(Auto_Submitted="no"))
    assert code == 200 and body["kind"] == "reply"
    assert await state(store, only_email) == ("paused", "reply_received")


# -- bounces ------------------------------------------------------------------------------
async def test_permanent_bounce(store: Store) -> None:
    cid, only_email, mixed, only_sms = await mailed(store)
    async with client(store) as api:
        code, body = await post(api, dsn(EMAIL, "5.1.1", original_id=sent_id(only_email)))
        assert code == 200, body
        assert body["kind"] == "bounce" and body["suppressed"] is True
        _, listed = await api.call("GET", "/suppressions?channel=email")
        assert [(s["value"], s["reason"]) for s in listed["data"]] == [(EMAIL, "bounced")]
        # Re-enrolling in a sequence that only mails is now pointless: 409.
        seq = await sequence(store, email())
        code, problem = await api.call(
            "POST", f"/sequences/{seq.id}/enrollments", {"contact_id": cid}
        )
        assert code == 409, problem
    assert await state(store, only_email) == ("cancelled", "bounced")
    assert await state(store, mixed) == ("active", None)  # its SMS step still goes out
    assert await state(store, only_sms) == ("active", None)
    (bounced,) = [e for e in await events(store) if e["type"] == "contact.bounced"]
    assert bounced["contact_id"] == cid and bounced["status"] == "5.1.1"
    assert bounced["cancelled"] == [only_email]


@pytest.mark.parametrize(
    ("status", "action", "policy"),
    [("4.2.2", "delayed", False), ("4.4.1", "failed", False), ("5.7.1", "failed", True)],
)
async def test_transient_and_policy_bounces_are_only_recorded(
    store: Store, status: str, action: str, policy: bool
) -> None:
    cid, only_email, _, _ = await mailed(store)
    async with client(store) as api:
        code, body = await post(api, dsn(EMAIL, status, action))
        assert (await api.call("GET", "/suppressions"))[1]["total"] == 0
    assert code == 200 and body["kind"] == "soft_bounce" and body["suppressed"] is False
    assert await state(store, only_email) == ("active", None)
    (soft,) = [e for e in await events(store) if e["type"] == "contact.soft_bounced"]
    assert soft["contact_id"] == cid and soft["status"] == status and soft["policy"] is policy


async def test_bounce_of_an_address_no_contact_holds(store: Store) -> None:
    async with client(store) as api:
        code, body = await post(api, dsn("gone@example.net", "5.1.1", headers_only=True))
    assert code == 200 and body["suppressed"] is True and body["contact_id"] is None
    assert await store.suppressions.get("acme", "email", "gone@example.net") is not None
    assert [e["type"] for e in await events(store)] == ["contact.bounced"]


def test_parse_dsn_with_rfc822_headers_names_the_enrollment() -> None:
    eid = "enr_01M880EKDM4XR9YMTYSEEY"
    parsed = email_inbound.parse(
        dsn("bob@example.com", "5.1.1", original_id=sent_id(eid), headers_only=True), []
    )
    assert parsed.kind == "bounce" and parsed.enrollments == [eid]
    assert parsed.recipients[0].address == "bob@example.com"
    assert parsed.recipients[0].diagnostic == "smtp; 550 5.1.1 mailbox unavailable"


@pytest.mark.parametrize(
    "raw_message",
    [b"", b"\x00\xff garbage", b"Subject: only a header\r\n", b"From: <>\r\n\r\nbody", b"x" * 10],
)
def test_parse_never_raises(raw_message: bytes) -> None:
    assert email_inbound.parse(raw_message, ["out of office"]).kind in set(
        email_inbound.MessageKind
    )


# -- the mailto: of List-Unsubscribe ----------------------------------------------------------
async def test_unsubscribe_by_mail(store: Store) -> None:
    cid, only_email, _, _ = await mailed(store)
    secret = "m" * 32
    token = unsubscribe.sign(secret, "acme", cid, EMAIL)
    async with client(store, config(unsubscribe_secret=secret)) as api:
        code, body = await post(api, reply(subject=f"unsubscribe {token}"))
        assert code == 200 and body["kind"] == "unsubscribe"
        # A forged token is an ordinary reply.
        code, body = await post(api, reply(subject="unsubscribe abc.def"))
        assert body["kind"] == "reply"
    assert await state(store, only_email) == ("cancelled", "opted_out")


# -- endpoints ------------------------------------------------------------------------------
async def test_endpoint_authentication_and_bad_input(store: Store) -> None:
    await mailed(store)
    async with client(store) as api:
        http = api.http
        message = reply()
        rfc822 = {"Content-Type": "message/rfc822"}
        resp = await http.post("/v1/inbound/email", data=message, headers=rfc822)
        assert resp.status == 401
        resp = await http.post(
            f"/v1/inbound/email/{BETA_INBOUND_SECRET}", data=message, headers=rfc822
        )
        assert resp.status == 200 and (await resp.json())["tenant"] == "beta"
        resp = await http.post(
            f"/v1/inbound/email/{BETA_INBOUND_SECRET}x", data=message, headers=rfc822
        )
        assert resp.status == 404
        code, problem = await api.call(
            "POST", "/inbound/email", data=message, headers={"Content-Type": "text/plain"}
        )
        assert code == 415, problem
        code, problem = await api.call("POST", "/inbound/email", data=b"  ", headers=rfc822)
        assert code == 422 and problem["errors"][0]["path"] == "body"


# -- seqd ingest-email ----------------------------------------------------------------------
class _Stdin:
    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)


def test_cli_ingest_email(
    valkey: ValkeyProcess, prefix: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    async def seed() -> str:
        store = await Store.open(connect(valkey.url), prefix, 4)
        try:
            return (await mailed(store))[1]
        finally:
            await store.close()

    only_email = asyncio.run(seed())
    monkeypatch.delenv("SEQD_CHECK_SLOTS", raising=False)  # not a setting: the tests' switch
    monkeypatch.setenv("SEQD_REDIS_URL", valkey.url)
    monkeypatch.setenv("SEQD_REDIS_PREFIX", prefix)
    monkeypatch.setenv("SEQD_LOG_LEVEL", "warning")
    # No --tenant: the Message-ID the reply refers to names it (a shared MTA pipe).
    monkeypatch.setattr(sys, "stdin", _Stdin(reply(in_reply_to=sent_id(only_email))))
    assert cli.main(["ingest-email"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["kind"] == "reply" and result["tenant"] == "acme"
    assert result["enrollments"] == [{"id": only_email, "outcome": "paused"}]

    monkeypatch.setattr(sys, "stdin", _Stdin(b""))
    assert cli.main(["ingest-email", "--tenant", "acme"]) == 65


def test_cli_ingest_email_store_down(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import free_port

    monkeypatch.delenv("SEQD_CHECK_SLOTS", raising=False)
    monkeypatch.setenv("SEQD_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("SEQD_REDIS_SOCKET_TIMEOUT", "0.5")
    monkeypatch.setenv("SEQD_LOG_LEVEL", "warning")
    monkeypatch.setattr(sys, "stdin", _Stdin(reply()))
    assert cli.main(["ingest-email", "--tenant", "acme"]) == 75
