"""Suppressions: /suppressions, the per-tenant lists of phones and addresses not to use."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from msgspec import Meta

from seqd import models
from seqd.api.auth import tenant_of
from seqd.api.pagination import ListQuery, decode_token, encode_token
from seqd.api.routing import route
from seqd.api.wire import read_body, read_query, respond
from seqd.appkeys import CONFIG, STORE
from seqd.config import Config
from seqd.errors import Invalid, NotFound
from seqd.kinds import CHANNEL_ADDRESS, CHANNELS, Channel

TAG = "suppressions"
Value = Annotated[str, Meta(min_length=1, max_length=320)]


class SuppressionListQuery(ListQuery, kw_only=True):
    channel: Channel | None = None
    value: Value | None = None


class SuppressionKey(models.Input, kw_only=True):
    channel: Channel
    value: Value


def normalise(config: Config, channel: Channel, value: str, path: str = "value") -> str:
    """A phone in E.164 or a normalised address; 422 naming `path` when it is neither."""
    try:
        if CHANNEL_ADDRESS[channel] == "phone":
            return models.normalize_phone(value, config.contacts.default_region)
        return models.normalize_email(value)
    except ValueError as exc:
        raise Invalid.field(path, str(exc)) from None


@route(
    "POST",
    "/suppressions",
    summary="Suppress a phone (sms) or an address (email); idempotent",
    tag=TAG,
    body=models.SuppressionCreate,
    responses={201: models.SuppressionEnvelope, 200: models.SuppressionEnvelope},
)
async def create_suppression(request: web.Request) -> web.Response:
    body = await read_body(request, models.SuppressionCreate)
    value = normalise(request.app[CONFIG], body.channel, body.value)
    suppression, new = await request.app[STORE].suppressions.add(
        tenant_of(request), body.channel, value, body.reason.value
    )
    return respond(models.SuppressionEnvelope(suppression=suppression), 201 if new else 200)


@route(
    "GET",
    "/suppressions",
    summary="List suppressions (filters: channel, value)",
    tag=TAG,
    query=SuppressionListQuery,
    responses={200: models.SuppressionList},
)
async def list_suppressions(request: web.Request) -> web.Response:
    query = read_query(request, SuppressionListQuery)
    store, tenant = request.app[STORE], tenant_of(request)
    channels: list[Channel] = [query.channel] if query.channel else list(CHANNELS)
    if query.value is not None:
        found = []
        for channel in channels:
            try:
                value = normalise(request.app[CONFIG], channel, query.value, "query.value")
            except Invalid:
                continue  # a filter that is no phone (or no address) matches nothing there
            hit = await store.suppressions.get(tenant, channel, value)
            if hit is not None:
                found.append(hit)
        return respond(models.SuppressionList(data=found, next_page_token=None, total=len(found)))
    data, after, total = await store.suppressions.list(
        tenant, channels=channels, limit=query.limit, after=decode_token(query.page_token)
    )
    return respond(
        models.SuppressionList(data=data, next_page_token=encode_token(after), total=total)
    )


@route(
    "DELETE",
    "/suppressions",
    summary="Lift a suppression (query: channel, value)",
    tag=TAG,
    query=SuppressionKey,
    responses={204: None},
    errors=(404,),
)
async def delete_suppression(request: web.Request) -> web.Response:
    query = read_query(request, SuppressionKey)
    value = normalise(request.app[CONFIG], query.channel, query.value, "query.value")
    removed = await request.app[STORE].suppressions.remove(tenant_of(request), query.channel, value)
    if removed is None:
        raise NotFound(f"{value} is not suppressed on {query.channel}", field="value")
    return web.Response(status=204)
