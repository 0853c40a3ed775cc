"""The deliverer's lanes: a sender goes on to the next delivery without waiting for its
outcome's write, and an outcome is written only after its request was answered, so a
crash or a failed write before the write loses no delivery (it is sent again after the
lease). Real receiver, real Redis; the store's outcome write is held back or failed to
stand for a slow or lost Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from seqd.store.db import Store
from seqd.store.deliveries import DeliveryFinish
from tests.webhookutil import (
    Clock,
    Pipeline,
    Receiver,
    emit,
    endpoint,
    pending,
    pipeline,
    receiving,
    settings,
    until,
)


def hold_writes(store: Store) -> asyncio.Event:
    """Outcome writes wait until the returned event is set."""
    finish_many = store.deliveries.finish_many
    release = asyncio.Event()

    async def held(finishes: Sequence[DeliveryFinish]) -> list[Any]:
        await release.wait()
        return await finish_many(finishes)

    store.deliveries.finish_many = held  # type: ignore[method-assign]
    return release


async def queued(store: Store, p: Pipeline, rx: Receiver, n: int, delay: float = 0.0) -> str:
    """An endpoint at `rx` answering after `delay` s, and n deliveries of it read and due;
    returns the endpoint's id."""
    ep, _ = await endpoint(store, rx.url())
    rx.delay["/hook"] = delay
    for _ in range(n):
        await emit(store)
    await p.read()
    return ep.id


async def test_a_sender_goes_on_before_its_outcome_is_written(store: Store) -> None:
    config = settings(concurrency_per_endpoint=1)
    async with receiving() as rx, pipeline(store, config) as p:
        eid = await queued(store, p, rx, 3)
        release = hold_writes(store)
        assert await p.deliverer.run_once() == 3
        # One slot, and no outcome written yet: it sent all three anyway, one at a time.
        await until(lambda: len(rx.requests) == 3)
        assert len(await pending(store, eid)) == 3, "nothing recorded before the write"
        release.set()
        await p.deliverer.drain()
        assert await pending(store, eid) == []
        assert await store.deliveries.next_due() is None
        assert p.deliverer.in_flight == {} and p.deliverer.lanes == {}
        assert len({r.id for r in rx.requests}) == 3


async def test_a_stop_before_the_outcome_write_sends_it_again_after_the_lease(
    store: Store,
) -> None:
    clock = Clock()
    config = settings(timeout_seconds=0.3, lease_seconds=5.0)
    async with receiving() as rx:
        ep, _ = await endpoint(store, rx.url())
        await emit(store)
        async with pipeline(store, config, clock) as first:
            await first.read()
            hold_writes(store)
            first.deliverer.start()
            await until(lambda: len(rx.requests) == 1)
            # The process stops (or dies) with the 2xx answered but its outcome unwritten.
            await first.deliverer.stop()
        [still] = await pending(store, ep.id)
        assert still["a"] == "0", "not marked done (nor even attempted) without the write"
        del store.deliveries.finish_many  # the instance's stand-in: writes work again
        async with pipeline(store, config, clock) as second:
            assert await second.step() == 0, "claimed until its lease ends"
            clock.advance(5.001)
            assert await second.step() == 1
        assert [r.id for r in rx.requests] == [rx.requests[0].id] * 2
        assert await pending(store, ep.id) == []


async def test_a_failed_outcome_write_frees_the_slot_and_the_lease_returns_it(
    store: Store,
) -> None:
    clock = Clock()
    async with receiving() as rx, pipeline(store, clock=clock) as p:
        ep, _ = await endpoint(store, rx.url())
        await emit(store)
        await p.read()
        finish_many = store.deliveries.finish_many

        async def lost(finishes: Sequence[DeliveryFinish]) -> list[Any]:
            raise ConnectionError("redis went away")

        store.deliveries.finish_many = lost  # type: ignore[method-assign]
        assert await p.step() == 1
        assert p.deliverer.in_flight == {} and p.deliverer.lanes == {}
        store.deliveries.finish_many = finish_many  # type: ignore[method-assign]
        assert len(await pending(store, ep.id)) == 1
        clock.advance(5.001)
        assert await p.step() == 1
        assert len(rx.requests) == 2 and await pending(store, ep.id) == []


async def test_a_claim_waiting_too_long_for_its_slot_is_left_to_its_lease(
    store: Store,
) -> None:
    """Sent after `lease - timeout` in the lane, a request could outlast its lease and
    race the next claimer: such a delivery is not sent, its lease brings it back."""
    clock = Clock()
    config = settings(concurrency_per_endpoint=1, timeout_seconds=1.0, lease_seconds=1.2)
    async with receiving() as rx, pipeline(store, config, clock) as p:
        eid = await queued(store, p, rx, 3, delay=0.5)
        assert await p.step() == 3
        assert len(rx.requests) == 1, "the two behind the slow first one were left"
        assert len(await pending(store, eid)) == 2 and p.deliverer.in_flight == {}
        rx.delay["/hook"] = 0.0
        clock.advance(1.201)
        assert await p.step() == 2
        assert len({r.id for r in rx.requests}) == 3
        assert await pending(store, eid) == []


async def test_lanes_share_the_process_cap(store: Store) -> None:
    config = settings(max_in_flight=1)
    async with receiving() as rx, pipeline(store, config) as p:
        await endpoint(store, rx.url("/a"))
        await endpoint(store, rx.url("/b"))
        for _ in range(3):
            await emit(store)
        await p.read()
        busiest = 0

        async def watch() -> None:
            nonlocal busiest
            while True:
                busiest = max(busiest, p.deliverer.sending)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        p.deliverer.start()
        await until(lambda: len(rx.requests) == 6)
        await p.deliverer.stop()
        watcher.cancel()
        assert busiest == 1
        assert len(rx.at("/a")) == 3 and len(rx.at("/b")) == 3
        assert await store.deliveries.next_due() is None


async def test_a_receivers_cookies_are_never_sent_back(store: Store) -> None:
    from aiohttp import web

    from tests.conftest import free_port

    cookies: list[str | None] = []

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        cookies.append(request.headers.get("Cookie"))
        response = web.Response(status=204)
        response.set_cookie("session", "from-the-receiver")
        return response

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with pipeline(store, settings(concurrency_per_endpoint=1)) as p:
            # A host name: the cookie jar keeps no cookies of IP-address hosts anyway.
            await endpoint(store, f"http://localhost:{port}/hook")
            for _ in range(2):
                await emit(store)
                assert await p.step() == 1
        assert cookies == [None, None]
    finally:
        await runner.cleanup()


async def test_a_stop_out_of_time_leaves_nothing_held_and_the_lease_returns_the_rest(
    store: Store,
) -> None:
    clock = Clock()
    config = settings(concurrency_per_endpoint=1, timeout_seconds=0.3, lease_seconds=5.0)
    async with receiving() as rx, pipeline(store, config, clock) as p:
        eid = await queued(store, p, rx, 3, delay=1.0)
        p.deliverer.start()
        await until(lambda: len(rx.requests) == 1)
        await p.deliverer.stop()
        assert p.deliverer.in_flight == {} and p.deliverer.lanes == {}
        assert len(await pending(store, eid)) == 3
        rx.delay["/hook"] = 0.0
        clock.advance(5.001)
        assert await p.step() == 3
        assert await pending(store, eid) == []
