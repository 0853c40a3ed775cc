"""The OpenAPI 3.1 document, generated from the route table and the msgspec models."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from aiohttp import web

import seqd
from seqd.api.appkeys import OPENAPI
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
            "required": True,
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
        response["content"] = {media: {"schema": {"type": "string"}}}
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
