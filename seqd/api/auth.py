"""API key authentication: `Authorization: Bearer <key>` or `X-Api-Key: <key>`."""

from __future__ import annotations

from aiohttp import web

from seqd.api.appkeys import KEY_DIGEST, TENANT
from seqd.api.routing import Handler, requires_auth
from seqd.appkeys import STORE
from seqd.errors import Unauthorized
from seqd.store.tenants import hash_key

# What a key that cannot be one of ours is taken for: it authenticates no tenant.
WRONG_KEY = "-"


def presented_key(request: web.Request) -> str | None:
    """The key as sent; a header that is not printable ASCII (aiohttp hands bytes that are
    not UTF-8 on as surrogates) holds no key seqd issued, so it counts as a wrong key."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        key = value.strip()
    else:
        key = request.headers.get("X-Api-Key", "").strip()
    if not key:
        return None
    return key if key.isascii() and key.isprintable() else WRONG_KEY


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    match_info = request.match_info
    target = getattr(match_info, "handler", None)
    if match_info.http_exception is not None or not requires_auth(target):
        return await handler(request)
    key = presented_key(request)
    if key is None:
        raise Unauthorized("send the API key as 'Authorization: Bearer <key>' or 'X-Api-Key'")
    tenant = await request.app[STORE].tenants.authenticate(key)
    if tenant is None:
        raise Unauthorized("the API key is not valid (revoked or mistyped)")
    request[TENANT] = tenant
    request[KEY_DIGEST] = hash_key(key)
    return await handler(request)


def tenant_of(request: web.Request) -> str:
    return str(request[TENANT])
