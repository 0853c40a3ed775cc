"""POST /sequences/{id}/enrollments/batch: up to 1,000 enrollments in one request.

Each item is decoded and validated on its own, so one bad item is a problem object in its
place (with its `index` and field paths under `items[i].`) and the others go through; all
the good ones are enrolled together by `bulk.enroll`. The answer is 200 with one result
per item, in order, each tagged `"outcome": "enrolled" | "problem"`.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web
from msgspec import Meta

from seqd import bulk, models
from seqd.api.auth import tenant_of
from seqd.api.enrollments import queued_of
from seqd.api.problems import Problem, build
from seqd.api.routing import route
from seqd.api.wire import read_body, respond
from seqd.appkeys import CONFIG, POLICY, STORE
from seqd.errors import Invalid, SeqdError, field_error

TAG = "enrollments"


class BatchEnrolled(models.EnrollmentEnvelope, tag_field="outcome", tag="enrolled"):
    """An item enrolled (`idempotent`: it already was)."""


class BatchQueued(models.QueuedEnvelope, tag_field="outcome", tag="queued"):
    """An item queued behind the contact's live exclusive enrollment (`if_busy: queue`)."""


class BatchProblem(Problem, tag_field="outcome", tag="problem"):
    """An item that was not enrolled: a problem object with the item's `index`."""


class EnrollmentBatchResult(models.Output, kw_only=True):
    results: list[BatchEnrolled | BatchQueued | BatchProblem]


class EnrollmentBatchBody(models.Input, kw_only=True):
    """Up to 1,000 enrollments, each as POST /sequences/{id}/enrollments takes it (an
    EnrollmentCreate). Items are read one by one: an item that is not one is a problem
    result in its place, and the others go through."""

    items: Annotated[
        list[msgspec.Raw],
        Meta(
            min_length=1,
            max_length=models.BATCH_MAX_ITEMS,
            description="each an EnrollmentCreate; one that is not is a problem result",
        ),
    ]


_decode_item = msgspec.json.Decoder(models.EnrollmentCreate).decode
_decode_batch = msgspec.json.Decoder(models.EnrollmentBatch).decode


async def _decoded(request: web.Request) -> list[models.EnrollmentCreate | BatchProblem]:
    """Each item decoded, or its problem. The whole body in one typed decode when it is all
    good (the usual case); item by item otherwise, so each bad one gets its own problem."""
    if request.content_type == "application/json":
        try:
            return list(_decode_batch(await request.read()).items)
        except (msgspec.DecodeError, RecursionError):  # ValidationError included
            pass  # read_body below answers 400 for a body nested too deeply
    raw = await read_body(request, EnrollmentBatchBody)
    out: list[models.EnrollmentCreate | BatchProblem] = []
    for i, text in enumerate(raw.items):
        try:
            out.append(_decode_item(text))
        except msgspec.ValidationError as exc:
            out.append(item_problem(Invalid([field_error(exc, f"items[{i}]")]), i))
    return out


def item_problem(error: SeqdError, index: int) -> BatchProblem:
    """The problem object of item `index`; `error`'s field paths are already rooted."""
    extra = dict(error.extra)
    if isinstance(error, Invalid):
        extra["errors"] = error.errors
    p = build(error.status, error.code, error.title, error.detail, index=index, **extra)
    return BatchProblem(**msgspec.structs.asdict(p))


@route(
    "POST",
    "/sequences/{id}/enrollments/batch",
    summary="Enroll up to 1,000 contacts (by id or inline); one result per item, in order",
    tag=TAG,
    body=EnrollmentBatchBody,
    responses={200: EnrollmentBatchResult},
    errors=(404, 409),
)
async def create_enrollment_batch(request: web.Request) -> web.Response:
    store = request.app[STORE]
    tenant = tenant_of(request)
    region = request.app[CONFIG].contacts.default_region
    # The sequence first: another tenant's id is the same 404 whatever the body.
    into = await bulk.target(store, tenant, request.match_info["id"])
    bodies = await _decoded(request)
    results: list[BatchEnrolled | BatchQueued | BatchProblem | None] = [None] * len(bodies)
    good: list[int] = []
    items: list[bulk.Item] = []
    for i, body in enumerate(bodies):
        if isinstance(body, BatchProblem):
            results[i] = body
            continue
        try:
            items.append(bulk.prepare(body, region))
            good.append(i)
        except SeqdError as exc:
            results[i] = item_problem(bulk.under(exc, f"items[{i}]."), i)
    outcomes = (
        await bulk.enroll(
            store,
            tenant,
            into.seq,
            into.version,
            items,
            listed=into.listed,
            timing=into.timing(request.app[POLICY]),
        )
        if items
        else []
    )
    for i, outcome in zip(good, outcomes, strict=True):
        if outcome.behind is not None:
            results[i] = BatchQueued(queued=queued_of(outcome, into.seq.id))
        elif outcome.enrollment is not None:
            results[i] = BatchEnrolled(enrollment=outcome.enrollment, idempotent=outcome.idempotent)
        elif outcome.error is not None:
            results[i] = item_problem(bulk.under(outcome.error, f"items[{i}]."), i)
    return respond(EnrollmentBatchResult(results=[r for r in results if r is not None]))
