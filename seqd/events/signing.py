"""Standard Webhooks signing: `whsec_` secrets and the `webhook-signature` header.

The signed content is `"<webhook-id>.<webhook-timestamp>.<body>"`, HMAC-SHA256 keyed with
the base64-decoded part of the secret after `whsec_`; the header holds one `v1,<base64>`
per secret in use, space-separated, so a receiver still holding the previous secret keeps
verifying during a rotation.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

PREFIX = "whsec_"
# The spec asks for 24 to 64 bytes of key.
KEY_BYTES = 32


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


@functools.lru_cache(maxsize=1024)
def _keyed(secret: str) -> hmac.HMAC:
    """An HMAC keyed with the secret, copied per message: the key is decoded and padded
    once per secret, not once per delivery."""
    return hmac.new(base64.b64decode(secret.removeprefix(PREFIX)), digestmod=hashlib.sha256)


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64 HMAC-SHA256>` of the message under one secret."""
    mac = _keyed(secret).copy()
    mac.update(f"{msg_id}.{timestamp}.".encode())
    mac.update(body)
    return "v1," + base64.b64encode(mac.digest()).decode()


def header(secrets_in_use: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: a signature per secret, newest first."""
    return " ".join(signature(s, msg_id, timestamp, body) for s in secrets_in_use)
