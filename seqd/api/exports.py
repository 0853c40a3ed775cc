"""Exports: /exports/enrollments and /exports/events, every match streamed as NDJSON or CSV
(seqd/exports.py), page after page, with the token to resume on each page's last row."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from seqd import exports
from seqd.api.auth import tenant_of
from seqd.api.enrollments import EnrollmentFilters, enrollment_filter
from seqd.api.events import EventFilters, event_filter
from seqd.api.pagination import PageToken, decode_token
from seqd.api.routing import route
from seqd.api.wire import read_query
from seqd.appkeys import CONFIG, STORE
from seqd.exports import Format
from seqd.times import now_ms

TAG = "exports"
MEDIA = {"ndjson": "application/x-ndjson", "csv": "text/csv"}


class EnrollmentExportQuery(EnrollmentFilters, kw_only=True):
    format: Format = "ndjson"
    page_token: PageToken | None = None


class EventExportQuery(EventFilters, kw_only=True):
    format: Format = "ndjson"
    page_token: PageToken | None = None


async def _stream(
    request: web.Request,
    fmt: Format,
    columns: tuple[str, ...],
    chunks: AsyncIterator[exports.Chunk],
) -> web.StreamResponse:
    # The first page is read before the status line goes out: a bad token is still a 4xx.
    first = await anext(chunks)
    response = web.StreamResponse(headers={"Content-Type": f"{MEDIA[fmt]}; charset=utf-8"})
    await response.prepare(request)
    await response.write(exports.header(fmt, columns) + first.body)
    async for chunk in chunks:
        await response.write(chunk.body)
    await response.write_eof()
    return response


@route(
    "GET",
    "/exports/enrollments",
    summary="Every matching enrollment as NDJSON or CSV, streamed (filters as GET /enrollments)",
    tag=TAG,
    query=EnrollmentExportQuery,
    responses={200: None},
    errors=(404,),
    media={200: ", ".join(MEDIA.values())},
)
async def export_enrollments(request: web.Request) -> web.StreamResponse:
    query = read_query(request, EnrollmentExportQuery)
    where = await enrollment_filter(request, query)
    chunks = exports.enrollments(
        request.app[STORE], tenant_of(request), where, query.format, decode_token(query.page_token)
    )
    return await _stream(request, query.format, exports.ENROLLMENT_COLUMNS, chunks)


@route(
    "GET",
    "/exports/events",
    summary="Every matching event of the log as NDJSON or CSV, streamed (filters as GET /events)",
    tag=TAG,
    query=EventExportQuery,
    responses={200: None},
    media={200: ", ".join(MEDIA.values())},
)
async def export_events(request: web.Request) -> web.StreamResponse:
    query = read_query(request, EventExportQuery)
    flt = event_filter(query)
    retention = request.app[CONFIG].webhooks.events_retention_hours * 3_600_000
    chunks = exports.events(
        request.app[STORE],
        tenant_of(request),
        flt,
        query.format,
        decode_token(query.page_token),
        now=now_ms(),
        retention_ms=retention,
    )
    return await _stream(request, query.format, exports.EVENT_COLUMNS, chunks)
