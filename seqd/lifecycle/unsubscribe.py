"""One-click unsubscribe (RFC 8058): the signed token, the email headers, the effect.

A token names the tenant, the contact and the address the message went to:
`base64url(JSON [tenant, contact_id, email]) "." base64url(HMAC-SHA256(secret,
"unsubscribe." + first part)[:16])`. 128 bits of MAC: it cannot be forged or altered
without the secret. The secret is `[lifecycle] unsubscribe_secret`, or, when unset, one
generated on the store's first use and kept in its meta key (so every process sharing the
store agrees, and links keep working across restarts: `Store.secret`); `signing_secret`
reads it. Tokens do not expire: an unsubscribe link must work as long as the mail
that carries it can be read.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from urllib.parse import quote

import msgspec

from seqd.channels.base import OutboundMessage
from seqd.config import Config
from seqd.lifecycle import optout
from seqd.store.db import Store
from seqd.tokens import b64, mac, unb64, verified

META_FIELD = "unsubscribe_secret"
_DOMAIN = b"unsubscribe."
_decode_claims = msgspec.json.Decoder(tuple[str, str, str]).decode
_encode = msgspec.json.Encoder().encode


class Claims(msgspec.Struct, frozen=True):
    tenant: str
    contact_id: str
    email: str


def sign(secret: str, tenant: str, contact_id: str, email: str) -> str:
    payload = b64(_encode((tenant, contact_id, email)))
    return f"{payload}.{mac(secret, _DOMAIN, payload)}"


def verify(secret: str, token: str) -> Claims | None:
    """The claims of a token this secret signed, else None (never raises on bad input)."""
    payload, dot, given = token.partition(".")
    if not dot or not verified(secret, _DOMAIN, payload, given):
        return None
    try:
        tenant, contact_id, email = _decode_claims(unb64(payload))
    except (binascii.Error, ValueError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    return Claims(tenant, contact_id, email)


async def signing_secret(config: Config, store: Store) -> str:
    """The signing secret: the configured one, else the store's (generated on first use)."""
    return config.lifecycle.unsubscribe_secret or await store.secret(META_FIELD)


def url(config: Config, token: str) -> str:
    return f"{config.http.public_url.rstrip('/')}{config.http.base_path}/unsubscribe/{token}"


def unsubscribe_headers(
    config: Config, secret: str, tenant: str, contact_id: str, email: str
) -> dict[str, str]:
    """`List-Unsubscribe` (https one-click URL and mailto) and `List-Unsubscribe-Post`,
    signed with `secret` (`signing_secret`)."""
    token = sign(secret, tenant, contact_id, email)
    mailbox = config.lifecycle.unsubscribe_mailto or config.channels_for(tenant).smtp.from_address
    mailto = f"mailto:{mailbox}?subject={quote('unsubscribe ' + token)}"
    return {
        "List-Unsubscribe": f"<{url(config, token)}>, <{mailto}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def message_headers(config: Config, secret: str) -> Callable[[OutboundMessage], dict[str, str]]:
    """The dispatcher's hook: the unsubscribe headers of an email about to be sent."""

    def headers(message: OutboundMessage) -> dict[str, str]:
        return unsubscribe_headers(config, secret, message.tenant, message.contact_id, message.to)

    return headers


async def apply(store: Store, claims: Claims, *, source: str) -> optout.Stopped:
    """The address joins the tenant's email suppression list; enrollments with only email
    steps left are cancelled (`opted_out`); event `contact.opted_out`."""
    return await optout.opt_out(store, claims.tenant, "email", claims.email, source=source)
