"""Exports: every enrollment or event that matches, as NDJSON or CSV, a page at a time.

Shared by `GET /exports/...` and `seqd export`. Rows are produced one listing page after
another (store/enrollment_search.py, store/events.py), so memory stays that of a page
whatever the count. The last row of each page carries the token after it
(`next_page_token`: a JSON member, or the CSV's last column, empty on the other rows): an
export cut off is resumed from the last one seen (`page_token`), without a row twice.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal

import msgspec

from seqd import models
from seqd.cursors import encode_token
from seqd.event_models import Event
from seqd.store.db import Store
from seqd.store.enrollment_search import EnrollmentFilter
from seqd.store.events import EventFilter

__all__ = ["Chunk", "EnrollmentFilter", "EventFilter", "enrollments", "events", "header"]

Format = Literal["ndjson", "csv"]
PAGE = 200

ENROLLMENT_COLUMNS = (
    "id", "sequence_id", "contact_id", "status", "current_step", "next_run_at",
    "enrolled_at", "updated_at", "completed_at", "paused_reason", "cancel_reason",
    "timezone_used", "metadata",
)  # fmt: skip
EVENT_COLUMNS = ("id", "type", "created_at", "data")

_encode = msgspec.json.Encoder().encode


class Chunk(msgspec.Struct, frozen=True):
    """Encoded rows of one page and the cursor after them (None: nothing follows)."""

    body: bytes
    rows: int
    cursor: str | None
    total: int | None  # every match, where the listing knows it


def _csv_line(values: Sequence[Any]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue().encode()


def header(fmt: Format, columns: Sequence[str]) -> bytes:
    return _csv_line([*columns, "next_page_token"]) if fmt == "csv" else b""


def encode_rows(
    fmt: Format, columns: Sequence[str], rows: Sequence[msgspec.Struct], cursor: str | None
) -> bytes:
    """The page's rows; the last one carries `cursor` (when something follows)."""
    parts = []
    for n, row in enumerate(rows):
        data = msgspec.to_builtins(row)
        last = cursor if n == len(rows) - 1 else None
        if fmt == "ndjson":
            if last is not None:
                data["next_page_token"] = encode_token(last)
            parts.append(_encode(data) + b"\n")
        else:
            values = [_cell(data.get(c)) for c in columns]
            parts.append(_csv_line([*values, encode_token(last) or ""]))
    return b"".join(parts)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return _encode(value).decode()
    return value


async def enrollments(
    store: Store, tenant: str, where: EnrollmentFilter, fmt: Format, cursor: str | None
) -> AsyncIterator[Chunk]:
    total: int | None = None
    if cursor is None and not where.post_filtered():
        _, _, total = await store.enrollment_search.page(tenant, where, 1, None)
    while True:
        page, cursor = await store.enrollment_search.export_page(tenant, where, cursor)
        rows: list[models.Enrollment] = page
        body = encode_rows(fmt, ENROLLMENT_COLUMNS, rows, cursor)
        yield Chunk(body, len(rows), cursor, total)
        total = None
        if cursor is None:
            return


async def events(
    store: Store,
    tenant: str,
    flt: EventFilter,
    fmt: Format,
    cursor: str | None,
    *,
    now: int,
    retention_ms: int,
) -> AsyncIterator[Chunk]:
    while True:
        page, cursor, total = await store.events.list(
            tenant, limit=PAGE, after=cursor, flt=flt, now=now, retention_ms=retention_ms
        )
        rows: list[Event] = page
        yield Chunk(encode_rows(fmt, EVENT_COLUMNS, rows, cursor), len(rows), cursor, total)
        if cursor is None:
            return
