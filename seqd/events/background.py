"""The outbox reader and the webhook deliverer as a background part of `seqd serve`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from seqd.config import Config
from seqd.events.deliverer import Deliverer, DeliveryObserver, session
from seqd.events.reader import Reader
from seqd.loop import Heart
from seqd.store.db import Store


@contextlib.asynccontextmanager
async def part(
    config: Config, store: Store, *, liveness: Heart, observer: DeliveryObserver
) -> AsyncIterator[None]:
    """Start both on enter; on exit stop reading, then let requests in flight finish."""
    if not config.webhooks.enabled:
        yield
        return
    http = session(config.webhooks)
    reader = Reader(store, config.webhooks, liveness=liveness)
    deliverer = Deliverer(store, config.webhooks, http, observer=observer, liveness=liveness)
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
