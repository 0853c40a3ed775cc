"""Enrollments: /sequences/{id}/enrollments, /enrollments and /enrollments/{id}."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from aiohttp import web
from msgspec import Meta

from seqd import bulk, models
from seqd.api.appkeys import COALESCER
from seqd.api.auth import tenant_of
from seqd.api.pagination import Limit, ListQuery, PageToken, decode_token, encode_token
from seqd.api.routing import route
from seqd.api.wire import read_body, read_query, respond
from seqd.appkeys import CONFIG, STORE
from seqd.errors import Invalid
from seqd.models import EnrollmentStatus
from seqd.store.enrollment_search import EnrollmentFilter
from seqd.times import from_rfc3339

TAG = "enrollments"


class EnrollmentListQuery(ListQuery, kw_only=True):
    status: (
        Annotated[
            Literal["active", "paused", "completed", "cancelled"],
            Meta(
                description="only this status. Active enrollments are listed by when their "
                "next step is due (then id), the others by id; with no status, the active "
                "ones come first, then the rest. An enrollment whose step goes out while "
                "you page can appear again at its new place."
            ),
        ]
        | None
    ) = None
    paused_reason: (
        Annotated[
            str,
            Meta(
                pattern=r"^[a-z_]{1,64}$",
                description="only the paused enrollments paused for this reason "
                "(out_of_office: with resume_at, when each resumes by itself), in id order",
            ),
        ]
        | None
    ) = None


async def enroll_one(
    request: web.Request, seq_id: str, body: models.EnrollmentCreate
) -> bulk.ItemOutcome:
    """Enroll one contact (by id or inline) through the bulk path; its error is raised."""
    item = bulk.prepare(body, request.app[CONFIG].contacts.default_region)
    # With the other requests for this sequence in this turn of the loop: two round
    # trips for the group (the sequence and the suppression lists, then the script).
    outcome = await request.app[COALESCER].enroll(tenant_of(request), seq_id, item)
    if outcome.error is not None:
        raise outcome.error
    return outcome


def queued_of(outcome: bulk.ItemOutcome, seq_id: str) -> models.QueuedEnrollment:
    assert outcome.enrollment_id is not None and outcome.behind is not None
    return models.QueuedEnrollment(
        id=outcome.enrollment_id,
        sequence_id=seq_id,
        contact_id=outcome.contact_id or "",
        behind=outcome.behind,
    )


@route(
    "POST",
    "/sequences/{id}/enrollments",
    summary="Enroll a contact, by id or inline (upserted); idempotent",
    tag=TAG,
    body=models.EnrollmentCreate,
    responses={
        201: models.EnrollmentEnvelope,
        200: models.EnrollmentEnvelope,
        202: models.QueuedEnvelope,
    },
    errors=(404, 409),
)
async def create_enrollment(request: web.Request) -> web.Response:
    body = await read_body(request, models.EnrollmentCreate)
    seq_id = request.match_info["id"]
    outcome = await enroll_one(request, seq_id, body)
    if outcome.behind is not None:
        return respond(models.QueuedEnvelope(queued=queued_of(outcome, seq_id)), 202)
    assert outcome.enrollment is not None
    return respond(
        models.EnrollmentEnvelope(enrollment=outcome.enrollment, idempotent=outcome.idempotent),
        200 if outcome.idempotent else 201,
    )


@route(
    "GET",
    "/sequences/{id}/enrollments",
    summary="List a sequence's enrollments",
    tag=TAG,
    query=EnrollmentListQuery,
    responses={200: models.EnrollmentList},
    errors=(404,),
)
async def list_enrollments(request: web.Request) -> web.Response:
    query = read_query(request, EnrollmentListQuery)
    store = request.app[STORE]
    tenant, sid = tenant_of(request), request.match_info["id"]
    await store.sequences.get(tenant, sid, with_stats=False)
    after = decode_token(query.page_token)
    if query.paused_reason is not None:
        if query.status not in (None, "paused"):
            raise Invalid.field("query.paused_reason", "lists paused enrollments only")
        data, after, total = await store.enrollments.paused_for(
            tenant, sid, query.paused_reason, limit=query.limit, after=after
        )
        return respond(
            models.EnrollmentList(data=data, next_page_token=encode_token(after), total=total)
        )
    statuses: list[str] = [query.status] if query.status else [s.value for s in EnrollmentStatus]
    data, after, total = await store.enrollments.list(
        tenant, sid, limit=query.limit, after=after, statuses=statuses
    )
    return respond(
        models.EnrollmentList(data=data, next_page_token=encode_token(after), total=total)
    )


class EnrollmentFilters(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    contact_id: Annotated[str, Meta(max_length=64, description="only this contact's")] | None = None
    sequence_id: Annotated[str, Meta(max_length=64, description="only this sequence's")] | None = (
        None
    )
    status: EnrollmentStatus | None = None
    paused_reason: (
        Annotated[
            str,
            Meta(
                min_length=1,
                max_length=64,
                description="only paused enrollments paused for this reason (e.g. "
                "out_of_office, reply, missing_variable)",
            ),
        ]
        | None
    ) = None
    updated_since: (
        Annotated[
            str,
            Meta(
                max_length=64,
                description="RFC 3339: only those changed at or after it",
                extra_json_schema={"format": "date-time"},
            ),
        ]
        | None
    ) = None


class EnrollmentSearchQuery(EnrollmentFilters, kw_only=True):
    limit: Limit = 50
    page_token: PageToken | None = None


async def enrollment_filter(request: web.Request, query: EnrollmentFilters) -> EnrollmentFilter:
    """The store's filter of a query (a 422 naming a bad field; a 404 for a sequence of
    another tenant or none)."""
    since = None
    if query.updated_since is not None:
        try:
            since = from_rfc3339(query.updated_since)
        except ValueError as exc:
            raise Invalid.field("query.updated_since", str(exc)) from None
    if query.paused_reason is not None and query.status not in (None, EnrollmentStatus.PAUSED):
        raise Invalid.field("query.paused_reason", "only paused enrollments have a paused reason")
    if query.sequence_id is not None:
        await request.app[STORE].sequences.get(
            tenant_of(request), query.sequence_id, with_stats=False
        )
    return EnrollmentFilter(
        contact_id=query.contact_id,
        sequence_id=query.sequence_id,
        status=query.status,
        paused_reason=query.paused_reason,
        updated_since=since,
    )


@route(
    "GET",
    "/enrollments",
    summary="List enrollments across sequences: by contact, sequence, status, paused reason",
    tag=TAG,
    query=EnrollmentSearchQuery,
    responses={200: models.EnrollmentSearchList},
    errors=(404,),
)
async def search_enrollments(request: web.Request) -> web.Response:
    query = read_query(request, EnrollmentSearchQuery)
    where = await enrollment_filter(request, query)
    data, after, total = await request.app[STORE].enrollment_search.page(
        tenant_of(request), where, query.limit, decode_token(query.page_token)
    )
    return respond(
        models.EnrollmentSearchList(data=data, next_page_token=encode_token(after), total=total)
    )


@route(
    "GET",
    "/enrollments/{id}",
    summary="Get an enrollment",
    tag=TAG,
    responses={200: models.EnrollmentOnly},
    errors=(404,),
)
async def get_enrollment(request: web.Request) -> web.Response:
    enrollment = await request.app[STORE].enrollments.get(
        tenant_of(request), request.match_info["id"]
    )
    return respond(models.EnrollmentOnly(enrollment=enrollment))


async def _transition(request: web.Request, action: str, reason: str) -> web.Response:
    enrollment = await request.app[STORE].enrollments.transition(
        tenant_of(request), request.match_info["id"], action, reason
    )
    return respond(models.EnrollmentOnly(enrollment=enrollment))


@route(
    "POST",
    "/enrollments/{id}/pause",
    summary="Pause an active enrollment",
    tag=TAG,
    responses={200: models.EnrollmentOnly},
    errors=(404, 409),
)
async def pause_enrollment(request: web.Request) -> web.Response:
    return await _transition(request, "pause", models.PausedReason.MANUAL)


@route(
    "POST",
    "/enrollments/{id}/resume",
    summary="Resume a paused enrollment; an overdue step goes out at once",
    tag=TAG,
    responses={200: models.EnrollmentOnly},
    errors=(404, 409),
)
async def resume_enrollment(request: web.Request) -> web.Response:
    return await _transition(request, "resume", "")


@route(
    "POST",
    "/enrollments/{id}/cancel",
    summary="Cancel an active or paused enrollment",
    tag=TAG,
    responses={200: models.EnrollmentOnly},
    errors=(404, 409),
)
async def cancel_enrollment(request: web.Request) -> web.Response:
    return await _transition(request, "cancel", models.CancelReason.MANUAL)
