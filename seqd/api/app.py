"""The aiohttp application factory."""

from __future__ import annotations

from aiohttp import web

# Importing a resource module registers its routes.
from seqd.api import (  # noqa: F401
    contact_events,
    contacts,
    enrollment_batch,
    enrollments,
    events,
    exports,
    forecast,
    inbound,
    openapi,
    ops,
    preview,
    schedules,
    senders,
    sequences,
    settings,
    suppressions,
    ui,
    unsubscribe,
    webhooks,
)
from seqd.api.access import access_middleware
from seqd.api.appkeys import COALESCER, MAX_BODY, OPENAPI, RATE_LEASES, STORE_WATCH
from seqd.api.auth import auth_middleware
from seqd.api.coalesce import Coalescer
from seqd.api.errors import problems_middleware
from seqd.api.idempotency import idempotency_middleware
from seqd.api.ratelimit import add_headers, ratelimit_middleware
from seqd.api.routing import ROUTES
from seqd.appkeys import CONFIG, LIVENESS, METRICS, POLICY, STORE
from seqd.config import Config
from seqd.health import Liveness, StoreWatch
from seqd.metrics import Metrics
from seqd.store.db import Store
from seqd.timing.policy import Policy


async def _drain(app: web.Application) -> None:
    await app[COALESCER].drain()


def create_app(config: Config, store: Store) -> web.Application:
    app = web.Application(
        client_max_size=config.http.max_body_bytes,
        # access first: the outermost, so it logs and counts every request once.
        middlewares=[
            access_middleware,
            problems_middleware,
            auth_middleware,
            ratelimit_middleware,
            idempotency_middleware,
        ],
    )
    app.on_response_prepare.append(add_headers)
    app[CONFIG] = config
    app[STORE] = store
    app[MAX_BODY] = config.http.max_body_bytes
    app[METRICS] = Metrics()
    app[LIVENESS] = Liveness()
    app[STORE_WATCH] = StoreWatch()
    app[RATE_LEASES] = {}
    app[POLICY] = Policy(config)
    app[COALESCER] = Coalescer(store, app[POLICY])
    app.on_cleanup.append(_drain)
    base = config.http.base_path
    routes = [r for r in ROUTES if r.served(config)]
    for r in routes:
        app.router.add_route(r.method, r.full_path(base), r.handler)
    app[OPENAPI] = openapi.build(base, routes)
    if config.ui.enabled:
        ui.setup(app)
    if config.metrics.enabled and config.metrics.listen is not None:
        app.cleanup_ctx.append(ops.metrics_listener)
    if config.redis.unhealthy_after_seconds:
        app.cleanup_ctx.append(ops.watching_store)
    return app
