"""Send slots: at most `size` sends of a channel in flight at once, across every lane.

`asyncio.Semaphore` would do, but its acquire and release are several Python calls and a
coroutine per send: 6 % of the dispatcher's instructions per step in a burst (callgrind).
Here a free slot is taken with a comparison and a decrement; only a full channel waits,
first come first served, and a slot given back goes straight to the first waiter.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Slots:
    __slots__ = ("_waiters", "free")

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_take(self) -> bool:
        """Take a free slot if there is one. (None is free while someone waits: `give`
        hands a slot to a waiter before it counts one free.)"""
        if self.free > 0:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        if self.try_take():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            # Handed a slot as it was cancelled: pass the slot on. (A waiter cancelled
            # before that is skipped by `give`.)
            if not waiter.cancelled():
                self.give()
            raise

    def give(self) -> None:
        """Give a slot back: to the first one waiting, else to the free count."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1
