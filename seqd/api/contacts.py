"""Contacts: /contacts."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from aiohttp import web
from msgspec import Meta

from seqd import models
from seqd.api.auth import tenant_of
from seqd.api.pagination import ListQuery, decode_token, encode_token
from seqd.api.routing import route
from seqd.api.wire import read_body, read_query, respond
from seqd.appkeys import CONFIG, STORE
from seqd.errors import FieldError, Invalid

TAG = "contacts"


class ContactListQuery(ListQuery, kw_only=True):
    phone: Annotated[str, Meta(max_length=64)] | None = None
    email: Annotated[str, Meta(max_length=320)] | None = None
    external_id: Annotated[str, Meta(max_length=200)] | None = None


def _normalized(request: web.Request, fields: dict[str, Any], root: str = "") -> dict[str, Any]:
    errors = models.normalize_contact_fields(fields, request.app[CONFIG].contacts.default_region)
    if errors:
        raise Invalid([FieldError(f"{root}{e.path}", e.message) for e in errors])
    return fields


def contact_fields(
    request: web.Request, body: models.ContactCreate, root: str = ""
) -> dict[str, Any]:
    """Validated, normalised fields of a new contact."""
    return models.new_contact_fields(body, request.app[CONFIG].contacts.default_region, root)


@route(
    "POST",
    "/contacts",
    summary="Create a contact",
    tag=TAG,
    body=models.ContactCreate,
    responses={201: models.ContactEnvelope},
    errors=(409,),
)
async def create_contact(request: web.Request) -> web.Response:
    body = await read_body(request, models.ContactCreate)
    fields = contact_fields(request, body)
    contact = await request.app[STORE].contacts.create(tenant_of(request), fields)
    return respond(models.ContactEnvelope(contact=contact), 201)


@route(
    "GET",
    "/contacts",
    summary="List contacts",
    tag=TAG,
    query=ContactListQuery,
    responses={200: models.ContactList},
)
async def list_contacts(request: web.Request) -> web.Response:
    query = read_query(request, ContactListQuery)
    filters = {f: getattr(query, f) for f in ("phone", "email", "external_id") if getattr(query, f)}
    if filters:
        for name, value in list(filters.items()):
            try:
                filters[name] = _normalized(request, {name: value}, "query.")[name]
            except Invalid:
                filters[name] = value  # an unparseable filter value simply matches nothing
    data, after, total = await request.app[STORE].contacts.list(
        tenant_of(request),
        limit=query.limit,
        after=decode_token(query.page_token),
        filters=filters,
    )
    return respond(models.ContactList(data=data, next_page_token=encode_token(after), total=total))


@route(
    "GET",
    "/contacts/{id}",
    summary="Get a contact",
    tag=TAG,
    responses={200: models.ContactEnvelope},
    errors=(404,),
)
async def get_contact(request: web.Request) -> web.Response:
    contact = await request.app[STORE].contacts.get(tenant_of(request), request.match_info["id"])
    return respond(models.ContactEnvelope(contact=contact))


@route(
    "PATCH",
    "/contacts/{id}",
    summary="Change a contact",
    tag=TAG,
    body=models.ContactPatch,
    responses={200: models.ContactEnvelope},
    errors=(404, 409),
)
async def patch_contact(request: web.Request) -> web.Response:
    body = await read_body(request, models.ContactPatch)
    changes = {
        f.name: getattr(body, f.name)
        for f in msgspec.structs.fields(body)
        if getattr(body, f.name) is not msgspec.UNSET
    }
    store = request.app[STORE]
    tenant, cid = tenant_of(request), request.match_info["id"]
    current = await store.contacts.get(tenant, cid)
    after = {**msgspec.structs.asdict(current), **changes}
    if not after.get("phone") and not after.get("email"):
        raise Invalid.field("phone", "a contact needs a phone or an email")
    contact = await store.contacts.update(tenant, cid, _normalized(request, changes))
    return respond(models.ContactEnvelope(contact=contact))


@route(
    "DELETE",
    "/contacts/{id}",
    summary="Delete a contact and cancel its enrollments",
    tag=TAG,
    responses={204: None},
    errors=(404,),
)
async def delete_contact(request: web.Request) -> web.Response:
    await request.app[STORE].contacts.delete(tenant_of(request), request.match_info["id"])
    return web.Response(status=204)
