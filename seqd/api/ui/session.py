"""The dashboard's session: a signed cookie naming the tenant and the API key it signed in
with (by digest, so a revoked key ends its sessions), and the CSRF token its forms carry.

Cookie: base64url(JSON [tenant, key digest, csrf, expires s]) "." base64url(HMAC-SHA256);
the secret is the store's `ui_session_secret` (generated on first use, shared by every
process). HttpOnly, SameSite=Strict, Secure when the request came over https.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time

import msgspec

COOKIE = "seqd_ui"
META_FIELD = "ui_session_secret"
LIFETIME_S = 12 * 3600
_DOMAIN = b"seqd-ui-session\0"


class Session(msgspec.Struct, array_like=True, frozen=True):
    tenant: str
    key_digest: str
    csrf: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, payload: str) -> str:
    return _b64(hmac.new(secret.encode(), _DOMAIN + payload.encode(), hashlib.sha256).digest())


def new(tenant: str, key_digest: str, now: float | None = None) -> Session:
    expires = int((now or time.time()) + LIFETIME_S)
    return Session(tenant, key_digest, secrets.token_urlsafe(24), expires)


def encode(secret: str, session: Session) -> str:
    payload = _b64(msgspec.json.encode(session))
    return f"{payload}.{_mac(secret, payload)}"


def decode(secret: str, value: str, now: float | None = None) -> Session | None:
    """The session a cookie carries when this secret signed it and it has not expired;
    None for anything else (never raises on bad input)."""
    if not value.isascii():
        return None
    payload, _, mac = value.partition(".")
    if not mac or not hmac.compare_digest(_mac(secret, payload), mac):
        return None
    try:
        session = msgspec.json.decode(_unb64(payload), type=Session)
    except (msgspec.ValidationError, msgspec.DecodeError, binascii.Error, ValueError):
        return None
    return session if session.expires > (now or time.time()) else None


def csrf_ok(session: Session, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(session.csrf, presented)
