"""Webhook endpoints: /webhook-endpoints, their secrets and their failed deliveries."""

from __future__ import annotations

import msgspec
from aiohttp import web

from seqd import redact
from seqd.api.auth import tenant_of
from seqd.api.pagination import ListQuery, decode_token, encode_token
from seqd.api.routing import route
from seqd.api.wire import read_body, read_query, respond
from seqd.appkeys import CONFIG, STORE
from seqd.config import WebhooksConfig
from seqd.errors import Conflict, Invalid
from seqd.event_models import (
    DeliveryEnvelope,
    DeliveryList,
    EndpointCreate,
    EndpointEnvelope,
    EndpointList,
    EndpointPatch,
    EndpointWithSecret,
)
from seqd.events import signing, ssrf
from seqd.store import event_types
from seqd.store.webhooks import EndpointRecord
from seqd.times import now_ms

TAG = "webhooks"


def _settings(request: web.Request) -> WebhooksConfig:
    return request.app[CONFIG].webhooks


def _subscription(events: list[str]) -> list[str]:
    errors = event_types.check_subscription(events)
    if errors:
        raise Invalid(errors)
    return list(dict.fromkeys(events))


async def _url(request: web.Request, url: str) -> str:
    await ssrf.check(url, allow_private=_settings(request).allow_private_targets)
    return url


@route(
    "POST",
    "/webhook-endpoints",
    summary="Create a webhook endpoint; the response holds its signing secret, once",
    tag=TAG,
    body=EndpointCreate,
    responses={201: EndpointWithSecret},
    errors=(409,),
)
async def create_endpoint(request: web.Request) -> web.Response:
    body = await read_body(request, EndpointCreate)
    events = _subscription(body.events)
    url = await _url(request, body.url)
    now = now_ms()
    secret = signing.new_secret()
    record = await request.app[STORE].webhooks.create(
        tenant_of(request),
        url=url,
        events=events,
        description=body.description,
        secret=secret,
        now=now,
        max_endpoints=_settings(request).max_endpoints_per_tenant,
    )
    return respond(EndpointWithSecret(webhook_endpoint=record.public(now), secret=secret), 201)


@route(
    "GET",
    "/webhook-endpoints",
    summary="List webhook endpoints (never their secrets)",
    tag=TAG,
    query=ListQuery,
    responses={200: EndpointList},
)
async def list_endpoints(request: web.Request) -> web.Response:
    query = read_query(request, ListQuery)
    after = decode_token(query.page_token)
    records = await request.app[STORE].webhooks.all(tenant_of(request))
    rest = [r for r in records if after is None or r.id > after]
    page = rest[: query.limit]
    more = len(rest) > query.limit
    now = now_ms()
    return respond(
        EndpointList(
            data=[r.public(now) for r in page],
            next_page_token=encode_token(page[-1].id if more and page else None),
            total=len(records),
        )
    )


@route(
    "GET",
    "/webhook-endpoints/{id}",
    summary="Get a webhook endpoint",
    tag=TAG,
    responses={200: EndpointEnvelope},
    errors=(404,),
)
async def get_endpoint(request: web.Request) -> web.Response:
    record = await request.app[STORE].webhooks.get(tenant_of(request), request.match_info["id"])
    return respond(EndpointEnvelope(webhook_endpoint=record.public(now_ms())))


@route(
    "PATCH",
    "/webhook-endpoints/{id}",
    summary="Change a webhook endpoint's url, events, description or enabled",
    tag=TAG,
    body=EndpointPatch,
    responses={200: EndpointEnvelope},
    errors=(404, 409),
)
async def patch_endpoint(request: web.Request) -> web.Response:
    body = await read_body(request, EndpointPatch)
    changes: dict[str, object] = {}
    if not isinstance(body.events, msgspec.UnsetType):
        changes["events"] = _subscription(body.events)
    if not isinstance(body.url, msgspec.UnsetType):
        changes["url"] = await _url(request, body.url)
    if not isinstance(body.description, msgspec.UnsetType):
        changes["description"] = body.description
    if not isinstance(body.enabled, msgspec.UnsetType):
        changes["enabled"] = body.enabled
        changes["disabled_reason"] = None if body.enabled else "manual"
    now = now_ms()

    def apply(record: EndpointRecord) -> EndpointRecord:
        if changes.get("url") == redact.mask_url(record.url):
            del changes["url"]  # the masked URL as shown, sent back: the stored one stays
        if changes.get("enabled") is False and not record.enabled:
            # Disabling a disabled endpoint keeps the reason it was disabled for.
            changes["disabled_reason"] = record.disabled_reason
        return msgspec.structs.replace(record, **changes, updated_at=now)

    record = await request.app[STORE].webhooks.update(
        tenant_of(request), request.match_info["id"], apply
    )
    return respond(EndpointEnvelope(webhook_endpoint=record.public(now)))


@route(
    "DELETE",
    "/webhook-endpoints/{id}",
    summary="Delete a webhook endpoint with its pending and failed deliveries",
    tag=TAG,
    responses={204: None},
    errors=(404,),
)
async def delete_endpoint(request: web.Request) -> web.Response:
    await request.app[STORE].webhooks.delete(tenant_of(request), request.match_info["id"])
    return web.Response(status=204)


@route(
    "POST",
    "/webhook-endpoints/{id}/rotate-secret",
    summary="New signing secret, shown once; the previous one keeps signing for a while",
    tag=TAG,
    responses={200: EndpointWithSecret},
    errors=(404,),
)
async def rotate_secret(request: web.Request) -> web.Response:
    now = now_ms()
    overlap_ms = _settings(request).secret_overlap_hours * 3_600_000
    secret = signing.new_secret()

    def rotate(record: EndpointRecord) -> EndpointRecord:
        return msgspec.structs.replace(
            record,
            secret=secret,
            previous_secret=record.secret,
            previous_expires_at=now + overlap_ms,
            updated_at=now,
        )

    record = await request.app[STORE].webhooks.update(
        tenant_of(request), request.match_info["id"], rotate
    )
    return respond(EndpointWithSecret(webhook_endpoint=record.public(now), secret=secret))


@route(
    "GET",
    "/webhook-endpoints/{id}/failed-deliveries",
    summary="List deliveries that failed every attempt (dead letters)",
    tag=TAG,
    query=ListQuery,
    responses={200: DeliveryList},
    errors=(404,),
)
async def list_failed(request: web.Request) -> web.Response:
    query = read_query(request, ListQuery)
    store = request.app[STORE]
    tenant, eid = tenant_of(request), request.match_info["id"]
    await store.webhooks.get(tenant, eid)
    data, after, total = await store.deliveries.list_failed(
        tenant, eid, limit=query.limit, after=decode_token(query.page_token)
    )
    return respond(DeliveryList(data=data, next_page_token=encode_token(after), total=total))


@route(
    "POST",
    "/webhook-endpoints/{id}/failed-deliveries/{delivery_id}/retry",
    summary="Send a failed delivery again (from the first wait of the retry schedule)",
    tag=TAG,
    responses={202: DeliveryEnvelope},
    errors=(404, 409),
)
async def retry_failed(request: web.Request) -> web.Response:
    store = request.app[STORE]
    tenant, eid = tenant_of(request), request.match_info["id"]
    endpoint = await store.webhooks.get(tenant, eid)
    if not endpoint.enabled:
        raise Conflict(
            f"webhook endpoint {eid} is disabled; enable it (PATCH enabled: true) first",
            status="disabled",
        )
    delivery = await store.deliveries.retry(
        tenant, eid, request.match_info["delivery_id"], now_ms()
    )
    return respond(DeliveryEnvelope(delivery=delivery), 202)
