"""API shapes of senders (beside `seqd.models`, same rules) and the record stored per sender.

A sender is a phone number (sms; optionally sending through a Twilio messaging service) or
a mailbox (email; optionally through a named SMTP profile of the config) with limits: a
sequence whose `senders` name it sends from its address within them.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from seqd.config import FrequencyCapsConfig
from seqd.errors import FieldError, Invalid
from seqd.kinds import Channel
from seqd.models import (
    Input,
    Output,
    Page,
    Timestamp,
    check_timezone,
    normalize_email,
    normalize_phone,
)

PerSecond = Annotated[int, Meta(ge=1, le=1000, description="sends per second")]
PerHour = Annotated[int, Meta(ge=1, le=3_600_000, description="sends per hour")]
PerDay = Annotated[int, Meta(ge=1, le=86_400_000, description="sends per local day")]
Zone = Annotated[str, Meta(min_length=1, max_length=64, description="IANA time zone name")]
GapSeconds = Annotated[int, Meta(ge=0, le=86_400, description="seconds between two sends")]
Address = Annotated[
    str, Meta(min_length=1, max_length=320, description="E.164 number (sms) or address (email)")
]
ProfileName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        description="a [channels.smtp.profiles.<name>] of the config; email senders only",
    ),
]
ServiceSid = Annotated[
    str,
    Meta(pattern=r"^MG[0-9a-fA-F]{32}$", description="a Twilio messaging service; sms only"),
]
# A label, and an email sender's From display name: one line.
SenderName = Annotated[str, Meta(max_length=200, pattern=r"^[^\r\n]*$")]


class Limits(Input, kw_only=True):
    """How much a sender may send; null is no limit. `per_day` resets at midnight in
    `timezone`."""

    per_second: PerSecond | None = None
    per_hour: PerHour | None = None
    per_day: PerDay | None = None
    timezone: Zone = "UTC"


class Ramp(Input, kw_only=True):
    """Warm-up: the day's cap is start_per_day + increase_per_day x the local days since the
    sender was created, up to `limits.per_day` when set."""

    start_per_day: Annotated[int, Meta(ge=1, le=86_400_000)]
    increase_per_day: Annotated[int, Meta(ge=0, le=86_400_000)] = 0


ImapHost = Annotated[str, Meta(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9._:\[\]-]+$")]
ImapText = Annotated[str, Meta(min_length=1, max_length=320, pattern=r"^[^\r\n]*$")]
ImapFolder = Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[^\r\n]*$")]
# Servers a password may be sent to without TLS: this machine only.
LOOPBACK = frozenset({"127.0.0.1", "::1", "[::1]", "localhost"})


class SenderImap(Input, kw_only=True):
    """The mailbox an email sender's replies come back to, read over IMAP
    (seqd/lifecycle/mailbox.py). `password` is write-only: never returned; a PATCH that
    leaves it out keeps the stored one."""

    host: ImapHost
    port: Annotated[int, Meta(ge=1, le=65535)] = 993
    tls: Literal["implicit", "starttls", "none"] = "implicit"
    username: ImapText
    password: Annotated[str, Meta(min_length=1, max_length=1024)] | None = None
    folders: Annotated[list[ImapFolder], Meta(min_length=1, max_length=20)] = msgspec.field(
        default_factory=lambda: ["INBOX"]
    )
    poll_seconds: Annotated[float, Meta(ge=1, le=3600)] = 60.0
    idle: bool = True
    validate_certs: bool = True


class SenderImapView(Output, kw_only=True):
    host: str
    port: int
    tls: str
    username: str
    folders: list[str]
    poll_seconds: float
    idle: bool
    validate_certs: bool
    # Whether a password is stored (it is never returned).
    password_set: bool


def imap_view(imap: SenderImap | None) -> SenderImapView | None:
    if imap is None:
        return None
    fields = msgspec.structs.asdict(imap)
    fields["password_set"] = fields.pop("password") is not None
    return SenderImapView(**fields)


class SenderCreate(Input, kw_only=True):
    channel: Channel
    address: Address
    # A label; for email also the From display name.
    name: SenderName = ""
    limits: Limits = msgspec.field(default_factory=Limits)
    ramp: Ramp | None = None
    min_gap_seconds: GapSeconds = 0
    paused: bool = False
    # Email only: the [channels.smtp.profiles.<name>] it sends through (null: [channels.smtp]).
    smtp_profile: ProfileName | None = None
    # SMS only: a Twilio messaging service to send through instead of the number itself.
    messaging_service_sid: ServiceSid | None = None
    # Email only: the mailbox its replies, bounces and auto-replies are read from.
    imap: SenderImap | None = None


class SenderPatch(Input, kw_only=True):
    """Only the fields present change; `limits` and `ramp` are replaced whole. The channel
    and address of a sender never change (create another)."""

    name: SenderName | UnsetType = UNSET
    limits: Limits | UnsetType = UNSET
    ramp: Ramp | UnsetType | None = UNSET
    min_gap_seconds: GapSeconds | UnsetType = UNSET
    paused: bool | UnsetType = UNSET
    smtp_profile: ProfileName | UnsetType | None = UNSET
    messaging_service_sid: ServiceSid | UnsetType | None = UNSET
    imap: SenderImap | UnsetType | None = UNSET


class SenderView(Output, kw_only=True):
    id: str
    channel: Channel
    address: str
    name: str
    limits: Limits
    ramp: Ramp | None
    min_gap_seconds: int
    paused: bool
    smtp_profile: str | None
    messaging_service_sid: str | None
    imap: SenderImapView | None = None
    created_at: Timestamp
    updated_at: Timestamp
    # Today (in limits.timezone): the cap (ramp included; null: none), sends so far, sends
    # left (null: no cap), and the first moment another send is allowed (null: paused).
    daily_cap: int | None
    used_today: int
    remaining_today: int | None
    next_free_at: Timestamp | None


class SenderEnvelope(Output, kw_only=True):
    sender: SenderView


class SenderList(Page, kw_only=True):
    data: list[SenderView]


class SenderRecord(msgspec.Struct, kw_only=True):
    """A sender as stored under its tenant's tag. Times in ms."""

    id: str
    channel: Literal["sms", "email"]
    address: str
    name: str = ""
    limits: Limits = msgspec.field(default_factory=Limits)
    ramp: Ramp | None = None
    min_gap_seconds: int = 0
    paused: bool = False
    smtp_profile: str | None = None
    messaging_service_sid: str | None = None
    imap: SenderImap | None = None
    created_at: int
    updated_at: int


class StoredSettings(msgspec.Struct, kw_only=True):
    """A tenant's settings set through PATCH /v1/tenant/settings; None: the config's."""

    frequency_caps: FrequencyCapsConfig | None = None


class SettingsPatch(Input, kw_only=True):
    """`frequency_caps` replaces the tenant's caps whole; null goes back to the config's."""

    frequency_caps: FrequencyCapsConfig | UnsetType | None = UNSET


class TenantSettings(Output, kw_only=True):
    # The caps in force, and whether they come from the config or from PATCH.
    frequency_caps: FrequencyCapsConfig
    frequency_caps_source: Literal["config", "api"]


def normalize_address(channel: str, address: str, region: str | None) -> str:
    """The stored form of a sender's address; Invalid naming `address` when it is not one."""
    try:
        if channel == "sms":
            return normalize_phone(address, region)
        return normalize_email(address)
    except ValueError as exc:
        raise Invalid.field("address", str(exc)) from None


def check_record(record: SenderRecord, profiles: frozenset[str]) -> None:
    """What msgspec cannot check of a sender about to be stored: Invalid names each field.
    `profiles` are the SMTP profiles the tenant's config names."""
    errors = []
    try:
        check_timezone(record.limits.timezone)
    except ValueError as exc:
        errors.append(FieldError("limits.timezone", str(exc)))
    if record.smtp_profile is not None:
        if record.channel != "email":
            errors.append(FieldError("smtp_profile", "only email senders take an SMTP profile"))
        elif record.smtp_profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            errors.append(
                FieldError(
                    "smtp_profile",
                    f"no [channels.smtp.profiles.{record.smtp_profile}] in the config "
                    f"(configured: {known})",
                )
            )
    if record.messaging_service_sid is not None and record.channel != "sms":
        errors.append(
            FieldError("messaging_service_sid", "only sms senders take a messaging service")
        )
    errors += _imap_errors(record)
    if errors:
        raise Invalid(errors)


def _imap_errors(record: SenderRecord) -> list[FieldError]:
    imap = record.imap
    if imap is None:
        return []
    if record.channel != "email":
        return [FieldError("imap", "only email senders read a mailbox")]
    errors = []
    if imap.password is None:
        errors.append(FieldError("imap.password", "required (it is never returned)"))
    if imap.tls == "none" and imap.host.lower() not in LOOPBACK:
        errors.append(
            FieldError(
                "imap.tls",
                "none would send the password in the clear: only for a server on this "
                "machine (127.0.0.1, ::1, localhost); use implicit or starttls",
            )
        )
    return errors
