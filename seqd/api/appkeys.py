"""Typed keys for what the aiohttp application and each request carry."""

from __future__ import annotations

from aiohttp import web

from seqd.config import Config
from seqd.store.db import Store

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Store)
OPENAPI = web.AppKey("openapi", dict)
MAX_BODY = web.AppKey("max_body", int)
# Per request: the tenant the API key belongs to.
TENANT = web.RequestKey("tenant", str)
