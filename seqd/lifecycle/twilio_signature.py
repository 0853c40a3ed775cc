"""Twilio's request signature (`X-Twilio-Signature`).

HMAC-SHA1, keyed with the account's auth token, over the full URL Twilio requested
(scheme, host, path and query, exactly as configured there) followed by every POST
parameter sorted by name, each name immediately followed by its value; base64-encoded.
seqd rebuilds the URL from `http.public_url` and the request's raw path, since behind a
proxy the request's own Host and scheme are not what Twilio called.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

HEADER = "X-Twilio-Signature"
_DEFAULT_PORTS = {"https": 443, "http": 80}


def compute(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    data = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _variants(url: str) -> list[str]:
    """The URL with and without its scheme's default port: Twilio signs the one it was
    given, and operators write either."""
    parts = urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme)
    if parts.port is None and default is not None:
        other = parts._replace(netloc=f"{parts.netloc}:{default}")
    elif parts.port == default:
        other = parts._replace(netloc=parts.netloc.rsplit(":", 1)[0])
    else:
        return [url]
    return [url, urlunsplit(other)]


def valid(
    auth_token: str, url: str, params: Iterable[tuple[str, str]], signature: str | None
) -> bool:
    if not auth_token or not signature or not signature.isascii():
        return False  # base64 is ASCII; other bytes arrive as surrogates, never a match
    items = list(params)
    return any(
        hmac.compare_digest(compute(auth_token, candidate, items).encode(), signature.encode())
        for candidate in _variants(url)
    )
