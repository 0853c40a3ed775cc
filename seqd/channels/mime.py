"""The RFC 5322 message of an email step: headers, Message-ID, threading.

The Message-ID is derived from the step's idempotency key, `<{enrollment}.{step}@{domain}>`,
so every attempt at a step carries the same id (a receiving system can drop a re-sent
duplicate) and a later step can thread to the first one without storing anything: its
`thread_root` is the first step's key. Header values come from templates, so a CR or LF in
any of them is refused here rather than let a contact's data inject headers.
"""

from __future__ import annotations

import email.policy
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from seqd.channels.base import OutboundMessage

# CRLF line ends on the wire; 7bit so that non-ASCII text goes quoted-printable/base64 and
# non-ASCII headers RFC 2047-encoded: the message is plain ASCII and needs no 8BITMIME.
POLICY = email.policy.SMTP.clone(cte_type="7bit")
# Internationalised addresses need SMTPUTF8 and a UTF-8 message.
POLICY_UTF8 = email.policy.SMTP.clone(utf8=True)

# Headers seqd writes itself; `message.headers` may not replace them.
_OWN = frozenset(
    {"from", "to", "subject", "date", "message-id", "in-reply-to", "references", "mime-version"}
)
_FIELD_NAME_CHARS = frozenset(chr(c) for c in range(33, 127)) - {":"}


class Refused(ValueError):
    """The message cannot be built as given (permanent: a re-send would be refused too)."""


def message_id(key: str, domain: str) -> str:
    """The Message-ID of the step whose idempotency key is `key`."""
    return f"<{key}@{domain}>"


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]


def _clean(name: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise Refused(f"header {name} contains CR or LF")
    return value


def needs_utf8(*addresses: str) -> bool:
    return not all(a.isascii() for a in addresses)


def build(message: OutboundMessage, from_address: str, from_name: str | None) -> EmailMessage:
    """The message of a step; raises Refused for a header that would be unsafe or invalid."""
    domain = domain_of(from_address)
    utf8 = needs_utf8(from_address, message.to)
    msg = EmailMessage(policy=POLICY_UTF8 if utf8 else POLICY)
    try:
        msg["From"] = Address(display_name=from_name or "", addr_spec=from_address)
        msg["To"] = _clean("To", message.to)
        # As composed: the engine decides the "Re: " of a threaded step.
        msg["Subject"] = _clean("Subject", message.subject or "")
        msg["Date"] = format_datetime(datetime.now(UTC))
        msg["Message-ID"] = message_id(message.key, domain)
        if message.thread_root:
            root = _clean("In-Reply-To", message.thread_root)
            # A full Message-ID is taken as is; a step key gets seqd's id form.
            root_id = root if root.startswith("<") else message_id(root, domain)
            msg["In-Reply-To"] = root_id
            msg["References"] = root_id
        for name, value in message.headers.items():
            if not name or not set(name) <= _FIELD_NAME_CHARS:
                raise Refused(f"header name {name!r} is not valid")
            if name.lower() in _OWN:
                raise Refused(f"header {name} is set by seqd")
            msg[name] = _clean(name, value)
        msg.set_content(message.body)
    except Refused:
        raise
    except (ValueError, TypeError, IndexError) as exc:
        # The email package's own checks (an unparsable address, a bad header): permanent.
        raise Refused(f"message not valid: {exc}") from None
    return msg


def to_bytes(msg: EmailMessage) -> bytes:
    """The message on the wire, CRLF line ends, not yet dot-stuffed (aiosmtplib does that)."""
    return msg.as_bytes()
