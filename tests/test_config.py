"""Config loading: TOML, environment overrides, credentials, errors naming the setting."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from seqd import config
from seqd.config import Config, ConfigError

EXAMPLE = Path(__file__).parent.parent / "config.example.toml"


def test_defaults_need_no_file() -> None:
    cfg = config.load(environ={})
    assert cfg.redis.url is None and cfg.http.base_path == "/v1"
    assert cfg.embedded.appendfsync == "everysec"


def test_env_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[http]\nport = 9000\nhost = "0.0.0.0"\n')
    cfg = config.load(path, environ={"SEQD_HTTP_PORT": "9100", "SEQD_REDIS_URL": "redis://x"})
    assert (cfg.http.port, cfg.http.host, cfg.redis.url) == (9100, "0.0.0.0", "redis://x")
    cfg = config.load(environ={"SEQD_CONFIG": str(path)})
    assert cfg.http.port == 9000


def test_nested_env_and_lists() -> None:
    cfg = config.load(
        environ={
            "SEQD_CHANNELS_TWILIO_AUTH_TOKEN": "tok",
            "SEQD_DISPATCH_RETRY_BACKOFF_SECONDS": "[1, 2, 3]",
            "SEQD_DISPATCH_ENABLED": "false",
        }
    )
    assert cfg.channels.twilio.auth_token == "tok"
    assert cfg.dispatch.retry_backoff_seconds == [1, 2, 3]
    assert cfg.dispatch.enabled is False


def test_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "SEQD_CHANNELS_SMTP_PASSWORD").write_text("s3cret\n")
    cfg = config.load(environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert cfg.channels.smtp.password == "s3cret"


@pytest.mark.parametrize(
    ("toml", "env", "setting"),
    [
        ("[http]\nport = 70000\n", {}, "http.port"),
        ("[http]\nbogus = 1\n", {}, "http.bogus"),
        ("[nope]\nx = 1\n", {}, "nope"),
        ("[redis]\nprefix = 'has space'\n", {}, "redis.prefix"),
        ("[embedded]\nappendfsync = 'sometimes'\n", {}, "embedded.appendfsync"),
        ("", {"SEQD_HTTP_PORT": "eighty"}, "http.port"),
        ("", {"SEQD_HTTP_NOPE": "1"}, "SEQD_HTTP_NOPE"),
        ("", {"SEQD_HTTP": "1"}, "SEQD_HTTP"),
        ("[http\n", {}, "not valid TOML"),
    ],
)
def test_bad_config_names_the_setting(
    tmp_path: Path, toml: str, env: dict[str, str], setting: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        config.load(path, environ=env)
    assert setting in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        config.load("/nonexistent/seqd.toml", environ={})


def _leaves(value: Any, prefix: str = "") -> set[str]:
    if isinstance(value, dict):
        out: set[str] = set()
        for k, v in value.items():
            out |= _leaves(v, f"{prefix}.{k}" if prefix else k)
        return out
    return {prefix}


def test_example_config_is_valid_and_names_every_setting() -> None:
    cfg = config.load(EXAMPLE, environ={})
    assert isinstance(cfg, Config)
    text = EXAMPLE.read_text()
    # Every setting appears in the example, set or commented out under its section.
    setting = re.compile(r"^#\s*([a-z_][a-z_.]*\s*=.*)$")
    uncommented = "\n".join(
        (m.group(1) if (m := setting.match(line)) else line) for line in text.splitlines()
    )
    documented = _leaves(tomllib.loads(uncommented))
    defaults = _leaves(msgspec.to_builtins(Config()))
    # An optional table (default None, as [channels.imap]) is documented by its keys.
    documented |= {d.rsplit(".", 1)[0] for d in documented if "." in d}
    missing = {d for d in defaults if d not in documented and not d.startswith("tenants")}
    assert not missing, f"settings missing from config.example.toml: {sorted(missing)}"


def test_tenant_channels_merge_over_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[channels.twilio]\nauth_token = "t"\nfrom_number = "+1"\n'
        '[tenants.acme.channels.twilio]\nfrom_number = "+2"\n'
    )
    cfg = config.load(path, environ={})
    assert cfg.channels_for("acme").twilio.from_number == "+2"
    assert cfg.channels_for("acme").twilio.auth_token == "t"
    assert cfg.channels_for("other").twilio.from_number == "+1"


def test_masked_hides_secrets() -> None:
    cfg = config.load(
        environ={
            "SEQD_CHANNELS_TWILIO_AUTH_TOKEN": "secret-token-1",
            "SEQD_CHANNELS_SMTP_PASSWORD": "secret-password-2",
            "SEQD_CHANNELS_HTTP_HEADER_VALUE": "secret-header-3",
            "SEQD_REDIS_URL": "redis://user:secret-url-4@host:6379/0",
        }
    )
    text = str(config.masked(cfg))
    assert "secret-" not in text
    assert "user:***@host" in text
