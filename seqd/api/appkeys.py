"""Typed keys for what the aiohttp application and each request carry, beyond the ones the
background parts share (`seqd/appkeys.py`)."""

from __future__ import annotations

from aiohttp import web

from seqd.api.coalesce import Coalescer
from seqd.health import StoreWatch

OPENAPI = web.AppKey("openapi", dict)
MAX_BODY = web.AppKey("max_body", int)
# When the store last answered (/healthz).
STORE_WATCH = web.AppKey("store_watch", StoreWatch)
# Requests this process took ahead of use from each API key's limit (seqd/api/ratelimit.py).
RATE_LEASES = web.AppKey("rate_leases", dict)
# Single enrollment requests grouped per sequence and turn of the loop (seqd/api/coalesce.py).
COALESCER = web.AppKey("coalescer", Coalescer)
# Per request: the tenant the API key belongs to.
TENANT = web.RequestKey("tenant", str)
# Per request: sha256 of the API key presented (what the rate limit counts by).
KEY_DIGEST = web.RequestKey("key_digest", str)
# Per request: the RateLimit-* headers every answer to it carries (seqd/api/ratelimit.py).
RATE_HEADERS = web.RequestKey("rate_headers", dict)
