"""One skeleton for the daemon's background loops (dispatcher, outbox reader, webhook
deliverer, intake consumers): start, a liveness beat per turn, back-off after a failed
turn, a sleep that `wake()` and `stop()` cut short, and a bounded stop.

A worker hands the loop its `turn`: one round of work that returns how long to sleep
before the next (0: go again at once). A turn that raises is logged and followed by the
back-off's pause (`backoff.py`): the workers' state lives in Redis with leases, so
surviving and trying again is all a failed turn needs. `CancelledError` always propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

import structlog

from seqd.backoff import Backoff

log = structlog.get_logger(__name__)

# While a task stopped by cancel() runs on, it is cancelled again this often.
RECANCEL_SECONDS = 0.1
# What a task stopped by cancel() gets to end, when its owner has no grace of its own.
CANCEL_GRACE_SECONDS = 10.0


async def cancel_and_wait(
    task: asyncio.Task[Any], grace_seconds: float = CANCEL_GRACE_SECONDS
) -> bool:
    """Cancel `task` and wait for it to end, at most `grace_seconds`; True if it ended.

    A cancel can be lost (a library catching what it raises, asyncio.wait_for on Python
    3.11), and a task that ends only by cancellation then runs on: so it is cancelled
    again every RECANCEL_SECONDS, and one still running at the end is logged and left,
    so that a shutdown waiting for it ends all the same."""
    deadline = asyncio.get_running_loop().time() + grace_seconds
    while not task.done():
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            log.error("service.task_not_cancelled", task=task.get_name())
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(RECANCEL_SECONDS, left))
    return True


class Heart(Protocol):
    """What a background loop reports to (`health.Liveness`, or nothing in tests)."""

    def beat(self, name: str, deadline_seconds: float) -> None: ...

    def stopped(self, name: str) -> None: ...

    def on_drain(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Call `hook` when the process begins to stop; returns what forgets it."""
        ...


class Loop:
    """Runs `turn` until stopped; `name` is the loop's task name and its /readyz check.

    `deadline_seconds`: the longest a healthy turn (and the sleep after it) takes, past
    which /readyz reports the loop late. `idle_seconds`: the first pause after a failure.
    `finish`: run in the loop's task once it has stopped turning (inside stop's grace).
    """

    def __init__(
        self,
        name: str,
        turn: Callable[[], Awaitable[float]],
        *,
        idle_seconds: float,
        deadline_seconds: float,
        failed_event: str,
        liveness: Heart | None = None,
        finish: Callable[[], Awaitable[None]] | None = None,
        quiet_on_drain: bool = False,
    ) -> None:
        self.name = name
        self.turn = turn
        self.idle_seconds = idle_seconds
        self.deadline_seconds = deadline_seconds
        self.failed_event = failed_event
        self.liveness = liveness
        self.finish = finish
        # Stop turning as soon as the process begins to stop (liveness.on_drain), not when
        # its own stop() comes: the API's requests in flight and the other parts are waited
        # for first, and a dispatcher would go on claiming and sending all that while.
        self.quiet_on_drain = quiet_on_drain
        self._forget_drain: Callable[[], None] | None = None
        # Set by stop(): a turn in hand may check it to end early.
        self.stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._interruptible = False

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        self.stopping.clear()
        self._task = asyncio.create_task(self._run(), name=self.name)
        if self.quiet_on_drain and self.liveness is not None:
            self._forget_drain = self.liveness.on_drain(self.quiet)

    def quiet(self) -> None:
        """Stop turning (the turn in hand ends, then `finish` runs); stop() still waits."""
        self.stopping.set()
        self._wake.set()

    def wake(self) -> None:
        """End the current sleep now (new work is there)."""
        self._wake.set()

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A part of a turn that stop() cancels at once instead of waiting it out (a
        blocking read whose entries stay pending for another reader)."""
        if self.stopping.is_set():
            task = asyncio.current_task()
            if task is not None:
                task.cancel()
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    async def stop(
        self, grace_seconds: float, *, give_up: Callable[[], None] | None = None
    ) -> None:
        """Stop turning and wake the sleeper; wait up to `grace_seconds` for the turn in hand
        (and `finish`), then call `give_up` (if given) and wait as long again, then cancel."""
        self.quiet()
        if self._forget_drain is not None:
            self._forget_drain()
            self._forget_drain = None
        task, self._task = self._task, None
        try:
            if task is None:
                return
            if self._interruptible:
                task.cancel()
            done, _ = await asyncio.wait({task}, timeout=grace_seconds)
            if not done and give_up is not None:
                give_up()
                done, _ = await asyncio.wait({task}, timeout=grace_seconds)
            if not done:
                await cancel_and_wait(task, grace_seconds)
        finally:
            if self.liveness is not None:
                self.liveness.stopped(self.name)

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less when woken or stopped."""
        if seconds > 0 and not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), seconds)

    async def _run(self) -> None:
        backoff = Backoff(self.idle_seconds)
        while not self.stopping.is_set():
            if self.liveness is not None:
                self.liveness.beat(self.name, self.deadline_seconds)
            self._wake.clear()
            try:
                pause = await self.turn()
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(self.failed_event, loop=self.name)
                pause = backoff.failed()
            await self.sleep(pause)
        if self.finish is not None:
            await self.finish()
