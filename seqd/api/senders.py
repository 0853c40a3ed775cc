"""Senders: /senders, a tenant's numbers and mailboxes with their limits and today's budget."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from seqd import ids
from seqd.api.auth import tenant_of
from seqd.api.pagination import ListQuery, decode_token, encode_token
from seqd.api.routing import route
from seqd.api.wire import read_body, read_query, respond
from seqd.appkeys import CONFIG, STORE
from seqd.senders import budget
from seqd.senders.models import (
    SenderCreate,
    SenderEnvelope,
    SenderList,
    SenderPatch,
    SenderRecord,
    SenderView,
    check_record,
    imap_view,
    normalize_address,
)
from seqd.times import now_ms, to_rfc3339

TAG = "senders"


def _profiles(request: web.Request) -> frozenset[str]:
    return frozenset(request.app[CONFIG].channels_for(tenant_of(request)).smtp.profiles)


def _view(record: SenderRecord, answer: budget.Answer, now: int) -> SenderView:
    cap = budget.today(record, now).cap
    if answer.sender is not None:
        free: int | None = now
    else:
        free = None if answer.until == budget.PAUSED else answer.until
    return SenderView(
        id=record.id,
        channel=record.channel,
        address=record.address,
        name=record.name,
        limits=record.limits,
        ramp=record.ramp,
        min_gap_seconds=record.min_gap_seconds,
        paused=record.paused,
        smtp_profile=record.smtp_profile,
        messaging_service_sid=record.messaging_service_sid,
        imap=imap_view(record.imap),
        created_at=to_rfc3339(record.created_at),
        updated_at=to_rfc3339(record.updated_at),
        daily_cap=cap,
        used_today=answer.used,
        remaining_today=None if cap is None else max(0, cap - answer.used),
        next_free_at=None if free is None else to_rfc3339(free),
    )


async def _views(request: web.Request, records: list[SenderRecord]) -> list[SenderView]:
    now = now_ms()
    answers = await request.app[STORE].senders.usage(tenant_of(request), records, now)
    return [_view(r, a, now) for r, a in zip(records, answers, strict=True)]


@route(
    "POST",
    "/senders",
    summary="Add a sender: a phone number or a mailbox with its limits",
    tag=TAG,
    body=SenderCreate,
    responses={201: SenderEnvelope},
    errors=(409,),
)
async def create_sender(request: web.Request) -> web.Response:
    body = await read_body(request, SenderCreate)
    config = request.app[CONFIG]
    now = now_ms()
    record = SenderRecord(
        id=ids.new(ids.SENDER, now),
        channel=body.channel,
        address=normalize_address(body.channel, body.address, config.contacts.default_region),
        name=body.name,
        limits=body.limits,
        ramp=body.ramp,
        min_gap_seconds=body.min_gap_seconds,
        paused=body.paused,
        smtp_profile=body.smtp_profile,
        messaging_service_sid=body.messaging_service_sid,
        imap=body.imap,
        created_at=now,
        updated_at=now,
    )
    check_record(record, _profiles(request))
    await request.app[STORE].senders.create(
        tenant_of(request), record, max_senders=config.senders.max_per_tenant
    )
    (view,) = await _views(request, [record])
    return respond(SenderEnvelope(sender=view), 201)


@route(
    "GET",
    "/senders",
    summary="List senders with today's budget of each",
    tag=TAG,
    query=ListQuery,
    responses={200: SenderList},
)
async def list_senders(request: web.Request) -> web.Response:
    query = read_query(request, ListQuery)
    after = decode_token(query.page_token)
    records = await request.app[STORE].senders.all(tenant_of(request))
    rest = [r for r in records if after is None or r.id > after]
    page = rest[: query.limit]
    more = len(rest) > query.limit
    return respond(
        SenderList(
            data=await _views(request, page),
            next_page_token=encode_token(page[-1].id if more and page else None),
            total=len(records),
        )
    )


@route(
    "GET",
    "/senders/{id}",
    summary="Get a sender: its limits, sends today, sends left today and when it is next free",
    tag=TAG,
    responses={200: SenderEnvelope},
    errors=(404,),
)
async def get_sender(request: web.Request) -> web.Response:
    record = await request.app[STORE].senders.get(tenant_of(request), request.match_info["id"])
    (view,) = await _views(request, [record])
    return respond(SenderEnvelope(sender=view))


@route(
    "PATCH",
    "/senders/{id}",
    summary="Change a sender's name, limits, ramp, gap, pause or route (not its address)",
    tag=TAG,
    body=SenderPatch,
    responses={200: SenderEnvelope},
    errors=(404, 409),
)
async def patch_sender(request: web.Request) -> web.Response:
    body = await read_body(request, SenderPatch)
    changes: dict[str, Any] = {
        f: getattr(body, f) for f in body.__struct_fields__ if getattr(body, f) is not msgspec.UNSET
    }
    profiles = _profiles(request)
    now = now_ms()

    def apply(record: SenderRecord) -> SenderRecord:
        new = dict(changes)
        imap = new.get("imap")
        if imap is not None and imap.password is None and record.imap is not None:
            # A mailbox's settings changed without the (write-only) password: it stays.
            new["imap"] = msgspec.structs.replace(imap, password=record.imap.password)
        changed = msgspec.structs.replace(record, **new, updated_at=now)
        check_record(changed, profiles)
        return changed

    record = await request.app[STORE].senders.update(
        tenant_of(request), request.match_info["id"], apply
    )
    (view,) = await _views(request, [record])
    return respond(SenderEnvelope(sender=view))


@route(
    "DELETE",
    "/senders/{id}",
    summary="Delete a sender; sequences that name it send from the rest of their pool",
    tag=TAG,
    responses={204: None},
    errors=(404,),
)
async def delete_sender(request: web.Request) -> web.Response:
    await request.app[STORE].senders.delete(tenant_of(request), request.match_info["id"])
    return web.Response(status=204)
