"""Which sender a tenant gets, sharing of equal senders, and the start-up check."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqd import cli
from seqd.channels import registry
from seqd.channels.base import OutboundMessage
from seqd.channels.http_sms import HttpSmsSender
from seqd.channels.log import LogSender
from seqd.channels.smtp import SmtpSender
from seqd.channels.twilio import TwilioSender
from seqd.config import Config, ConfigError, load

CONFIG = """
[channels]
sms = "twilio"
email = "smtp"

[channels.twilio]
account_sid = "AC1"
auth_token = "tok"
from_number = "+15550000001"

[channels.smtp]
host = "mail.example.com"
from_address = "team@example.com"

[tenants.acme.channels.twilio]
from_number = "+15550000002"

[tenants.globex.channels]
sms = "http"
email = "log"

[tenants.globex.channels.http]
url = "https://hooks.example.com/sms"

[tenants.initech.channels.smtp]
host = "mail.example.com"
"""

MESSAGE = OutboundMessage(
    tenant="acme",
    enrollment_id="enr_01",
    contact_id="con_01",
    sequence_id="seq_01",
    step=0,
    kind="sms",
    to="+15551234567",
    body="hi",
)


def load_text(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "seqd.toml"
    path.write_text(text)
    return load(path, environ={})


async def test_per_tenant_selection_and_sharing(tmp_path: Path) -> None:
    senders = registry.build(load_text(tmp_path, CONFIG))
    try:
        default_sms = senders.get("nobody", "sms")
        acme_sms = senders.get("acme", "sms")
        assert isinstance(default_sms, TwilioSender)
        assert isinstance(acme_sms, TwilioSender)
        # acme has its own from number: its own sender.
        assert acme_sms is not default_sms
        assert acme_sms.form(MESSAGE)["From"] == "+15550000002"
        assert default_sms.form(MESSAGE)["From"] == "+15550000001"
        # initech's settings equal the defaults once merged: the same sender, one pool.
        assert senders.get("initech", "sms") is default_sms
        assert senders.get("initech", "email") is senders.get("nobody", "email")
        assert isinstance(senders.get("nobody", "email"), SmtpSender)
        assert isinstance(senders.get("globex", "sms"), HttpSmsSender)
        assert isinstance(senders.get("globex", "email"), LogSender)
        assert senders.get("acme", "sms") is acme_sms
    finally:
        await senders.close()


async def test_log_is_the_default_for_both_kinds() -> None:
    senders = registry.build(Config())
    try:
        sms = senders.get("acme", "sms")
        assert isinstance(sms, LogSender)
        # One log file, one sender, whatever the kind.
        assert senders.get("acme", "email") is sms
    finally:
        await senders.close()


def test_check_accepts_a_complete_config(tmp_path: Path) -> None:
    registry.check(load_text(tmp_path, CONFIG))
    registry.check(Config())


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[channels]\nsms = "twilio"\n', "channels.twilio.account_sid"),
        (
            '[channels]\nsms = "twilio"\n[channels.twilio]\naccount_sid = "AC1"\n',
            "channels.twilio.auth_token",
        ),
        (
            '[channels]\nsms = "twilio"\n[channels.twilio]\naccount_sid = "AC1"\n'
            'auth_token = "t"\n',
            "channels.twilio.from_number",
        ),
        (
            '[channels]\nsms = "twilio"\n[channels.twilio]\naccount_sid = "AC1"\n'
            'auth_token = "t"\nfrom_number = "+1555"\nbase_url = "ftp://x"\n',
            "channels.twilio.base_url",
        ),
        ('[channels]\nsms = "http"\n', "channels.http.url"),
        ('[channels]\nsms = "http"\n[channels.http]\nurl = "nope"\n', "channels.http.url"),
        (
            '[channels]\nsms = "http"\n[channels.http]\nurl = "http://x/"\n'
            'header_name = "X Bad"\nheader_value = "v"\n',
            "channels.http.header_name",
        ),
        (
            '[channels]\nemail = "smtp"\n[channels.smtp]\nfrom_address = "nobody"\n',
            "channels.smtp.from_address",
        ),
        (
            '[channels]\nemail = "smtp"\n[channels.smtp]\npassword = "p"\n',
            "channels.smtp.username",
        ),
        ('[tenants.acme.channels]\nsms = "twilio"\n', "tenants.acme.channels.twilio.account_sid"),
    ],
)
def test_check_names_the_missing_setting(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        registry.check(load_text(tmp_path, text))
    assert str(info.value).startswith(named + ":")


def test_messaging_service_replaces_from_number(tmp_path: Path) -> None:
    registry.check(
        load_text(
            tmp_path,
            '[channels]\nsms = "twilio"\n[channels.twilio]\naccount_sid = "AC1"\n'
            'auth_token = "t"\nmessaging_service_sid = "MG1"\n',
        )
    )


def test_check_config_command_names_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # conftest's switch for the slot checker is not a setting of the command.
    monkeypatch.delenv("SEQD_CHECK_SLOTS", raising=False)
    path = tmp_path / "seqd.toml"
    path.write_text('[channels]\nsms = "http"\n')
    assert cli.main(["check-config", str(path)]) == 2
    assert "channels.http.url: required" in capsys.readouterr().err
