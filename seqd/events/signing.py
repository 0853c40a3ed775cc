"""Standard Webhooks signing: `whsec_` secrets and the `webhook-signature` header.

The signed content is `"<webhook-id>.<webhook-timestamp>.<body>"`, HMAC-SHA256 keyed with
the base64-decoded part of the secret after `whsec_`; the header holds one `v1,<base64>`
per secret in use, space-separated, so a receiver still holding the previous secret keeps
verifying during a rotation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PREFIX = "whsec_"
# The spec asks for 24 to 64 bytes of key.
KEY_BYTES = 32


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX))


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64 HMAC-SHA256>` of the message under one secret."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def header(secrets_in_use: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: a signature per secret, newest first."""
    return " ".join(signature(s, msg_id, timestamp, body) for s in secrets_in_use)
