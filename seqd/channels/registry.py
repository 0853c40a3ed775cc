"""Which sender sends a tenant's SMS and email, built once and shared.

`config.channels_for(tenant)` names a provider per kind (the setting `kinds.SPECS` names:
`channels.sms`, `channels.email`)
and carries its settings, already merged over the top-level `[channels]`. Senders are built
on first use and cached per (provider, settings): tenants whose settings are equal share
one sender and so one connection pool, and a tenant with its own Twilio account gets its
own. `check` validates at start what each chosen provider needs, so a missing credential
stops `seqd serve` with the setting's name instead of failing every send later.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import msgspec

from seqd.channels.base import Sender
from seqd.config import ChannelsConfig, Config, ConfigError, SmtpConfig
from seqd.kinds import SPECS, Kind


class Senders:
    """The live senders of one process; `get` is on the dispatch hot path, so it is a dict hit."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._by_tenant: dict[tuple[str, Kind, str | None], Sender] = {}
        self._by_settings: dict[tuple[str, bytes], Sender] = {}

    def get(self, tenant: str, kind: Kind, profile: str | None = None) -> Sender:
        """The sender of `tenant`'s `kind` steps; through the SMTP profile `profile` (an
        email sender's, POST /v1/senders) when the config still names it."""
        sender = self._by_tenant.get((tenant, kind, profile))
        if sender is None:
            channels = self._config.channels_for(tenant)
            server = channels.smtp.profiles.get(profile) if profile is not None else None
            if server is not None:
                own = msgspec.structs.asdict(server)
                smtp = SmtpConfig(**own, from_address=channels.smtp.from_address)
                channels = msgspec.structs.replace(channels, smtp=smtp)
            sender = self._resolve(channels, kind)
            self._by_tenant[(tenant, kind, profile)] = sender
        return sender

    def _resolve(self, channels: ChannelsConfig, kind: Kind) -> Sender:
        setting = SPECS[kind].provider
        if setting is None:
            raise ValueError(f"no channel provider sends {kind} steps")
        provider: str = getattr(channels, setting)
        settings = getattr(channels, provider)
        cache_key = (provider, msgspec.json.encode(settings))
        sender = self._by_settings.get(cache_key)
        if sender is None:
            sender = _make(provider, channels, self._config)
            self._by_settings[cache_key] = sender
        return sender

    async def close(self) -> None:
        senders = list(self._by_settings.values())
        self._by_settings.clear()
        self._by_tenant.clear()
        for sender in senders:
            await sender.close()


def build(config: Config) -> Senders:
    """The process's senders; nothing is connected until a message is sent."""
    return Senders(config)


def _make(provider: str, channels: ChannelsConfig, config: Config) -> Sender:
    # Imported here so that a deployment that only logs never imports aiosmtplib.
    if provider == "log":
        from seqd.channels.log import LogSender

        return LogSender(channels.log)
    if provider == "twilio":
        from seqd.channels.twilio import TwilioSender

        return TwilioSender(channels.twilio, config.http)
    if provider == "http":
        from seqd.channels.http_sms import HttpSmsSender

        return HttpSmsSender(channels.http)
    if provider == "smtp":
        from seqd.channels.smtp import SmtpSender

        return SmtpSender(channels.smtp)
    raise ValueError(f"unknown channel provider {provider!r}")


def check(config: Config) -> None:
    """Raise ConfigError naming the first setting a chosen provider lacks."""
    _check_channels("channels", config.channels)
    for name, tenant in config.tenants.items():
        _check_channels(f"tenants.{name}.channels", tenant.channels)


def _check_channels(where: str, channels: ChannelsConfig) -> None:
    if channels.sms == "twilio":
        twilio = channels.twilio
        at = f"{where}.twilio"
        for field in ("account_sid", "auth_token"):
            if not getattr(twilio, field):
                raise ConfigError(f'{at}.{field}: required when {where}.sms = "twilio"')
        if not twilio.from_number and not twilio.messaging_service_sid:
            raise ConfigError(
                f"{at}.from_number: required (or {at}.messaging_service_sid) "
                f'when {where}.sms = "twilio"'
            )
        _check_url(f"{at}.base_url", twilio.base_url)
    if channels.sms == "http":
        http = channels.http
        if not http.url:
            raise ConfigError(f'{where}.http.url: required when {where}.sms = "http"')
        _check_url(f"{where}.http.url", http.url)
        _check_header(f"{where}.http", http.header_name, http.header_value)
    if channels.email == "smtp":
        smtp = channels.smtp
        if not smtp.host:
            raise ConfigError(f'{where}.smtp.host: required when {where}.email = "smtp"')
        local, _, domain = smtp.from_address.rpartition("@")
        if not local or not domain:
            raise ConfigError(f"{where}.smtp.from_address: not an email address")
        for field in ("from_address", "from_name", "username"):
            value = getattr(smtp, field)
            if value and ("\r" in value or "\n" in value):
                raise ConfigError(f"{where}.smtp.{field}: contains a line break")
        if smtp.password and not smtp.username:
            raise ConfigError(f"{where}.smtp.username: required when a password is set")
        for name, profile in smtp.profiles.items():
            at = f"{where}.smtp.profiles.{name}"
            if not profile.host:
                raise ConfigError(f"{at}.host: required")
            if profile.username and ("\r" in profile.username or "\n" in profile.username):
                raise ConfigError(f"{at}.username: contains a line break")
            if profile.password and not profile.username:
                raise ConfigError(f"{at}.username: required when a password is set")


def _check_url(setting: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{setting}: not an http(s) URL: {url!r}")


def _check_header(where: str, name: str, value: str) -> None:
    if value and not name:
        raise ConfigError(f"{where}.header_name: required when header_value is set")
    if name and not all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in name):
        raise ConfigError(f"{where}.header_name: not a valid HTTP header name")
    if "\r" in value or "\n" in value:
        raise ConfigError(f"{where}.header_value: contains a line break")
