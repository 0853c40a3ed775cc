"""The access log and HTTP metrics: one line and one count per request.

The outermost middleware, so it sees the final status of every request, errors included
(the problems middleware inside it has already turned them into responses), and its
request id is bound into structlog's context for every line logged while handling it.
Routes are logged and counted by template (`/v1/contacts/{contact_id}`), never by raw
path: ids stay out of metric labels, and an unmatched path is just "unmatched".
Headers and bodies are never logged.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import structlog
from aiohttp import web

from seqd.api.routing import Handler
from seqd.appkeys import METRICS

log = structlog.get_logger("seqd.access")

REQUEST_ID_HEADER = "X-Request-Id"
# A caller's id is kept when it is short and plain (it ends up in logs and headers).
_SANE_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
# nginx's code for "the client closed the connection before the answer".
CLIENT_CLOSED = 499


def request_id(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _SANE_ID.match(given) else uuid.uuid4().hex


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request_id(request)
    started = time.perf_counter()
    status = 500
    structlog.contextvars.bind_contextvars(request_id=rid)
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = rid
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers[REQUEST_ID_HEADER] = rid
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    finally:
        seconds = time.perf_counter() - started
        route = route_of(request)
        request.app[METRICS].http_request(request.method, route, status, seconds)
        log.info(
            "http.request",
            method=request.method,
            route=route,
            status=status,
            duration_ms=round(seconds * 1000, 2),
        )
        structlog.contextvars.unbind_contextvars("request_id")
