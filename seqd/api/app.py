"""The aiohttp application factory."""

from __future__ import annotations

from aiohttp import web

# Importing a resource module registers its routes.
from seqd.api import contacts, enrollments, openapi, sequences  # noqa: F401
from seqd.api.appkeys import CONFIG, MAX_BODY, OPENAPI, STORE
from seqd.api.auth import auth_middleware
from seqd.api.errors import problems_middleware
from seqd.api.routing import ROUTES
from seqd.config import Config
from seqd.store.db import Store


def create_app(config: Config, store: Store) -> web.Application:
    app = web.Application(
        client_max_size=config.http.max_body_bytes,
        middlewares=[problems_middleware, auth_middleware],
    )
    app[CONFIG] = config
    app[STORE] = store
    app[MAX_BODY] = config.http.max_body_bytes
    base = config.http.base_path
    for r in ROUTES:
        app.router.add_route(r.method, base + r.path, r.handler)
    app[OPENAPI] = openapi.build(base)
    return app
