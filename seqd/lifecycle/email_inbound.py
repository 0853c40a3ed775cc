"""Inbound email: classify a raw RFC 5322 message and apply what it means.

- a delivery status notification (multipart/report; report-type=delivery-status, RFC
  3464): a permanent failure (5.x.x, but not 5.7.x policy blocks, which say nothing
  about the address) suppresses the address and cancels its email-only enrollments
  (`bounced`); a transient one (4.x.x, `Action: delayed`) or a policy block is recorded
  as a `contact.soft_bounced` event only;
- the `mailto:` of List-Unsubscribe (subject "unsubscribe <token>"): an unsubscribe;
- an automatic reply (RFC 3834 `Auto-Submitted` other than `no`, `X-Autoreply`,
  `Precedence: auto_reply|bulk|junk`, a null `Return-Path`, mailer-daemon senders,
  out-of-office subjects): a `contact.auto_replied` event, then what the sequence's
  `on_out_of_office` asks (nothing, a pause, a pause until the return date: absence.py);
- otherwise a reply: matched to the enrollment named by a seqd Message-ID in
  `In-Reply-To`/`References` (`<enr_….<step>@domain>`), else to the sender's contact,
  and paused with `reply_received` (or completed, per the sequence's `on_reply`).
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from email.message import EmailMessage, Message
from email.parser import HeaderParser
from enum import StrEnum
from functools import cache
from typing import Any

import msgspec
import structlog

from seqd import ids, models
from seqd.config import Config
from seqd.lifecycle import absence, optout, unsubscribe
from seqd.store.db import Store
from seqd.store.tenants import DEFAULT_TENANT
from seqd.times import now_ms

log = structlog.get_logger(__name__)

_MSG_ID = re.compile(r"<([^<>\s]+)>")
_UNSUBSCRIBE_SUBJECT = re.compile(r"^\s*unsubscribe\s+(\S+)\s*$", re.IGNORECASE)
_AUTO_PRECEDENCE = frozenset({"auto_reply", "bulk", "junk"})
_AUTO_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Autoresponder")
_DAEMONS = frozenset({"mailer-daemon", "postmaster"})


class MessageKind(StrEnum):
    BOUNCE = "bounce"
    SOFT_BOUNCE = "soft_bounce"
    UNSUBSCRIBE = "unsubscribe"
    AUTO_REPLY = "auto_reply"
    REPLY = "reply"


class Recipient(msgspec.Struct, frozen=True):
    """One per-recipient block of a DSN."""

    address: str
    action: str
    status: str
    diagnostic: str | None = None

    @property
    def permanent(self) -> bool:
        return (
            self.action == "failed"
            and self.status.startswith("5.")
            and not self.status.startswith("5.7.")
        )


class ParsedEmail(msgspec.Struct, frozen=True):
    kind: MessageKind
    sender: str | None = None
    subject: str = ""
    # Enrollments named by seqd Message-IDs, most recent reference first.
    enrollments: list[str] = msgspec.field(default_factory=list)
    recipients: list[Recipient] = msgspec.field(default_factory=list)
    token: str | None = None
    why: str = ""
    # The addresses it was delivered to (Delivered-To, X-Original-To, To, Cc), normalised.
    to: list[str] = msgspec.field(default_factory=list)
    # An automatic reply's own text and Date (ms; None without a readable one): an
    # out-of-office reply's return date is read from them (absence.py).
    text: str = ""
    sent_ms: int | None = None


class EnrollmentChange(msgspec.Struct, frozen=True):
    id: str
    outcome: str


class IngestResult(models.Output, kw_only=True):
    """What seqd made of an inbound message."""

    kind: MessageKind
    tenant: str
    address: str | None = None
    contact_id: str | None = None
    # Why it was classified so (auto-reply) or the DSN status (bounces).
    detail: str = ""
    enrollments: list[EnrollmentChange] = msgspec.field(default_factory=list)
    suppressed: bool = False


# -- parsing (no I/O) -------------------------------------------------------------------
def _address(value: str | None) -> str | None:
    """The normalised address of a header value or a DSN recipient field, if any."""
    if not value:
        return None
    _, addr = email.utils.parseaddr(str(value).split(";", 1)[-1].strip())
    if not addr:
        return None
    try:
        return models.normalize_email(addr)
    except ValueError:
        return None


def enrollment_of(message_id: str) -> str | None:
    """`enr_….3@domain` (a Message-ID seqd made: `channels.base.message_key`) -> `enr_…`."""
    local = message_id.rsplit("@", 1)[0]
    eid, dot, step = local.rpartition(".")
    if dot and step.isdigit() and ids.is_valid(eid, ids.ENROLLMENT):
        return eid
    return None


def _referenced(msg: Message) -> list[str]:
    found: list[str] = []
    refs = _MSG_ID.findall(str(msg.get("In-Reply-To", "")))
    refs += reversed(_MSG_ID.findall(str(msg.get("References", ""))))
    for ref in refs:
        eid = enrollment_of(ref)
        if eid and eid not in found:
            found.append(eid)
    return found


def _dsn(msg: Message) -> tuple[list[Recipient], list[str]] | None:
    """Recipients of a delivery-status report, and enrollments its returned message names."""
    if msg.get_content_type() != "multipart/report":
        return None
    if str(msg.get_param("report-type", "")).lower() != "delivery-status":
        return None
    recipients: list[Recipient] = []
    original: list[str] = []
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/delivery-status":
            blocks = part.get_payload()
            for block in blocks if isinstance(blocks, list) else []:
                if isinstance(block, Message):
                    rcpt = _recipient(block)
                    if rcpt is not None:
                        recipients.append(rcpt)
        elif ctype == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                original += _own_ids(inner[0])
        elif ctype == "text/rfc822-headers":
            text = part.get_payload(decode=True) or b""
            headers = HeaderParser().parsestr(bytes(text).decode("utf-8", "replace"))
            original += _own_ids(headers)
    return recipients, original


def _recipient(block: Message) -> Recipient | None:
    """A per-recipient block (Final-Recipient, Action, Status, Diagnostic-Code)."""
    address = _address(block.get("Final-Recipient") or block.get("Original-Recipient"))
    if address is None:
        return None
    diagnostic = block.get("Diagnostic-Code")
    return Recipient(
        address=address,
        action=str(block.get("Action", "")).strip().lower(),
        status=str(block.get("Status", "")).strip().split(" ", 1)[0],
        diagnostic=str(diagnostic).strip() if diagnostic else None,
    )


def _own_ids(headers: Message) -> list[str]:
    """The enrollment a returned message's own Message-ID names, if seqd sent it."""
    found = (enrollment_of(m) for m in _MSG_ID.findall(str(headers.get("Message-ID", ""))))
    return [e for e in found if e]


@cache
def _subject_patterns(patterns: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


def _automatic(msg: Message, sender: str | None, subjects: tuple[str, ...]) -> str | None:
    """Why the message is an automatic reply, or None."""
    auto = str(msg.get("Auto-Submitted", "")).split(";", 1)[0].strip().lower()
    if auto and auto != "no":
        return f"Auto-Submitted: {auto}"
    for name in _AUTO_HEADERS:
        if msg.get(name) is not None:
            return name
    precedence = str(msg.get("Precedence", "")).strip().lower()
    if precedence in _AUTO_PRECEDENCE:
        return f"Precedence: {precedence}"
    if str(msg.get("Return-Path", "")).strip() == "<>":
        return "null Return-Path"
    if sender and sender.split("@", 1)[0].lower() in _DAEMONS:
        return "mailer daemon"
    subject = str(msg.get("Subject", ""))
    if subjects and _subject_patterns(subjects).search(subject):
        return "subject"
    return None


def parse(raw: bytes, auto_reply_subjects: list[str]) -> ParsedEmail:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    parsed = msgspec.structs.replace(_parse(msg, auto_reply_subjects), to=_delivered_to(msg))
    if parsed.kind == MessageKind.AUTO_REPLY and isinstance(msg, EmailMessage):
        parsed = msgspec.structs.replace(
            parsed, text=absence.announcement(msg), sent_ms=_date_ms(msg)
        )
    return parsed


def _date_ms(msg: Message) -> int | None:
    try:
        when = email.utils.parsedate_to_datetime(str(msg.get("Date", "")))
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return int(when.timestamp() * 1000)


def _delivered_to(msg: Message) -> list[str]:
    values = [
        str(v) for h in ("Delivered-To", "X-Original-To", "To", "Cc") for v in msg.get_all(h) or []
    ]
    found = (_address(addr) for _, addr in email.utils.getaddresses(values))
    return list(dict.fromkeys(a for a in found if a))


def _parse(msg: Message, auto_reply_subjects: list[str]) -> ParsedEmail:
    sender = _address(str(msg.get("From", "")))
    subject = str(msg.get("Subject", ""))
    dsn = _dsn(msg)
    if dsn is not None:
        recipients, original = dsn
        kind = (
            MessageKind.BOUNCE if any(r.permanent for r in recipients) else MessageKind.SOFT_BOUNCE
        )
        return ParsedEmail(kind, sender, subject, original, recipients)
    match = _UNSUBSCRIBE_SUBJECT.match(subject)
    if match:
        # Kept as a reply (references and all) should the token not verify.
        return ParsedEmail(
            MessageKind.UNSUBSCRIBE, sender, subject, _referenced(msg), token=match.group(1)
        )
    why = _automatic(msg, sender, tuple(auto_reply_subjects))
    if why is not None:
        return ParsedEmail(MessageKind.AUTO_REPLY, sender, subject, _referenced(msg), why=why)
    return ParsedEmail(MessageKind.REPLY, sender, subject, _referenced(msg))


# -- applying ---------------------------------------------------------------------------
async def _tenant_of(store: Store, parsed: ParsedEmail) -> str:
    """For a trusted caller that named no tenant (a shared MTA pipe): the tenant of the
    enrollment the message refers to, else of the sender (POST /v1/senders) whose mailbox it
    was delivered to, else `default`."""
    for eid in parsed.enrollments:
        owner = await store.lifecycle.enrollment_owner(eid)
        if owner is not None:
            return owner[0]
    for address in parsed.to:
        sender = await store.senders.owner("email", address)
        if sender is not None:
            return sender[0]
    return DEFAULT_TENANT


async def ingest(config: Config, store: Store, raw: bytes, tenant: str | None) -> IngestResult:
    """Classify `raw` and act on it for `tenant` (None: the tenant the message names)."""
    parsed = parse(raw, config.lifecycle.auto_reply_subjects)
    if parsed.kind == MessageKind.UNSUBSCRIBE:
        result = await _unsubscribe(config, store, parsed, tenant)
        if result is not None:
            return result
        parsed = msgspec.structs.replace(parsed, kind=MessageKind.REPLY, token=None)
    if tenant is None:
        tenant = await _tenant_of(store, parsed)
    if parsed.kind in (MessageKind.BOUNCE, MessageKind.SOFT_BOUNCE):
        return await _bounce(store, tenant, parsed)
    if parsed.kind == MessageKind.AUTO_REPLY:
        return await _auto_reply(config, store, tenant, parsed)
    return await _reply(store, tenant, parsed)


async def _unsubscribe(
    config: Config, store: Store, parsed: ParsedEmail, tenant: str | None
) -> IngestResult | None:
    secret = await unsubscribe.signing_secret(config, store)
    claims = unsubscribe.verify(secret, parsed.token or "")
    if claims is None or (tenant is not None and claims.tenant != tenant):
        return None  # not our token: an ordinary message that happens to say "unsubscribe"
    stopped = await unsubscribe.apply(store, claims, source="mailto")
    return IngestResult(
        kind=MessageKind.UNSUBSCRIBE,
        tenant=claims.tenant,
        address=claims.email,
        contact_id=stopped.contact_id,
        enrollments=[EnrollmentChange(e, "cancelled") for e in stopped.cancelled],
        suppressed=True,
    )


async def _bounce(store: Store, tenant: str, parsed: ParsedEmail) -> IngestResult:
    changes: list[EnrollmentChange] = []
    suppressed = False
    contact_id = None
    for rcpt in parsed.recipients:
        if rcpt.permanent:
            stopped = await optout.bounce(
                store, tenant, rcpt.address, status=rcpt.status, diagnostic=rcpt.diagnostic
            )
            changes += [EnrollmentChange(e, "cancelled") for e in stopped.cancelled]
            suppressed = True
            contact_id = contact_id or stopped.contact_id
        elif rcpt.action in ("failed", "delayed"):
            cid = await store.contacts.find(tenant, "email", rcpt.address)
            contact_id = contact_id or cid
            data: dict[str, Any] = {
                "id": cid,
                "contact_id": cid,
                "channel": "email",
                "value": rcpt.address,
                "action": rcpt.action,
                "status": rcpt.status,
                "diagnostic": rcpt.diagnostic,
                "policy": rcpt.status.startswith("5.7."),
            }
            await store.lifecycle.emit(
                tenant, "contact.soft_bounced", data, contact_id=cid, value=rcpt.address
            )
            log.info("email.soft_bounce", tenant=tenant, status=rcpt.status, contact_id=cid)
    first = parsed.recipients[0] if parsed.recipients else None
    return IngestResult(
        kind=parsed.kind,
        tenant=tenant,
        address=first.address if first else None,
        contact_id=contact_id,
        detail=", ".join(f"{r.address} {r.action} {r.status}" for r in parsed.recipients),
        enrollments=changes,
        suppressed=suppressed,
    )


async def _auto_reply(
    config: Config, store: Store, tenant: str, parsed: ParsedEmail
) -> IngestResult:
    """A `contact.auto_replied` event, then the out-of-office pause each sequence asks for
    (`on_out_of_office`) of the enrollments the reply is about (as for a reply)."""
    cid = await store.contacts.find(tenant, "email", parsed.sender) if parsed.sender else None
    data = {
        "id": cid,
        "contact_id": cid,
        "channel": "email",
        "value": parsed.sender,
        "subject": parsed.subject[:200],
        "why": parsed.why,
    }
    await store.lifecycle.emit(
        tenant, "contact.auto_replied", data, contact_id=cid, value=parsed.sender or ""
    )
    owner, reactions = await absence.pause(
        config,
        store,
        tenant,
        text=parsed.text,
        sent_ms=parsed.sent_ms or now_ms(),
        enrollments=parsed.enrollments,
        contact_id=cid,
    )
    log.info(
        "email.auto_reply",
        tenant=tenant,
        contact_id=owner or cid,
        why=parsed.why,
        paused=[r.enrollment_id for r in reactions if r.outcome == "paused"],
    )
    return IngestResult(
        kind=MessageKind.AUTO_REPLY,
        tenant=tenant,
        address=parsed.sender,
        contact_id=owner or cid,
        detail=parsed.why,
        enrollments=[EnrollmentChange(r.enrollment_id, r.outcome) for r in reactions],
    )


async def _reply(store: Store, tenant: str, parsed: ParsedEmail) -> IngestResult:
    reactions = []
    cid = None
    for eid in parsed.enrollments:
        reactions = await store.lifecycle.reply(tenant, "email", enrollment_id=eid)
        if reactions:
            owner = await store.lifecycle.enrollment_owner(eid)
            cid = owner[1] if owner else None
            break
    if not reactions and parsed.sender:
        cid = await store.contacts.find(tenant, "email", parsed.sender)
        if cid is not None:
            reactions = await store.lifecycle.reply(tenant, "email", contact_id=cid)
    if cid is not None:
        # A sequence with on_reply_scope "account": the rest of the account stops too.
        reactions += await store.lifecycle.reply_account(tenant, cid)
    log.info(
        "email.reply",
        tenant=tenant,
        contact_id=cid,
        matched=[r.enrollment_id for r in reactions],
    )
    return IngestResult(
        kind=MessageKind.REPLY,
        tenant=tenant,
        address=parsed.sender,
        contact_id=cid,
        enrollments=[EnrollmentChange(r.enrollment_id, r.outcome) for r in reactions],
    )
