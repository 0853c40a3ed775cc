"""`seqd check-config`: effective settings with every secret masked; a bad one named.
Secrets from `$CREDENTIALS_DIRECTORY` (systemd LoadCredential=)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from seqd import cli
from seqd import config as configmod
from seqd.config import ConfigError

SECRETS = {
    "redis_pw": "r3dis-pa55",
    "twilio": "tw-auth-token-1",
    "smtp": "smtp-pa55",
    "header": "Bearer hook-token-9",
    "tenant_twilio": "tenant-tw-token",
    "query": "q-token-7",
    "smtp_url_pw": "u-pa55",
}

CONFIG = f"""
[redis]
url = "redis://seqd:{SECRETS["redis_pw"]}@redis.internal:6379/0"

[metrics]
listen = "127.0.0.1:9100"

[log]
file = "/var/log/seqd.log"

[channels]
sms = "twilio"
email = "smtp"

[channels.twilio]
account_sid = "AC123"
auth_token = "{SECRETS["twilio"]}"
from_number = "+15005550006"

[channels.http]
url = "https://sms.example.com/send?token={SECRETS["query"]}&v=2"
header_value = "{SECRETS["header"]}"

[channels.smtp]
host = "smtp.example.com"
username = "mailer"
password = "{SECRETS["smtp"]}"

[tenants.acme.channels.twilio]
auth_token = "{SECRETS["tenant_twilio"]}"
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SEQD_* of the test run (conftest's SEQD_CHECK_SLOTS) reaches the loader."""
    for name in list(os.environ):
        if name.startswith("SEQD_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def test_check_config_masks_every_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "seqd.toml"
    path.write_text(CONFIG)
    assert cli.main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    for name, secret in SECRETS.items():
        assert secret not in out, name
    data = json.loads(out)
    assert data["redis"]["url"] == "redis://seqd:***@redis.internal:6379/0"
    assert data["channels"]["twilio"]["auth_token"] == "***"
    assert data["channels"]["twilio"]["account_sid"] == "AC123"
    assert data["channels"]["http"]["header_value"] == "***"
    assert data["channels"]["http"]["header_name"] == "Authorization"
    assert data["channels"]["http"]["url"] == "https://sms.example.com/send?token=***&v=2"
    assert data["channels"]["smtp"]["password"] == "***"
    assert data["channels"]["smtp"]["username"] == "mailer"
    assert data["tenants"]["acme"]["channels"]["twilio"]["auth_token"] == "***"
    assert data["metrics"]["listen"] == "127.0.0.1:9100"
    assert data["log"]["file"] == "/var/log/seqd.log"


def test_masked_keeps_empty_secrets_visible() -> None:
    # An unset secret shows as empty: the operator sees it is missing, not "***".
    data = configmod.masked(configmod.load(environ={}))
    assert data["channels"]["twilio"]["auth_token"] == ""
    assert data["channels"]["smtp"]["password"] is None


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[redis]\nshards = 0\n", "redis.shards"),
        ("[http]\nport = 'eighty'\n", "http.port"),
        ("[metrics]\nlisten = 'nowhere'\n", "metrics.listen"),
        ("[metrics]\nlisten = '127.0.0.1:70000'\n", "listen"),
        ("[log]\nlevel = 'loud'\n", "log.level"),
        ("[log]\nfiles = 'x'\n", "log.files"),
        ("[redis\n", "not valid TOML"),
    ],
)
def test_bad_config_exits_non_zero_naming_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, named: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert cli.main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seqd: bad config:")
    assert named in err


def test_missing_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", str(tmp_path / "none.toml")]) == 2
    assert "none.toml" in capsys.readouterr().err


def test_bad_environment_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SEQD_METRICS_LISTN", "x")
    assert cli.main(["check-config"]) == 2
    assert "SEQD_METRICS_LISTN" in capsys.readouterr().err


def test_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "SEQD_CHANNELS_TWILIO_AUTH_TOKEN").write_text("from-credential\n")
    (creds / "seqd_redis_url").write_text("redis://:pw@10.0.0.5:6379/0")
    (creds / "unrelated").write_text("ignored")
    (creds / "SEQD_SUBDIR").mkdir()
    config = configmod.load(environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert config.channels.twilio.auth_token == "from-credential"
    assert config.redis.url == "redis://:pw@10.0.0.5:6379/0"
    # The environment wins over a credential, a credential over the file.
    file = tmp_path / "seqd.toml"
    file.write_text('[channels.twilio]\nauth_token = "from-file"\nfrom_number = "+15005550006"\n')
    config = configmod.load(file, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert config.channels.twilio.auth_token == "from-credential"
    config = configmod.load(
        file,
        environ={
            "CREDENTIALS_DIRECTORY": str(creds),
            "SEQD_CHANNELS_TWILIO_AUTH_TOKEN": "from-env",
        },
    )
    assert config.channels.twilio.auth_token == "from-env"


def test_credential_with_a_bad_name_is_named(tmp_path: Path) -> None:
    (tmp_path / "SEQD_CHANNELS_TWILIO_TOKEN").write_text("x")
    with pytest.raises(ConfigError, match="SEQD_CHANNELS_TWILIO_TOKEN"):
        configmod.load(environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})


def test_check_config_with_credentials_masks_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "SEQD_CHANNELS_SMTP_PASSWORD").write_text("cred-secret-5")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert cli.main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "cred-secret-5" not in out
    assert json.loads(out)["channels"]["smtp"]["password"] == "***"
