"""Sequences: /sequences."""

from __future__ import annotations

from typing import Literal

import msgspec
from aiohttp import web

from seqd import models
from seqd.api.auth import tenant_of
from seqd.api.pagination import ListQuery, decode_token, encode_token
from seqd.api.routing import route
from seqd.api.schedules import check_schedule_id
from seqd.api.steps import check_steps
from seqd.api.wire import read_body, read_query, respond
from seqd.appkeys import STORE
from seqd.errors import Conflict, NotFound
from seqd.models import SequenceStatus

TAG = "sequences"


class SequenceListQuery(ListQuery, kw_only=True):
    status: Literal["draft", "active", "paused", "archived"] | None = None


@route(
    "POST",
    "/sequences",
    summary="Create a sequence",
    tag=TAG,
    body=models.SequenceCreate,
    responses={201: models.SequenceEnvelope},
)
async def create_sequence(request: web.Request) -> web.Response:
    body = await read_body(request, models.SequenceCreate)
    await check_steps(request, tenant_of(request), body.steps)
    await request.app[STORE].senders.check_pools(tenant_of(request), body.senders)
    await check_schedule_id(request.app[STORE], tenant_of(request), body.schedule_id)
    seq = await request.app[STORE].sequences.create(tenant_of(request), body)
    return respond(models.SequenceEnvelope(sequence=seq), 201)


@route(
    "GET",
    "/sequences",
    summary="List sequences",
    tag=TAG,
    query=SequenceListQuery,
    responses={200: models.SequenceList},
)
async def list_sequences(request: web.Request) -> web.Response:
    query = read_query(request, SequenceListQuery)
    data, after, total = await request.app[STORE].sequences.list(
        tenant_of(request),
        limit=query.limit,
        after=decode_token(query.page_token),
        status=query.status,
    )
    return respond(models.SequenceList(data=data, next_page_token=encode_token(after), total=total))


@route(
    "GET",
    "/sequences/{id}",
    summary="Get a sequence",
    tag=TAG,
    responses={200: models.SequenceEnvelope},
    errors=(404,),
)
async def get_sequence(request: web.Request) -> web.Response:
    seq = await request.app[STORE].sequences.get(tenant_of(request), request.match_info["id"])
    return respond(models.SequenceEnvelope(sequence=seq))


@route(
    "PATCH",
    "/sequences/{id}",
    summary="Change a sequence",
    tag=TAG,
    body=models.SequencePatch,
    responses={200: models.SequenceEnvelope},
    errors=(404, 409),
)
async def patch_sequence(request: web.Request) -> web.Response:
    body = await read_body(request, models.SequencePatch)
    if not isinstance(body.steps, msgspec.UnsetType):
        await check_steps(request, tenant_of(request), body.steps)
    if not isinstance(body.senders, msgspec.UnsetType):
        await request.app[STORE].senders.check_pools(tenant_of(request), body.senders)
    if isinstance(body.schedule_id, str):
        await check_schedule_id(request.app[STORE], tenant_of(request), body.schedule_id)
    seq = await request.app[STORE].sequences.change(
        tenant_of(request), request.match_info["id"], patch=body
    )
    return respond(models.SequenceEnvelope(sequence=seq))


class WinnerBody(models.Input, kw_only=True):
    """The variant step n of the newest version of the steps sends alone from now on.
    Enrollments still on an older version keep that version's step as it was (its own
    winner or none); a later version keeps the winner only on the identical step."""

    variant: models.VariantId


@route(
    "POST",
    "/sequences/{id}/steps/{n}/winner",
    summary="Choose an A/B winner: the newest version's step n sends only this variant from now on",
    tag=TAG,
    body=WinnerBody,
    responses={200: models.SequenceEnvelope},
    errors=(404, 409),
)
async def choose_winner(request: web.Request) -> web.Response:
    body = await read_body(request, WinnerBody)
    text = request.match_info["n"]
    if not text.isdigit() or len(text) > 3:
        raise NotFound(f"no step {text}", field="n")
    seq = await request.app[STORE].sequences.change(
        tenant_of(request), request.match_info["id"], winner=(int(text), body.variant)
    )
    return respond(models.SequenceEnvelope(sequence=seq))


@route(
    "POST",
    "/sequences/{id}/pause",
    summary="Pause a sequence: no step of it is sent",
    tag=TAG,
    responses={200: models.SequenceEnvelope},
    errors=(404, 409),
)
async def pause_sequence(request: web.Request) -> web.Response:
    return await _set_status(request, SequenceStatus.PAUSED, {SequenceStatus.ACTIVE})


@route(
    "POST",
    "/sequences/{id}/resume",
    summary="Resume a paused sequence: overdue steps go out at once, in due order",
    tag=TAG,
    responses={200: models.SequenceEnvelope},
    errors=(404, 409),
)
async def resume_sequence(request: web.Request) -> web.Response:
    hint = {SequenceStatus.DRAFT: "a draft is started with POST {here}/activate"}
    return await _set_status(request, SequenceStatus.ACTIVE, {SequenceStatus.PAUSED}, hint)


@route(
    "POST",
    "/sequences/{id}/activate",
    summary="Start a draft sequence: enrollments may be made and steps go out",
    tag=TAG,
    responses={200: models.SequenceEnvelope},
    errors=(404, 409),
)
async def activate_sequence(request: web.Request) -> web.Response:
    hint = {SequenceStatus.PAUSED: "a paused sequence goes on with POST {here}/resume"}
    return await _set_status(request, SequenceStatus.ACTIVE, {SequenceStatus.DRAFT}, hint)


@route(
    "DELETE",
    "/sequences/{id}",
    summary="Archive a sequence; its active and paused enrollments are cancelled",
    tag=TAG,
    responses={200: models.SequenceEnvelope},
    errors=(404,),
)
async def delete_sequence(request: web.Request) -> web.Response:
    return await _set_status(request, SequenceStatus.ARCHIVED, None)


async def _set_status(
    request: web.Request,
    status: SequenceStatus,
    allowed_from: set[SequenceStatus] | None,
    hints: dict[SequenceStatus, str] | None = None,
) -> web.Response:
    """`hints`: by the status the sequence is in, what the 409 tells to do instead
    (`{here}`: this sequence's path)."""
    try:
        seq = await request.app[STORE].sequences.change(
            tenant_of(request),
            request.match_info["id"],
            status=status,
            allowed_from=None if allowed_from is None else frozenset(allowed_from),
        )
    except Conflict as exc:
        hint = (hints or {}).get(exc.extra.get("status"))  # type: ignore[arg-type]
        if hint is None:
            raise
        here = request.path.rsplit("/", 1)[0]
        raise Conflict(f"{exc.detail}; {hint.format(here=here)}", **exc.extra) from None
    return respond(models.SequenceEnvelope(sequence=seq))
