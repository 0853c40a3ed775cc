"""Send slots: a channel's sends in flight never exceed its size, waiters go in order, and a
cancelled waiter neither keeps nor loses a slot."""

from __future__ import annotations

import asyncio

import pytest

from seqd.engine.slots import Slots


async def test_no_more_in_flight_than_the_size_and_waiters_served_in_order() -> None:
    slots = Slots(2)
    in_flight, peak, order = 0, 0, []

    async def send(n: int) -> None:
        nonlocal in_flight, peak
        if not slots.try_take():
            await slots.take()
        try:
            in_flight += 1
            peak = max(peak, in_flight)
            order.append(n)
            await asyncio.sleep(0.001 * (n % 3))
            in_flight -= 1
        finally:
            slots.give()

    await asyncio.gather(*(send(n) for n in range(20)))
    assert peak == 2
    assert order == list(range(20))  # first come, first served
    assert slots.free == 2


async def test_a_free_slot_is_not_taken_past_someone_waiting() -> None:
    slots = Slots(1)
    assert slots.try_take()
    waiter = asyncio.ensure_future(slots.take())
    await asyncio.sleep(0)
    slots.give()  # handed to the waiter, not to the free count
    assert not slots.try_take()
    await waiter
    slots.give()
    assert slots.try_take()


async def test_a_waiter_cancelled_while_waiting_takes_no_slot() -> None:
    slots = Slots(1)
    assert slots.try_take()
    waiter = asyncio.ensure_future(slots.take())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    slots.give()
    assert slots.free == 1 and slots.try_take()


async def test_a_waiter_cancelled_after_it_was_handed_a_slot_passes_it_on() -> None:
    slots = Slots(1)
    assert slots.try_take()
    first = asyncio.ensure_future(slots.take())
    second = asyncio.ensure_future(slots.take())
    await asyncio.sleep(0)
    slots.give()  # to `first`, which is cancelled before it runs
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)  # the slot went on to `second`
    assert slots.free == 0
    slots.give()
    assert slots.free == 1
