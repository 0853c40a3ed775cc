"""RFC 9457 problem details: the one shape of every error response."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from seqd.errors import FieldError

CONTENT_TYPE = "application/problem+json"
TYPE_BASE = "urn:seqd:problem:"


class Problem(msgspec.Struct, omit_defaults=True, kw_only=True):
    type: str
    title: str
    status: int
    detail: str = ""
    # 422: one entry per bad input, with its path (`steps[0].body`, `query.limit`).
    errors: list[FieldError] = msgspec.field(default_factory=list)
    # The field a 404/409 is about, when there is one (`contact_id`).
    field: str | None = None
    # 409: the current status that makes the change impossible.
    status_now: str | None = msgspec.field(default=None, name="current_status")
    contact_id: str | None = None
    index: int | None = None
    # 409 of an enrollment rule: the enrollment in the way (exclusive, reenroll), and when
    # the contact may be enrolled again (reenroll after_days).
    enrollment_id: str | None = None
    reenroll_at: str | None = None


_encode = msgspec.json.Encoder().encode
# The extras of a domain error that go into its problem (the Problem fields above).
_EXTRAS = frozenset({"field", "contact_id", "index", "enrollment_id", "reenroll_at"})


def problem(
    http_status: int,
    code: str,
    title: str,
    detail: str = "",
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    body = build(http_status, code, title, detail, **extra)
    return web.Response(
        body=_encode(body), status=http_status, content_type=CONTENT_TYPE, headers=headers
    )


def build(http_status: int, code: str, title: str, detail: str = "", **extra: Any) -> Problem:
    errors = extra.pop("errors", None) or []
    current = extra.pop("status", None)
    known = {k: v for k, v in extra.items() if k in _EXTRAS}
    return Problem(
        type=TYPE_BASE + code,
        title=title,
        status=http_status,
        detail=detail,
        errors=errors,
        status_now=current,
        **known,
    )
