"""The outbox reader and the webhook deliverer as a background part of `seqd serve`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from seqd.appkeys import LIVENESS, METRICS, STORE
from seqd.config import Config
from seqd.events.deliverer import Deliverer, session
from seqd.events.reader import Reader


def part(
    config: Config,
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    """Start both on enter; on exit stop reading, then let requests in flight finish."""

    @contextlib.asynccontextmanager
    async def running(app: web.Application) -> AsyncIterator[None]:
        if not config.webhooks.enabled:
            yield
            return
        store = app[STORE]
        http = session(config.webhooks)
        reader = Reader(store, config.webhooks, liveness=app.get(LIVENESS))
        deliverer = Deliverer(
            store,
            config.webhooks,
            http,
            observer=app.get(METRICS),
            liveness=app.get(LIVENESS),
        )
        reader.start()
        deliverer.start()
        try:
            yield
        finally:
            try:
                await reader.stop()
                await deliverer.stop()
            finally:
                await http.close()

    return running
