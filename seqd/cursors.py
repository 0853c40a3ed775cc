"""Opaque cursors: a list's `page_token` and an export's `cursor` name the last item seen
(or a listing's own position) as base64 of "1:<after>"."""

from __future__ import annotations

import base64
import binascii

from seqd.errors import Invalid


def encode_token(after: str | None) -> str | None:
    if after is None:
        return None
    return base64.urlsafe_b64encode(f"1:{after}".encode()).decode().rstrip("=")


def decode_token(token: str | None, field: str = "query.page_token") -> str | None:
    if token is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    version, _, after = raw.partition(":")
    if version != "1" or not after or not after.isascii():
        raise Invalid.field(field, "not a page token from this API")
    return after
