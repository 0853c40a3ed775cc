"""Signed tokens in links (unsubscribe, click tracking): base64url and a truncated
HMAC-SHA256 under a domain prefix, so a token of one kind never verifies as another."""

from __future__ import annotations

import base64
import hashlib
import hmac

# 128 bits of MAC: a token cannot be forged or altered without the secret.
MAC_BYTES = 16
MAC_CHARS = 22  # base64url of MAC_BYTES, unpadded


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mac(secret: str, domain: bytes, payload: str) -> str:
    """The MAC of `payload` under `domain` (b"unsubscribe.", b"click."), base64url."""
    digest = hmac.new(secret.encode(), domain + payload.encode(), hashlib.sha256).digest()
    return b64(digest[:MAC_BYTES])


def verified(secret: str, domain: bytes, payload: str, given: str) -> bool:
    """Whether `given` is `payload`'s MAC (constant time; False for non-ASCII input)."""
    if not payload.isascii() or not given.isascii():
        return False
    return hmac.compare_digest(mac(secret, domain, payload), given)
