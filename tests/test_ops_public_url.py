"""`http.public_url`: follows the listener unless set; a port that differs from the
listener's without `http.behind_proxy` is warned about by `serve` and `check-config`; the
Twilio signature check and the unsubscribe links use the same value."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import pytest

from seqd import cli
from seqd import config as configmod
from seqd.lifecycle import twilio_signature, unsubscribe
from tests.conftest import ValkeyProcess
from tests.opsutil import Daemon

TOKEN = "tw-auth-token-for-public-url"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SEQD_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "http://127.0.0.1:8080"),
        ({"SEQD_HTTP_PORT": "9123"}, "http://127.0.0.1:9123"),
        ({"SEQD_HTTP_HOST": "seqd.lan", "SEQD_HTTP_PORT": "81"}, "http://seqd.lan:81"),
        # A wildcard listener is reached on the loopback address from this host.
        ({"SEQD_HTTP_HOST": "0.0.0.0", "SEQD_HTTP_PORT": "9124"}, "http://127.0.0.1:9124"),
        ({"SEQD_HTTP_HOST": "::", "SEQD_HTTP_PORT": "9125"}, "http://[::1]:9125"),
        ({"SEQD_HTTP_HOST": "::1"}, "http://[::1]:8080"),
        (
            {"SEQD_HTTP_PORT": "9126", "SEQD_HTTP_PUBLIC_URL": "https://seqd.example.com"},
            "https://seqd.example.com",
        ),
    ],
)
def test_public_url_follows_the_listener_unless_set(env: dict[str, str], expected: str) -> None:
    config = configmod.load(environ=env)
    assert config.http.public_url == expected
    assert unsubscribe.url(config, "tok").startswith(expected + "/v1/unsubscribe/")


@pytest.mark.parametrize(
    ("text", "warned"),
    [
        ("[http]\nport = 8080\npublic_url = 'http://127.0.0.1:9000'\n", True),
        # https without a port is 443, not the listener's 8080.
        ("[http]\nport = 8080\npublic_url = 'https://seqd.example.com'\n", True),
        ("[http]\npublic_url = 'https://seqd.example.com'\nbehind_proxy = true\n", False),
        ("[http]\nport = 9000\npublic_url = 'http://seqd.example.com:9000/'\n", False),
        ("[http]\nport = 80\npublic_url = 'http://seqd.example.com'\n", False),
        ("[http]\nport = 9000\n", False),
    ],
)
def test_check_config_warns_when_public_url_is_another_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, warned: bool
) -> None:
    path = tmp_path / "seqd.toml"
    path.write_text(text)
    assert cli.main(["check-config", str(path)]) == 0
    err = capsys.readouterr().err
    if warned:
        assert err.startswith("seqd: warning: http.public_url"), err
        assert "http.behind_proxy" in err and "http.port" in err
    else:
        assert "warning" not in err


def _post(url: str, form: dict[str, str], signature: str) -> int:
    request = urllib.request.Request(
        url,
        data=urlencode(form).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            twilio_signature.HEADER: signature,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _twilio_env() -> dict[str, str]:
    return {
        "SEQD_DISPATCH_ENABLED": "false",
        "SEQD_CHANNELS_SMS": "twilio",
        "SEQD_CHANNELS_TWILIO_ACCOUNT_SID": "AC1",
        "SEQD_CHANNELS_TWILIO_AUTH_TOKEN": TOKEN,
        "SEQD_CHANNELS_TWILIO_FROM_NUMBER": "+15005550006",
    }


def test_twilio_signature_checked_against_the_listener_url(
    valkey: ValkeyProcess, prefix: str, tmp_path: Path
) -> None:
    """No public_url set: Twilio called the URL seqd listens on, and its signature holds."""
    daemon = Daemon(valkey.url, prefix, tmp_path / "d", **_twilio_env()).start()
    try:
        daemon.wait_healthy()
        assert "public_url" not in daemon.stderr()
        url = f"http://127.0.0.1:{daemon.port}/v1/inbound/twilio/sms"
        form = {"From": "+14155550100", "To": "+15005550006", "Body": "hello", "MessageSid": "SM1"}
        assert _post(url, form, twilio_signature.compute(TOKEN, url, form.items())) == 200
        other = url.replace(str(daemon.port), "8080")
        assert _post(url, form, twilio_signature.compute(TOKEN, other, form.items())) == 403
    finally:
        daemon.stop()


def test_serve_warns_when_public_url_is_another_port(
    valkey: ValkeyProcess, prefix: str, tmp_path: Path
) -> None:
    daemon = Daemon(
        valkey.url,
        prefix,
        tmp_path / "d",
        SEQD_DISPATCH_ENABLED="false",
        SEQD_HTTP_PUBLIC_URL="http://127.0.0.1:1",
    ).start()
    try:
        daemon.wait_healthy()
        assert "config.public_url_port" in daemon.stderr()
    finally:
        daemon.stop()
