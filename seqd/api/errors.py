"""One middleware turns every failure into problem+json; no input yields a bare 500."""

from __future__ import annotations

import asyncio

import structlog
from aiohttp import web

from seqd.api.access import route_of
from seqd.api.appkeys import MAX_BODY
from seqd.api.problems import problem
from seqd.api.routing import Handler
from seqd.errors import Invalid, SeqdError
from seqd.store.client import UNAVAILABLE
from seqd.store.replication import ReplicasBehind

log = structlog.get_logger(__name__)

_HTTP_CODES = {
    400: ("bad_request", "Malformed request"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("payload_too_large", "Request body too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
}


def problem_for(exc: SeqdError) -> web.Response:
    """The problem+json response of a domain error."""
    extra = dict(exc.extra)
    if isinstance(exc, Invalid):
        extra["errors"] = exc.errors
    return problem(exc.status, exc.code, exc.title, exc.detail, **extra)


@web.middleware
async def problems_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except SeqdError as exc:
        return problem_for(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code, title = _HTTP_CODES.get(exc.status, ("http_error", exc.reason))
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else ""
        if exc.status == 413:
            detail = f"the body exceeds {request.app[MAX_BODY]} bytes"
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return problem(exc.status, code, title, detail, headers=headers)
    except ReplicasBehind as exc:
        log.warning("store.replicas_behind", error=str(exc))
        return problem(
            503,
            "replicas_behind",
            "Not acknowledged by enough replicas",
            f"{exc}: the change is on the primary only; retrying it is safe",
            headers={"Retry-After": "1"},
        )
    except UNAVAILABLE as exc:
        log.warning("store.unavailable", error=type(exc).__name__)
        return problem(
            503,
            "unavailable",
            "The store is unavailable",
            "try again shortly",
            headers={"Retry-After": "1"},
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        # The route template, not the path: a path can carry a secret (/inbound/email/<secret>).
        log.exception("http.unhandled", method=request.method, route=route_of(request))
        return problem(500, "internal_error", "Internal error", "the error was logged")
