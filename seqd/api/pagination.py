"""Cursor pagination: `limit` (1–200) and an opaque `page_token` naming the last id seen."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from seqd.cursors import decode_token, encode_token

Limit = Annotated[int, Meta(ge=1, le=200, description="items per page")]


PageToken = Annotated[
    str, Meta(max_length=200, description="opaque: this list's previous next_page_token")
]


class ListQuery(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    limit: Limit = 50
    page_token: PageToken | None = None


__all__ = ["Limit", "ListQuery", "PageToken", "decode_token", "encode_token"]
