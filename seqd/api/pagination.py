"""Cursor pagination: `limit` (1–200) and an opaque `page_token` naming the last id seen."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

import msgspec
from msgspec import Meta

from seqd.errors import Invalid

Limit = Annotated[int, Meta(ge=1, le=200, description="items per page")]


class ListQuery(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    limit: Limit = 50
    page_token: (
        Annotated[
            str,
            Meta(max_length=200, description="opaque: this list's previous next_page_token"),
        ]
        | None
    ) = None


def encode_token(after: str | None) -> str | None:
    if after is None:
        return None
    return base64.urlsafe_b64encode(f"1:{after}".encode()).decode().rstrip("=")


def decode_token(token: str | None) -> str | None:
    if token is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    version, _, after = raw.partition(":")
    if version != "1" or not after or not after.isascii():
        raise Invalid.field("query.page_token", "not a page token from this API")
    return after
