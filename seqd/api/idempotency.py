"""`Idempotency-Key` on authenticated POSTs: a retried request gets the first one's answer.

The response to a POST that carries the header is stored per (tenant, key) for
`http.idempotency_ttl_seconds`. The same key again with the same request (method, path
and body, by SHA-256) replays it, marked `Idempotent-Replayed: true`; with a different
request it is a 422; while the first is still running, a 409. Answers below 500 are kept
(a 4xx is the request's answer too); a 5xx or a crash frees the key so a retry runs again.

Registered inside the auth middleware: it needs the tenant, and a request without a valid
key never touches the store.
"""

from __future__ import annotations

import asyncio
import hashlib

from aiohttp import web

from seqd.api.appkeys import TENANT
from seqd.api.errors import problem_for
from seqd.api.routing import Handler
from seqd.appkeys import CONFIG, STORE
from seqd.errors import Conflict, Invalid, SeqdError
from seqd.store.idempotency import Claim, IdempotencyKeys

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255


def fingerprint(method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256(f"{method} {path}\n".encode())
    digest.update(body)
    return digest.hexdigest()


def _check(key: str) -> None:
    if not (0 < len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable()):
        raise Invalid.field(f"header.{HEADER}", f"1 to {MAX_KEY_LENGTH} printable ASCII characters")


@web.middleware
async def idempotency_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    key = request.headers.get(HEADER)
    if key is None or request.method != "POST" or TENANT not in request:
        return await handler(request)
    _check(key)
    config = request.app[CONFIG].http
    store = IdempotencyKeys(request.app[STORE])
    fp = fingerprint(request.method, request.path_qs, await request.read())
    digest = hashlib.sha256(key.encode()).hexdigest()
    found = await store.claim(request[TENANT], digest, fp, config.idempotency_lock_seconds)
    if not isinstance(found, Claim):
        if found.fp != fp:
            raise Invalid.field(
                f"header.{HEADER}",
                "this key was used with a different request (method, path or body)",
            )
        if not found.status:
            raise Conflict(f"the request with this {HEADER} is still being processed")
        return web.Response(
            status=found.status,
            body=found.body.encode(),
            headers={"Content-Type": found.content_type, REPLAYED: "true"},
        )
    claim = found
    try:
        try:
            response = await handler(request)
        except SeqdError as exc:
            response = problem_for(exc)
    except BaseException:
        await asyncio.shield(store.release(claim))
        raise
    body = (response.body or b"") if isinstance(response, web.Response) else None
    if response.status >= 500 or not isinstance(body, bytes):
        await store.release(claim)
        return response
    try:
        text = body.decode()
    except UnicodeDecodeError:
        await store.release(claim)
        return response
    content_type = response.headers.get("Content-Type", "application/octet-stream")
    await store.answer(
        claim, fp, response.status, content_type, text, config.idempotency_ttl_seconds
    )
    return response
