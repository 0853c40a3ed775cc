"""Operator endpoints at the server root, without auth: /healthz, /readyz, /metrics.

They sit outside `http.base_path` because probes and scrapers are configured once per
deployment, not per API version. /metrics moves to its own listener when
`metrics.listen` is set (`metrics_listener`), and is then absent from the API's port.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import structlog
from aiohttp import web

from seqd import health
from seqd.api.appkeys import STORE_WATCH
from seqd.api.problems import problem
from seqd.api.routing import route
from seqd.api.wire import respond
from seqd.appkeys import CONFIG, LIVENESS, METRICS, STORE
from seqd.config import Config
from seqd.loop import cancel_and_wait
from seqd.metrics import CONTENT_TYPE

log = structlog.get_logger(__name__)


class Health(msgspec.Struct, kw_only=True):
    status: str


class Ready(msgspec.Struct, kw_only=True, omit_defaults=True):
    status: str
    # check name (store, scripts, each running loop) -> "ok"
    checks: dict[str, str]
    # parts that do not decide readiness (each IMAP mailbox) -> their state; absent: none
    details: dict[str, str] = msgspec.field(default_factory=dict)


@route(
    "GET",
    "/healthz",
    summary="The process answers, and the store answered within redis.unhealthy_after_seconds",
    tag="operations",
    responses={200: Health},
    auth=False,
    root=True,
)
async def healthz(request: web.Request) -> web.Response:
    limit = request.app[CONFIG].redis.unhealthy_after_seconds
    down = request.app[STORE_WATCH].unreachable_for()
    if limit and down > limit:
        detail = (
            f"the store has not answered for {down:.0f} s "
            f"(redis.unhealthy_after_seconds = {limit:g})"
        )
        return problem(503, "store_unreachable", "Unhealthy", detail)
    return respond(Health(status="ok"))


async def watching_store(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: ping the store every PROBE_SECONDS for /healthz."""

    async def run() -> None:
        while True:
            await app[STORE_WATCH].probe(app[STORE])
            await asyncio.sleep(health.PROBE_SECONDS)

    task = asyncio.create_task(run(), name="seqd.store_watch")
    try:
        yield
    finally:
        await cancel_and_wait(task)


@route(
    "GET",
    "/readyz",
    summary="Redis answers, the scripts are loaded, every running loop beats in time",
    tag="operations",
    responses={200: Ready},
    auth=False,
    root=True,
)
async def readyz(request: web.Request) -> web.Response:
    result = await health.check(request.app[STORE], request.app[LIVENESS])
    if result.ready:
        return respond(Ready(status="ready", checks=result.checks, details=result.details))
    failing = "; ".join(f"{k}: {v}" for k, v in result.checks.items() if v != "ok")
    return problem(503, "not_ready", "Not ready", failing, headers={"Retry-After": "1"})


def _on_api_port(config: Config) -> bool:
    return config.metrics.enabled and config.metrics.listen is None


@route(
    "GET",
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    tag="operations",
    responses={200: None},
    auth=False,
    root=True,
    when=_on_api_port,
    media={200: "text/plain"},
)
async def metrics_page(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    await metrics.refresh(request.app[STORE])
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


async def metrics_listener(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: /metrics alone on `metrics.listen` (e.g. 127.0.0.1:9100)."""
    config = app[CONFIG]
    assert config.metrics.listen is not None
    host, port = split_listen(config.metrics.listen)
    side = web.Application()
    side[METRICS] = app[METRICS]
    side[STORE] = app[STORE]
    side.router.add_get("/metrics", metrics_page)
    runner = web.AppRunner(side, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        # SO_REUSEPORT: the workers of `seqd serve --workers N` each listen on it (the
        # kernel only lets processes of the same user share a port this way).
        await web.TCPSite(runner, host, port, reuse_port=True).start()
        log.info("metrics.listening", host=host, port=port)
        yield
    finally:
        await runner.cleanup()
