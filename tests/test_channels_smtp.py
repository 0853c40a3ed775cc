"""The smtp channel against a real SMTP server (aiosmtpd) in-process on a free port."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import ipaddress
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from seqd.channels import smtp as smtp_channel
from seqd.channels.base import OutboundMessage, SendResult
from seqd.channels.smtp import SmtpSender
from seqd.config import SmtpConfig
from tests.conftest import free_port


@dataclass
class Received:
    peer: object
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


@dataclass
class Handler:
    """Accepts mail, except for recipients whose local part names a failure to act out."""

    received: list[Received] = field(default_factory=list)
    noops: int = 0
    # Hang up on the next MAIL without answering, as a server that timed the session out.
    drop_next_mail: bool = False

    async def handle_MAIL(
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.drop_next_mail:
            self.drop_next_mail = False
            assert server.transport is not None
            server.transport.close()
            return "421 closing"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        local = address.partition("@")[0]
        if local == "tempfail":
            return "451 4.3.0 try again later"
        if local == "nosuchuser":
            return "550 5.1.1 no such user"
        if local == "slowrcpt":
            await asyncio.sleep(3)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        local = envelope.rcpt_tos[0].partition("@")[0]
        if local == "slowdata":
            await asyncio.sleep(3)
        if local == "spam":
            return "554 5.7.1 message rejected"
        if local == "greylist":
            return "452 4.2.2 mailbox full"
        content = envelope.original_content or b""
        parsed = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.received.append(
            Received(session.peer, envelope.mail_from or "", list(envelope.rcpt_tos), parsed)
        )
        return "250 2.0.0 queued"

    async def handle_NOOP(
        self, server: SMTPServer, session: Session, envelope: Envelope, arg: str
    ) -> str:
        self.noops += 1
        return "250 OK"


@dataclass
class Server:
    handler: Handler
    port: int
    controller: Controller
    running: bool = True

    def stop(self) -> None:
        self.running = False
        self.controller.stop()


ServerFactory = Callable[..., Server]


@pytest.fixture
def smtp_server() -> Iterator[ServerFactory]:
    started: list[Server] = []

    def start(handler: Handler | None = None, port: int | None = None, **kwargs: Any) -> Server:
        handler = handler or Handler()
        port = port or free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        server = Server(handler, port, controller)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.running:
            server.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made here."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


def outbound(to: str = "ada@example.org", step: int = 0, **over: Any) -> OutboundMessage:
    fields: dict[str, Any] = {
        "tenant": "acme",
        "enrollment_id": "enr_01",
        "contact_id": "con_01",
        "sequence_id": "seq_01",
        "step": step,
        "kind": "email",
        "to": to,
        "subject": "Hello",
        "body": "Hi Ada,\n. a line that starts with a dot\nBo",
    }
    fields.update(over)
    return OutboundMessage(**fields)


def text_of(msg: EmailMessage) -> str:
    body = msg.get_body(("plain",))
    assert body is not None
    return str(body.get_content()).replace("\r\n", "\n")


def make_sender(port: int, **over: Any) -> SmtpSender:
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "tls": "none",
        "from_address": "team@example.com",
        "from_name": "Acme Team",
        "pool_size": 2,
        "timeout_seconds": 2.0,
    }
    settings.update(over)
    return SmtpSender(SmtpConfig(**settings))


async def send_one(port: int, message: OutboundMessage, **over: Any) -> SendResult:
    sender = make_sender(port, **over)
    try:
        return await sender.send(message)
    finally:
        await sender.close()


async def test_headers_and_body(smtp_server: ServerFactory) -> None:
    server = smtp_server()
    result = await send_one(
        server.port,
        outbound(headers={"List-Unsubscribe": "<https://seqd.example.com/u/abc>"}),
    )
    assert result.outcome == "sent"
    assert result.provider_id == "<enr_01.0@example.com>"
    (got,) = server.handler.received
    assert got.mail_from == "team@example.com"
    assert got.rcpt_tos == ["ada@example.org"]
    msg = got.message
    assert msg["From"] == "Acme Team <team@example.com>"
    assert msg["To"] == "ada@example.org"
    assert msg["Subject"] == "Hello"
    assert msg["Message-ID"] == "<enr_01.0@example.com>"
    assert msg["Date"] is not None and msg["Date"].datetime.tzinfo is not None
    assert msg["List-Unsubscribe"] == "<https://seqd.example.com/u/abc>"
    assert msg["In-Reply-To"] is None and msg["References"] is None
    assert text_of(msg) == "Hi Ada,\n. a line that starts with a dot\nBo\n"


async def test_later_step_threads_to_the_first(smtp_server: ServerFactory) -> None:
    server = smtp_server()
    result = await send_one(
        server.port, outbound(step=2, thread_root="enr_01.0", subject="Re: Hello")
    )
    assert result.provider_id == "<enr_01.2@example.com>"
    msg = server.handler.received[0].message
    assert msg["In-Reply-To"] == "<enr_01.0@example.com>"
    assert msg["References"] == "<enr_01.0@example.com>"
    assert msg["Subject"] == "Re: Hello"


async def test_non_ascii_text_survives(smtp_server: ServerFactory) -> None:
    server = smtp_server()
    result = await send_one(
        server.port,
        outbound(subject="Grüße, Zoë", body="Hallo Jürgen — bis bald ✓"),
        from_name="Bö",
    )
    assert result.outcome == "sent"
    msg = server.handler.received[0].message
    assert msg["Subject"] == "Grüße, Zoë"
    assert msg["From"] == "Bö <team@example.com>"
    assert text_of(msg) == "Hallo Jürgen — bis bald ✓\n"


@pytest.mark.parametrize(
    ("over", "named"),
    [
        ({"subject": "Hi\r\nBcc: victim@example.net"}, "Subject"),
        ({"headers": {"X-Campaign": "a\nb"}}, "X-Campaign"),
        ({"to": "ada@example.org\r\nBcc: victim@example.net"}, "To"),
        ({"thread_root": "enr_01.0\n"}, "In-Reply-To"),
    ],
)
async def test_header_with_cr_or_lf_is_refused(
    smtp_server: ServerFactory, over: dict[str, Any], named: str
) -> None:
    server = smtp_server()
    result = await send_one(server.port, outbound(**over))
    assert result.outcome == "failed"
    assert result.error == f"smtp: header {named} contains CR or LF"
    assert server.handler.received == []


async def test_own_headers_cannot_be_replaced(smtp_server: ServerFactory) -> None:
    server = smtp_server()
    result = await send_one(server.port, outbound(headers={"Message-ID": "<x@y>"}))
    assert result.outcome == "failed" and result.error == "smtp: header Message-ID is set by seqd"


async def test_pool_carries_many_messages_per_connection(smtp_server: ServerFactory) -> None:
    server = smtp_server()
    sender = make_sender(server.port, pool_size=3)
    try:
        for step in range(10):
            assert (await sender.send(outbound(step=step))).outcome == "sent"
        results = await asyncio.gather(*(sender.send(outbound(step=s)) for s in range(10, 40)))
    finally:
        await sender.close()
    assert {r.outcome for r in results} == {"sent"}
    assert len(server.handler.received) == 40
    # Ten in a row on one session; thirty at once on at most pool_size sessions.
    assert len({got.peer for got in server.handler.received[:10]}) == 1
    assert len({got.peer for got in server.handler.received}) <= 3


async def test_reconnects_after_the_server_drops_the_session(smtp_server: ServerFactory) -> None:
    first = smtp_server()
    sender = make_sender(first.port, pool_size=1)
    try:
        assert (await sender.send(outbound(step=0))).outcome == "sent"
        first.stop()
        second = smtp_server(port=first.port)
        assert (await sender.send(outbound(step=1))).outcome == "sent"
    finally:
        await sender.close()
    assert len(second.handler.received) == 1


async def test_session_dead_at_mail_is_replaced_within_the_send(
    smtp_server: ServerFactory,
) -> None:
    server = smtp_server()
    sender = make_sender(server.port, pool_size=1)
    try:
        assert (await sender.send(outbound(step=0))).outcome == "sent"
        server.handler.drop_next_mail = True
        # Nothing can have been delivered at MAIL: a fresh session, same send.
        assert (await sender.send(outbound(step=1))).outcome == "sent"
    finally:
        await sender.close()
    first, second = server.handler.received
    assert first.peer != second.peer


async def test_idle_session_is_probed_with_noop(
    smtp_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smtp_channel, "_PROBE_AFTER_IDLE_SECONDS", 0.0)
    server = smtp_server()
    sender = make_sender(server.port, pool_size=1)
    try:
        for step in range(3):
            assert (await sender.send(outbound(step=step))).outcome == "sent"
    finally:
        await sender.close()
    assert server.handler.noops == 2
    assert len({got.peer for got in server.handler.received}) == 1


async def test_refusals_by_code_and_the_session_stays_usable(smtp_server: ServerFactory) -> None:
    server = smtp_server()
    sender = make_sender(server.port, pool_size=1)
    try:
        temp = await sender.send(outbound("tempfail@example.org"))
        hard = await sender.send(outbound("nosuchuser@example.org"))
        spam = await sender.send(outbound("spam@example.org"))
        full = await sender.send(outbound("greylist@example.org"))
        ok = await sender.send(outbound())
    finally:
        await sender.close()
    assert temp.outcome == "retry" and temp.error is not None and "451" in temp.error
    assert hard.outcome == "failed" and hard.error is not None and "550" in hard.error
    assert spam.outcome == "failed" and spam.error is not None and "554" in spam.error
    assert full.outcome == "retry" and full.error is not None and "452" in full.error
    assert ok.outcome == "sent"
    assert len({got.peer for got in server.handler.received}) == 1


async def test_connection_refused_is_a_retry() -> None:
    result = await send_one(free_port(), outbound())
    assert result.outcome == "retry"
    assert result.error is not None and "cannot connect" in result.error


async def test_timeout_before_data_is_a_retry(smtp_server: ServerFactory) -> None:
    server = smtp_server()
    result = await send_one(server.port, outbound("slowrcpt@example.org"), timeout_seconds=0.3)
    assert result.outcome == "retry"


async def test_timeout_after_data_is_unknown(smtp_server: ServerFactory) -> None:
    server = smtp_server()
    result = await send_one(server.port, outbound("slowdata@example.org"), timeout_seconds=0.3)
    assert result.outcome == "unknown"


async def test_starttls_with_login(
    smtp_server: ServerFactory, certificate: tuple[Path, Path]
) -> None:
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(
        server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        # handled=False: the server, not this callback, answers 535 on a failure.
        return AuthResult(success=data.password == b"s3cret", handled=False)

    server = smtp_server(
        tls_context=server_tls(certificate),
        require_starttls=True,
        auth_required=True,
        authenticator=authenticator,
    )
    over = {"tls": "starttls", "validate_certs": False, "username": "bo"}
    result = await send_one(server.port, outbound(), password="s3cret", **over)
    assert result.outcome == "sent"
    assert len(server.handler.received) == 1
    # Wrong credentials are our configuration, not this message: retry, never "failed".
    refused = await send_one(server.port, outbound(step=1), password="nope", **over)
    assert refused.outcome == "retry"
    assert refused.error is not None and "login refused" in refused.error
    # aiosmtplib tries each mechanism the server offers (PLAIN, then LOGIN) before giving up.
    assert logins[0] == (b"bo", b"s3cret")
    assert set(logins[1:]) == {(b"bo", b"nope")}


# A connection reset mid-handshake (the client refuses the certificate; aiosmtpd logs a
# TLSSetupException on its own loop in a thread) can leave a transport collected while
# still closing when the loops stop right after: a ResourceWarning, 1 run in about 20
# under CPU load, 0 in 25 with this filter. The test asserts what the sender does.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_starttls_validates_certificates_by_default(
    smtp_server: ServerFactory, certificate: tuple[Path, Path]
) -> None:
    server = smtp_server(tls_context=server_tls(certificate), require_starttls=True)
    result = await send_one(server.port, outbound(), tls="starttls")
    assert result.outcome == "retry"
    assert server.handler.received == []


async def test_implicit_tls(smtp_server: ServerFactory, certificate: tuple[Path, Path]) -> None:
    server = smtp_server(ssl_context=server_tls(certificate))
    result = await send_one(server.port, outbound(), tls="implicit", validate_certs=False)
    assert result.outcome == "sent"
    assert len(server.handler.received) == 1
