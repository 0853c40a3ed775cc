"""Inbound SMS and delivery status callbacks in Twilio's format.

A number may send for several tenants (a tenant without a `[tenants.<name>]` section, made
with `seqd keys create`, sends from [channels.twilio]'s), so an inbound message belongs to
every tenant whose sender matches `To` (or `MessagingServiceSid`) AND whose auth token
verifies the signature: an opt-out is applied to each of them, never lost to ambiguity, and
a reply to each where the phone is a contact.

Each message and status callback is applied once per MessageSid (store/replays.py), so a
retried or captured-and-replayed webhook changes nothing. Twilio's webhooks carry no send
time, so messages are ordered by arrival, and a keyword message's arrival is its first
one: remembered `keyword_replay_days`, an old START cannot lift a newer STOP.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final, Literal

import msgspec
import structlog

from seqd import models
from seqd.config import Config
from seqd.errors import NotFound
from seqd.lifecycle import keywords, optout
from seqd.store.db import Store
from seqd.store.lifecycle import DeliveryReport
from seqd.store.tenants import DEFAULT_TENANT

log = structlog.get_logger(__name__)

# https://www.twilio.com/docs/api/errors/21610: the recipient has replied STOP to the sender.
UNSUBSCRIBED: Final = "21610"

# A Twilio id (SM..., MM..., 34 characters); anything else is not remembered as one.
_SID = re.compile(r"^[A-Za-z0-9]{2,64}$")
_HOUR: Final = 3600

# Message statuses by progress. A stored status is replaced only by a higher rank: finals
# (3) are never replaced, not even by another final.
STATUS_RANK: Final[dict[str, int]] = {
    "accepted": 0,
    "scheduled": 0,
    "queued": 0,
    "sending": 1,
    "sent": 2,
    "delivered": 3,
    "undelivered": 3,
    "failed": 3,
    "canceled": 3,
}
# The event a final status writes.
FINAL_EVENT: Final[dict[str, str]] = {
    "delivered": "message.delivered",
    "undelivered": "message.undelivered",
    "failed": "message.undelivered",
    "canceled": "message.undelivered",
}


def tenants(config: Config, known: Iterable[str] = ()) -> list[str]:
    """Every configured tenant, `default` (the top-level [channels]) included, then the
    `known` ones (the store's: made by keys alone, they send with the top-level channels)."""
    names = list(config.tenants)
    if DEFAULT_TENANT not in names:
        names.append(DEFAULT_TENANT)
    return names + sorted(set(known).difference(names))


def _same_number(a: str, b: str) -> bool:
    try:
        return models.normalize_phone(a, None) == models.normalize_phone(b, None)
    except ValueError:
        return a == b


def tenants_for_sender(
    config: Config, to: str, messaging_service_sid: str, known: Iterable[str] = ()
) -> list[str]:
    """Tenants whose Twilio sender is `To` (or the messaging service) and that can verify;
    `known`: the tenants the store has, configured or not."""
    found = []
    for tenant in tenants(config, known):
        twilio = config.channels_for(tenant).twilio
        if not twilio.auth_token:
            continue
        by_service = bool(messaging_service_sid) and (
            twilio.messaging_service_sid == messaging_service_sid
        )
        by_number = (
            bool(to) and bool(twilio.from_number) and _same_number(str(twilio.from_number), to)
        )
        if by_service or by_number:
            found.append(tenant)
    return found


async def tenants_for_address(
    config: Config, store: Store, to: str, messaging_service_sid: str, known: Iterable[str] = ()
) -> list[str]:
    """The tenant whose sender (POST /v1/senders) is the number `To`, when one is and can
    verify; else `tenants_for_sender`'s (the configured numbers and services)."""
    try:
        number = models.normalize_phone(to, None)
    except ValueError:
        number = None
    owner = await store.senders.owner("sms", number) if number else None
    if owner is not None and config.channels_for(owner[0]).twilio.auth_token:
        return [owner[0]]
    return tenants_for_sender(config, to, messaging_service_sid, known)


class SmsOutcome(msgspec.Struct, frozen=True):
    tenant: str
    action: Literal["opted_out", "opted_in", "help", "reply"]
    contact_id: str | None = None
    enrollments: list[str] = msgspec.field(default_factory=list)


async def handle_sms(
    config: Config, store: Store, tenant: str, phone: str, body: str
) -> SmsOutcome:
    """An SMS from `phone` (E.164) to one of `tenant`'s senders."""
    keyword = keywords.classify(body, config.lifecycle)
    if keyword == "opt_out":
        stopped = await optout.opt_out(store, tenant, "sms", phone, source="sms_keyword")
        return SmsOutcome(tenant, "opted_out", stopped.contact_id, stopped.cancelled)
    if keyword == "opt_in":
        await optout.opt_in(store, tenant, "sms", phone, source="sms_keyword")
        return SmsOutcome(tenant, "opted_in")
    if keyword == "help":
        return SmsOutcome(tenant, "help")
    cid = await store.contacts.find(tenant, "phone", phone)
    if cid is None:
        log.info("sms.reply.unknown_contact", tenant=tenant)
        return SmsOutcome(tenant, "reply")
    reactions = await store.lifecycle.reply(tenant, "sms", contact_id=cid)
    reactions += await store.lifecycle.reply_account(tenant, cid)
    changed = [r.enrollment_id for r in reactions if r.outcome in ("paused", "completed")]
    log.info("sms.reply", tenant=tenant, contact_id=cid, changed=changed)
    return SmsOutcome(tenant, "reply", cid, changed)


def _replay_id(sid: str) -> str | None:
    return sid if _SID.match(sid) else None


async def receive_sms(
    config: Config, store: Store, tenants: list[str], phone: str, body: str, message_sid: str
) -> list[SmsOutcome]:
    """An SMS to a sender of each of `tenants`, applied to each unless its sid was seen."""
    sid = _replay_id(message_sid)
    if sid is not None and await store.replays.seen(sid):
        log.info("sms.replayed", message_sid=sid)
        return []
    outcomes = [await handle_sms(config, store, t, phone, body) for t in tenants]
    if sid is not None:
        keyword = any(o.action in ("opted_out", "opted_in") for o in outcomes)
        lifecycle = config.lifecycle
        keep = lifecycle.keyword_replay_days * 24 if keyword else lifecycle.replay_window_hours
        await store.replays.remember(sid, seconds=keep * _HOUR)
    return outcomes


async def receive_status(
    config: Config,
    store: Store,
    tenant: str,
    contact_id: str,
    enrollment_id: str,
    step: int,
    status: str,
    *,
    message_sid: str,
    error_code: str,
    to: str,
) -> DeliveryReport | None:
    """Record a status callback unless the same sid and status was seen; a 21610 error also
    opts the phone out. None: a replay, or a status seqd does not track (read, ...)."""
    rank = STATUS_RANK.get(status)
    if rank is None:
        return None
    sid = _replay_id(message_sid)
    seen_as = f"{sid}:{status}" if sid is not None else None
    if seen_as is not None and await store.replays.seen(seen_as):
        log.info("sms.status.replayed", message_sid=sid, status=status)
        return None
    event = {"status": status, "message_sid": message_sid, "error_code": error_code or None}
    delivery = await store.lifecycle.record_delivery(
        tenant,
        enrollment_id,
        step,
        status,
        rank,
        error_code,
        event_type=FINAL_EVENT.get(status, ""),
        event=event,
    )
    if delivery.recorded and error_code == UNSUBSCRIBED:
        phone = await _phone(store, tenant, contact_id, to)
        if phone is not None:
            await optout.opt_out(
                store, tenant, "sms", phone, source="twilio_21610", contact_id=None
            )
    if seen_as is not None:
        hours = config.lifecycle.replay_window_hours
        await store.replays.remember(seen_as, seconds=hours * _HOUR)
    return delivery


async def _phone(store: Store, tenant: str, contact_id: str, to: str) -> str | None:
    """The number the message went to: the callback's `To`, else the contact's phone."""
    try:
        return models.normalize_phone(to, None)
    except ValueError:
        pass
    try:
        return (await store.contacts.get(tenant, contact_id)).phone
    except NotFound:  # deleted meanwhile: nothing to suppress
        return None
