"""Enrollments: /sequences/{id}/enrollments and /enrollments/{id}."""

from __future__ import annotations

from typing import Literal

from aiohttp import web

from seqd import models
from seqd.api.appkeys import STORE
from seqd.api.auth import tenant_of
from seqd.api.pagination import ListQuery, decode_token, encode_token
from seqd.api.routing import route
from seqd.api.wire import read_body, read_query, respond
from seqd.errors import Conflict, Invalid, NotFound
from seqd.models import EnrollmentStatus, SequenceStatus
from seqd.store.codec import encode_json
from seqd.store.enrollments import EnrollItem, EnrollResult

TAG = "enrollments"


class EnrollmentListQuery(ListQuery, kw_only=True):
    status: Literal["active", "paused", "completed", "cancelled"] | None = None


def check_metadata(metadata: dict[str, object], path: str = "metadata") -> None:
    if len(encode_json(metadata)) > models.METADATA_MAX_BYTES:
        raise Invalid.field(path, f"larger than {models.METADATA_MAX_BYTES} bytes as JSON")


def raise_for(result: EnrollResult, seq: models.Sequence) -> None:
    """Turn a failed enroll result into the API's error."""
    if result.code == "CONTACT_NOT_FOUND":
        raise NotFound(f"no contact {result.detail}", field="contact_id")
    if result.code == "SEQUENCE_NOT_ACTIVE":
        raise Conflict(f"sequence {seq.id} is {result.detail}, not active", status=result.detail)
    raise Conflict(f"{result.code}: {result.detail}")


async def enroll_one(
    request: web.Request, seq_id: str, item: EnrollItem
) -> tuple[models.Enrollment, bool]:
    store = request.app[STORE]
    tenant = tenant_of(request)
    seq, version = await store.sequences.get_versioned(tenant, seq_id)
    if seq.status != SequenceStatus.ACTIVE:
        raise Conflict(
            f"sequence {seq.id} is {seq.status.value}, not active", status=seq.status.value
        )
    [result] = await store.enrollments.enroll(tenant, seq, [item])
    if result.code == "SEQUENCE_NOT_ACTIVE" and result.detail == "missing":
        # The shard mirror was never written (a crash right after the sequence was saved).
        await store.sequences.sync(seq, version, [])
        [result] = await store.enrollments.enroll(tenant, seq, [item])
    if result.enrollment is None:
        raise_for(result, seq)
    assert result.enrollment is not None
    return result.enrollment, result.idempotent


@route(
    "POST",
    "/sequences/{id}/enrollments",
    summary="Enroll a contact (idempotent)",
    tag=TAG,
    body=models.EnrollmentCreate,
    responses={201: models.EnrollmentEnvelope, 200: models.EnrollmentEnvelope},
    errors=(404, 409),
)
async def create_enrollment(request: web.Request) -> web.Response:
    body = await read_body(request, models.EnrollmentCreate)
    check_metadata(body.metadata)
    enrollment, idempotent = await enroll_one(
        request, request.match_info["id"], EnrollItem(body.contact_id, body.metadata)
    )
    return respond(
        models.EnrollmentEnvelope(enrollment=enrollment, idempotent=idempotent),
        200 if idempotent else 201,
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
    statuses: list[str] = [query.status] if query.status else [s.value for s in EnrollmentStatus]
    data, after, total = await store.enrollments.list(
        tenant, sid, limit=query.limit, after=decode_token(query.page_token), statuses=statuses
    )
    return respond(
        models.EnrollmentList(data=data, next_page_token=encode_token(after), total=total)
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
