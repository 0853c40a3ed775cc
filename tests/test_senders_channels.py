"""A message from a sender (POST /v1/senders) goes out with its address as the From: on
Twilio's wire format (or through its messaging service), and over SMTP through the
sender's profile's server, envelope and header alike."""

from __future__ import annotations

from seqd.channels import registry
from seqd.channels.base import FromSender
from seqd.config import ChannelsConfig, Config, SmtpConfig, SmtpServer
from tests.test_channels_smtp import ServerFactory, smtp_server  # noqa: F401
from tests.test_channels_smtp import outbound as email_message
from tests.test_channels_twilio import FakeTwilio, make_sender, outbound, twilio  # noqa: F401

NUMBER = "+13125550001"


async def test_twilio_sends_from_the_sender(twilio: FakeTwilio) -> None:  # noqa: F811
    sender = make_sender(twilio.base_url, messaging_service_sid="MG_DEFAULT")
    try:
        own = outbound()
        own.sender = FromSender(id="snd_1", address=NUMBER)
        service = outbound()
        service.sender = FromSender(
            id="snd_2", address=NUMBER, messaging_service_sid="MG" + "a" * 32
        )
        assert (await sender.send(own)).outcome == "sent"
        assert (await sender.send(service)).outcome == "sent"
    finally:
        await sender.close()
    first, second = (seen.form for seen in twilio.seen)
    # The sender's number, not the configured messaging service.
    assert first["From"] == NUMBER and "MessagingServiceSid" not in first
    assert second["MessagingServiceSid"] == "MG" + "a" * 32 and "From" not in second


async def test_smtp_sends_through_the_senders_profile(smtp_server: ServerFactory) -> None:  # noqa: F811
    default, warm = smtp_server(), smtp_server()
    smtp = SmtpConfig(
        host="127.0.0.1",
        port=default.port,
        tls="none",
        from_address="team@example.com",
        profiles={"warm": SmtpServer(host="127.0.0.1", port=warm.port, tls="none")},
    )
    senders = registry.build(Config(channels=ChannelsConfig(email="smtp", smtp=smtp)))
    try:
        message = email_message()
        message.sender = FromSender(
            id="snd_1", address="ana@acme.io", name="Ana Lopez", smtp_profile="warm"
        )
        through = senders.get("acme", "email", "warm")
        assert through is not senders.get("acme", "email")
        assert (await through.send(message)).outcome == "sent"
        plain = email_message(step=1)
        assert (await senders.get("acme", "email").send(plain)).outcome == "sent"
        # A profile the config no longer names: the tenant's own server.
        assert senders.get("acme", "email", "gone") is senders.get("acme", "email")
    finally:
        await senders.close()
    (got,) = warm.handler.received
    assert got.mail_from == "ana@acme.io"
    assert got.message["From"] == "Ana Lopez <ana@acme.io>"
    assert got.message["Message-ID"].endswith("@acme.io>")
    (other,) = default.handler.received
    assert other.mail_from == "team@example.com"


def test_check_names_a_bad_smtp_profile() -> None:
    import pytest

    from seqd.config import ConfigError

    for server, setting in [
        (SmtpServer(host=""), "channels.smtp.profiles.warm.host"),
        (SmtpServer(password="x"), "channels.smtp.profiles.warm.username"),
    ]:
        smtp = SmtpConfig(profiles={"warm": server})
        with pytest.raises(ConfigError, match=setting):
            registry.check(Config(channels=ChannelsConfig(email="smtp", smtp=smtp)))
