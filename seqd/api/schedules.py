"""Schedules: /schedules, a tenant's send windows that sequences name by `schedule_id`."""

from __future__ import annotations

from aiohttp import web

from seqd import schedules
from seqd.api.auth import tenant_of
from seqd.api.pagination import ListQuery, decode_token, encode_token
from seqd.api.routing import route
from seqd.api.wire import read_body, read_query, respond
from seqd.appkeys import STORE
from seqd.errors import Conflict, FieldError, Invalid
from seqd.store.db import Store

TAG = "schedules"


@route(
    "POST",
    "/schedules",
    summary="Create a schedule: send windows in the recipient's time zone",
    tag=TAG,
    body=schedules.ScheduleCreate,
    responses={201: schedules.ScheduleEnvelope},
    errors=(409,),
)
async def create_schedule(request: web.Request) -> web.Response:
    body = await read_body(request, schedules.ScheduleCreate)
    schedule = await request.app[STORE].schedules.create(tenant_of(request), body)
    return respond(schedules.ScheduleEnvelope(schedule=schedule), 201)


@route(
    "GET",
    "/schedules",
    summary="List schedules",
    tag=TAG,
    query=ListQuery,
    responses={200: schedules.ScheduleList},
)
async def list_schedules(request: web.Request) -> web.Response:
    query = read_query(request, ListQuery)
    every = await request.app[STORE].schedules.all(tenant_of(request))
    after = decode_token(query.page_token)
    rest = [s for s in every if after is None or s.id > after]
    page = rest[: query.limit]
    more = len(rest) > query.limit
    return respond(
        schedules.ScheduleList(
            data=page,
            next_page_token=encode_token(page[-1].id if more else None),
            total=len(every),
        )
    )


@route(
    "GET",
    "/schedules/{id}",
    summary="Get a schedule",
    tag=TAG,
    responses={200: schedules.ScheduleEnvelope},
    errors=(404,),
)
async def get_schedule(request: web.Request) -> web.Response:
    store = request.app[STORE]
    schedule = await store.schedules.get(tenant_of(request), request.match_info["id"])
    return respond(schedules.ScheduleEnvelope(schedule=schedule))


@route(
    "PATCH",
    "/schedules/{id}",
    summary="Change a schedule; steps already due are re-timed when they next come due",
    tag=TAG,
    body=schedules.SchedulePatch,
    responses={200: schedules.ScheduleEnvelope},
    errors=(404, 409),
)
async def patch_schedule(request: web.Request) -> web.Response:
    body = await read_body(request, schedules.SchedulePatch)
    store = request.app[STORE]
    schedule = await store.schedules.change(tenant_of(request), request.match_info["id"], body)
    return respond(schedules.ScheduleEnvelope(schedule=schedule))


@route(
    "DELETE",
    "/schedules/{id}",
    summary="Delete a schedule no sequence uses",
    tag=TAG,
    responses={200: schedules.ScheduleEnvelope},
    errors=(404, 409),
)
async def delete_schedule(request: web.Request) -> web.Response:
    store, tenant, sid = request.app[STORE], tenant_of(request), request.match_info["id"]
    await store.schedules.get(tenant, sid)  # a 404 before the scan of the sequences
    users = await _sequences_using(store, tenant, sid)
    if users:
        named = ", ".join(users[:20]) + (", ..." if len(users) > 20 else "")
        raise Conflict(f"schedule {sid} is used by {named}; change their schedule_id first")
    schedule = await store.schedules.delete(tenant, sid)
    return respond(schedules.ScheduleEnvelope(schedule=schedule))


async def _sequences_using(store: Store, tenant: str, sid: str) -> list[str]:
    users: list[str] = []
    after = None
    while True:
        page, after, _ = await store.sequences.list(tenant, limit=200, after=after, status=None)
        users += [s.id for s in page if s.schedule_id == sid and s.status != "archived"]
        if after is None:
            return users


async def check_schedule_id(store: Store, tenant: str, sid: str | None) -> None:
    """A sequence's `schedule_id` names one of the tenant's schedules, or Invalid."""
    if sid is not None and not await store.schedules.exists(tenant, sid):
        raise Invalid([FieldError("schedule_id", f"no schedule {sid}")])
