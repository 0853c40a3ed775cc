"""The OpenAPI 3.1 document, generated from the route table and the msgspec models."""

from __future__ import annotations

import functools
import re
from typing import Any

import msgspec
from aiohttp import web

import seqd
from seqd.api import step_schemas
from seqd.api.appkeys import OPENAPI
from seqd.api.idempotency import HEADER as IDEMPOTENCY_HEADER
from seqd.api.idempotency import MAX_KEY_LENGTH
from seqd.api.problems import CONTENT_TYPE as PROBLEM_TYPE
from seqd.api.problems import Problem
from seqd.api.routing import ROUTES, Route, route
from seqd.api.wire import respond

_REF = "#/components/schemas/{name}"
_PARAM = re.compile(r"\{(\w+)\}")
_ERROR_TEXT = {
    400: "Malformed JSON; or, in text/plain, a request line or header the HTTP parser refuses",
    401: "Missing or invalid API key",
    403: "Forbidden",
    404: "Not found (also for another tenant's objects)",
    409: "Conflict with the object's current state",
    413: "Body too large",
    415: "Unsupported media type",
    422: "Invalid input; `errors` names each bad field",
    429: "Rate limited",
    503: "The store is unavailable",
}


def _query_parameters(kind: type, components: dict[str, Any]) -> list[dict[str, Any]]:
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    (schema,), extra = msgspec.json.schema_components([kind], ref_template=_REF)
    name = schema["$ref"].rsplit("/", 1)[1]
    props = extra[name]["properties"]
    required = set(extra[name].get("required", []))
    for key, value in extra.items():
        if key != name:
            components.setdefault(key, value)
    return [
        {
            "name": f.encode_name,
            "in": "query",
            "required": f.encode_name in required,
            "schema": props[f.encode_name],
        }
        for f in info.fields
    ]


# Every authenticated POST may carry it (api/idempotency.py): printable ASCII, no
# surrounding spaces (HTTP strips them).
_IDEMPOTENCY_KEY = {
    "name": IDEMPOTENCY_HEADER,
    "in": "header",
    "required": False,
    "description": "Replays this request's first answer for the same key and request; "
    "the key with another request is a 422, while the first still runs a 409",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_KEY_LENGTH,
        "pattern": r"^[\x21-\x7E]([\x20-\x7E]*[\x21-\x7E])?$",
    },
}


def _rules(kind: type, components: dict[str, Any]) -> None:
    """Add what a Struct states beyond its fields' own constraints (`json_schema_extra`:
    a rule between fields, like "a phone or an email") to its component."""
    extra = getattr(kind, "json_schema_extra", None)
    if extra is not None and kind.__name__ in components:
        components[kind.__name__].update(extra)


def _body_optional(kind: type, content_type: str) -> bool:
    """An empty JSON body reads as `{}` (api/wire.py): optional when `{}` is valid."""
    if content_type != "application/json" or getattr(kind, "json_schema_extra", None):
        return False
    try:
        msgspec.json.decode(b"{}", type=kind)
    except msgspec.ValidationError:
        return False
    return True


def _links(routes: list[Route], base_path: str) -> dict[tuple[str, str], dict[str, Any]]:
    """OpenAPI links, so a client (and schemathesis's stateful phase) can follow an object
    from the answer that made or listed it to every operation on it: from `POST /<things>`
    or `GET .../<things>` (the object's `id` in the answer) to each `/<things>/{id}...`."""
    links: dict[tuple[str, str], dict[str, Any]] = {}
    for r in routes:
        if r.method not in ("POST", "GET") or r.path.endswith("}"):
            continue
        things = r.path.rsplit("/", 1)[1]
        targets = [t for t in routes if t.path.startswith(f"/{things}/{{id}}")]
        # The kind of object GET /<things>/{id} answers: an answer of another kind under the
        # same name (a contact's events are not the event log's) links to none of them.
        reads = [_object_type(t.responses.get(200)) for t in targets if t.method == "GET"]
        for status, kind in r.responses.items():
            # (Not from a 202: its object is accepted, not made yet.)
            pointer = _id_pointer(kind) if status in (200, 201) else None
            if pointer is None or not targets:
                continue
            if reads and _object_type(kind) not in reads:
                continue
            links[(f"{r.method} {r.path}", str(status))] = {
                t.handler.__name__: {
                    "operationId": t.handler.__name__,
                    "parameters": {"path.id": f"$response.body#{pointer}"},
                }
                for t in targets
            }
    return links


@functools.cache
def _object(kind: type | None) -> tuple[str, type] | None:
    """Where an answer's object is and its Struct: `/<field>` of an envelope, `/data/0` of
    a page (the first Struct field with an `id`)."""
    if kind is None:
        return None
    info = msgspec.inspect.type_info(kind)
    if not isinstance(info, msgspec.inspect.StructType):
        return None
    for f in info.fields:
        inner = f.type
        if isinstance(inner, msgspec.inspect.ListType) and f.encode_name == "data":
            inner = inner.item_type
            prefix = "/data/0"
        else:
            prefix = f"/{f.encode_name}"
        if isinstance(inner, msgspec.inspect.StructType) and any(
            g.encode_name == "id" for g in inner.fields
        ):
            return prefix, inner.cls
    return None


def _object_type(kind: type | None) -> type | None:
    found = _object(kind)
    return None if found is None else found[1]


def _id_pointer(kind: type | None) -> str | None:
    """Where the object's id is in an answer: `/<field>/id` of an envelope, `/data/0/id`
    of a page."""
    found = _object(kind)
    return None if found is None else f"{found[0]}/id"


def build(base_path: str, routes: list[Route] | None = None) -> dict[str, Any]:
    """The document of `routes` (default: every declared route)."""
    routes = ROUTES if routes is None else routes
    types: set[type] = {Problem}
    for r in routes:
        if r.body is not None:
            types.add(r.body)
        types.update(t for t in r.responses.values() if t is not None)
    ordered = sorted(types, key=lambda t: t.__name__)
    refs, components = msgspec.json.schema_components(ordered, ref_template=_REF)
    ref_of = dict(zip(ordered, refs, strict=True))

    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        paths.setdefault(r.full_path(base_path), {})[r.method.lower()] = _operation(
            r, ref_of, components
        )
    for kind in _struct_types(ordered):
        _rules(kind, components)
    step_schemas.tagged(components)
    for (key, status), links in _links(routes, base_path).items():
        method, path = key.split(" ", 1)
        r = next(r for r in routes if r.method == method and r.path == path)
        paths[r.full_path(base_path)][method.lower()]["responses"][status]["links"] = links
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "seqd",
            "version": seqd.__version__,
            "description": "Multi-step SMS and email sequences.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            },
        },
    }


def _struct_types(roots: list[type]) -> list[type]:
    """Every Struct type reachable from `roots` (the components of the document)."""
    seen: dict[type, None] = {}

    def walk(info: msgspec.inspect.Type) -> None:
        if isinstance(info, msgspec.inspect.StructType):
            if info.cls in seen:
                return
            seen[info.cls] = None
            for f in info.fields:
                walk(f.type)
        elif isinstance(info, msgspec.inspect.UnionType):
            for t in info.types:
                walk(t)
        elif isinstance(info, msgspec.inspect.ListType | msgspec.inspect.DictType):
            walk(info.item_type if isinstance(info, msgspec.inspect.ListType) else info.value_type)

    for root in roots:
        walk(msgspec.inspect.type_info(root))
    return list(seen)


def _operation(r: Route, ref_of: dict[type, Any], components: dict[str, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": r.handler.__name__,
        "summary": r.summary,
        "tags": [r.tag],
        "parameters": [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in _PARAM.findall(r.path)
        ],
        "responses": {},
    }
    if r.query is not None:
        op["parameters"] += _query_parameters(r.query, components)
    if r.body is not None:
        op["requestBody"] = {
            "required": not _body_optional(r.body, r.body_content_type),
            "content": {r.body_content_type: {"schema": ref_of[r.body]}},
        }
    for status, kind in sorted(r.responses.items()):
        response: dict[str, Any] = {"description": r.summary}
        if kind is not None:
            response["content"] = {"application/json": {"schema": ref_of[kind]}}
        op["responses"][str(status)] = response
    # 400 on every route: the HTTP parser refuses a request line or header field over 8190
    # bytes before any handler runs, in text/plain.
    errors = set(r.errors) | {400, 500}
    if r.body is not None or r.query is not None:
        errors |= {413, 415, 422}
    if r.auth and r.method == "POST":
        op["parameters"].append(_IDEMPOTENCY_KEY)
        errors |= {409, 422}
    if r.auth:
        errors |= {401, 429}
        op["security"] = [{"bearer": []}, {"apiKey": []}]
    else:
        op["security"] = []
    errors.add(503)
    for status in sorted(errors):
        op["responses"][str(status)] = {
            "description": _ERROR_TEXT.get(status, "Error"),
            "content": {PROBLEM_TYPE: {"schema": ref_of[Problem]}},
        }
    op["responses"]["400"]["content"]["text/plain"] = {"schema": {"type": "string"}}
    for status, media in r.media.items():
        response = op["responses"].setdefault(str(status), {"description": r.summary})
        # Several types, comma-separated: one body, as the request chose (an export's format).
        response["content"] = {m.strip(): {"schema": {"type": "string"}} for m in media.split(",")}
    return op


@route(
    "GET",
    "/openapi.json",
    summary="This OpenAPI document",
    tag="meta",
    responses={200: None},
    auth=False,
)
async def openapi_document(request: web.Request) -> web.Response:
    return respond(request.app[OPENAPI])
