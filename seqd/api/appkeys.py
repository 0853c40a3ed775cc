"""Typed keys for what the aiohttp application and each request carry."""

from __future__ import annotations

from aiohttp import web

from seqd.api.coalesce import Coalescer
from seqd.config import Config
from seqd.health import Liveness
from seqd.metrics import Metrics
from seqd.store.db import Store
from seqd.timing.policy import Policy

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
OPENAPI = web.AppKey("openapi", dict)
MAX_BODY = web.AppKey("max_body", int)
# Counters and gauges of this app (seqd.metrics) and the heartbeats of its loops.
METRICS = web.AppKey("metrics", Metrics)
LIVENESS = web.AppKey("liveness", Liveness)
# Requests this process took ahead of use from each API key's limit (seqd/api/ratelimit.py).
RATE_LEASES = web.AppKey("rate_leases", dict)
# Single enrollment requests grouped per sequence and turn of the loop (seqd/api/coalesce.py).
COALESCER = web.AppKey("coalescer", Coalescer)
# The tenants' time rules (quiet hours, default zones) from the config.
POLICY = web.AppKey("policy", Policy)
# Per request: the tenant the API key belongs to.
TENANT = web.RequestKey("tenant", str)
# Per request: sha256 of the API key presented (what the rate limit counts by).
KEY_DIGEST = web.RequestKey("key_digest", str)
# Per request: the RateLimit-* headers every answer to it carries (seqd/api/ratelimit.py).
RATE_HEADERS = web.RequestKey("rate_headers", dict)
