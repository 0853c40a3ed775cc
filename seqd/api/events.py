"""Events: /events, the tenant's event log (the same payloads its webhooks receive)."""

from __future__ import annotations

import re
from typing import Annotated

import msgspec
from aiohttp import web
from msgspec import Meta

from seqd import event_names
from seqd.api.auth import tenant_of
from seqd.api.pagination import Limit, PageToken, decode_token, encode_token
from seqd.api.routing import route
from seqd.api.wire import read_query, respond
from seqd.appkeys import CONFIG, STORE
from seqd.errors import FieldError, Invalid
from seqd.event_models import EventEnvelope, EventList
from seqd.models import Id
from seqd.store.events import EventFilter
from seqd.times import from_rfc3339, now_ms

TAG = "events"
_ONE_TYPE = "(" + "|".join(re.escape(t) for t in sorted(event_names.KNOWN)) + ")"
TypeFilter = Annotated[
    str,
    Meta(
        max_length=1000,
        description="a type, or several comma-separated",
        # Checked by `event_filter` (naming the unknown type), stated here for the document.
        extra_json_schema={"pattern": rf"^\s*{_ONE_TYPE}(\s*,\s*{_ONE_TYPE})*\s*$"},
    ),
]


class EventFilters(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    type: TypeFilter | list[TypeFilter] | None = None
    enrollment_id: Id | None = None
    contact_id: Id | None = None
    since: (
        Annotated[
            str,
            Meta(
                max_length=64,
                description="RFC 3339; events at or after",
                extra_json_schema={"format": "date-time"},
            ),
        ]
        | None
    ) = None


class EventListQuery(EventFilters, kw_only=True):
    limit: Limit = 50
    page_token: PageToken | None = None


def event_filter(query: EventFilters) -> EventFilter:
    errors = []
    wanted: frozenset[str] | None = None
    if query.type is not None:
        given = [query.type] if isinstance(query.type, str) else query.type
        names = [n.strip() for value in given for n in value.split(",") if n.strip()]
        unknown = [n for n in names if n not in event_names.KNOWN]
        if unknown or not names:
            errors.append(
                FieldError(
                    "query.type", f"unknown event type {unknown[0]!r}" if unknown else "empty"
                )
            )
        wanted = frozenset(names)
    since = None
    if query.since is not None:
        try:
            since = from_rfc3339(query.since)
        except ValueError:
            errors.append(FieldError("query.since", "not an RFC 3339 time (2026-04-28T01:30:00Z)"))
    if errors:
        raise Invalid(errors)
    return EventFilter(
        types=wanted,
        enrollment_id=query.enrollment_id,
        contact_id=query.contact_id,
        since=since,
    )


@route(
    "GET",
    "/events",
    summary="List events (recorded order; filters: type, enrollment_id, contact_id, since)",
    tag=TAG,
    query=EventListQuery,
    responses={200: EventList},
)
async def list_events(request: web.Request) -> web.Response:
    query = read_query(request, EventListQuery)
    flt = event_filter(query)
    config = request.app[CONFIG].webhooks
    data, after, total = await request.app[STORE].events.list(
        tenant_of(request),
        limit=query.limit,
        after=decode_token(query.page_token),
        flt=flt,
        now=now_ms(),
        retention_ms=config.events_retention_hours * 3_600_000,
    )
    return respond(EventList(data=data, next_page_token=encode_token(after), total=total))


@route(
    "GET",
    "/events/{id}",
    summary="Get an event",
    tag=TAG,
    responses={200: EventEnvelope},
    errors=(404,),
)
async def get_event(request: web.Request) -> web.Response:
    event = await request.app[STORE].events.get(tenant_of(request), request.match_info["id"])
    return respond(EventEnvelope(event=event))
