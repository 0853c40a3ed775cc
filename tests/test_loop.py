"""The background loop skeleton (seqd/loop.py): beats, back-off, wake, a bounded stop."""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from seqd.health import Liveness
from seqd.loop import Loop, cancel_and_wait


class Turns:
    """A turn that records each call and answers from a script of results."""

    def __init__(self, *results: float | BaseException) -> None:
        self.results = list(results)
        self.calls = 0
        self.called = asyncio.Event()

    async def __call__(self) -> float:
        self.calls += 1
        self.called.set()
        result = self.results.pop(0) if len(self.results) > 1 else self.results[0]
        if isinstance(result, BaseException):
            raise result
        return result

    async def wait_calls(self, n: int) -> None:
        while self.calls < n:
            self.called.clear()
            await self.called.wait()


def _loop(turn: Turns, liveness: Liveness | None = None, idle: float = 60.0) -> Loop:
    return Loop(
        "test",
        turn,
        idle_seconds=idle,
        deadline_seconds=5,
        failed_event="test.failed",
        liveness=liveness,
    )


async def test_stop_wakes_the_sleeper_and_the_heart_forgets_the_loop() -> None:
    liveness = Liveness()
    turn = Turns(3600.0)
    loop = _loop(turn, liveness)
    loop.start()
    await turn.wait_calls(1)
    assert liveness.running() == ["test"]
    started = time.monotonic()
    await loop.stop(grace_seconds=30)
    assert time.monotonic() - started < 1, "stop waited out the sleep"
    assert liveness.running() == [] and not loop.running
    assert turn.calls == 1


async def test_wake_ends_the_sleep_and_a_zero_hint_goes_again_at_once() -> None:
    turn = Turns(0.0, 0.0, 3600.0)
    loop = _loop(turn)
    loop.start()
    await turn.wait_calls(3)
    loop.wake()
    await turn.wait_calls(4)
    await loop.stop(grace_seconds=1)


async def test_a_failed_turn_is_logged_and_retried_after_the_backoff() -> None:
    turn = Turns(RuntimeError("redis away"), RuntimeError("still away"), 3600.0)
    loop = _loop(turn, idle=0.01)
    with structlog.testing.capture_logs() as logs:
        loop.start()
        await asyncio.wait_for(turn.wait_calls(3), 5)
    await loop.stop(grace_seconds=1)
    failed = [e for e in logs if e["event"] == "test.failed"]
    assert [e["loop"] for e in failed] == ["test", "test"]


async def test_cancelled_error_is_never_swallowed() -> None:
    turn = Turns(asyncio.CancelledError(), 0.0)
    loop = _loop(turn, idle=0.01)
    loop.start()
    task = loop._task
    assert task is not None
    await asyncio.wait({task}, timeout=5)
    assert task.cancelled() and turn.calls == 1


async def test_a_stuck_turn_gets_the_grace_then_give_up_then_is_cancelled() -> None:
    began = asyncio.Event()
    release = asyncio.Event()
    gave_up: list[bool] = []

    async def stuck() -> float:
        began.set()
        await asyncio.Event().wait()
        return 0.0

    loop = Loop("test", stuck, idle_seconds=1, deadline_seconds=5, failed_event="x")
    loop.start()
    task = loop._task
    await began.wait()
    await loop.stop(grace_seconds=0.05, give_up=lambda: gave_up.append(True))
    assert gave_up == [True] and task is not None and task.cancelled()

    # A turn that ends once it is given up on finishes without being cancelled.
    async def until_released() -> float:
        began.set()
        await release.wait()
        return 0.0

    began.clear()
    loop = Loop("test", until_released, idle_seconds=1, deadline_seconds=5, failed_event="x")
    loop.start()
    task = loop._task
    await began.wait()
    await loop.stop(grace_seconds=0.05, give_up=release.set)
    assert task is not None and task.done() and not task.cancelled()


async def test_an_interruptible_wait_is_cancelled_at_once_by_stop() -> None:
    entered = asyncio.Event()

    async def read() -> float:
        with loop.interruptible():
            entered.set()
            await asyncio.Event().wait()
        return 0.0

    loop = Loop("test", read, idle_seconds=1, deadline_seconds=5, failed_event="x")
    loop.start()
    await entered.wait()
    started = time.monotonic()
    await loop.stop(grace_seconds=30)
    assert time.monotonic() - started < 1


async def test_a_task_that_loses_a_cancel_is_cancelled_again() -> None:
    """A cancel a library loses (asyncio.wait_for on 3.11) leaves a `while True` task
    running: it is cancelled again until it ends."""
    lost = 0

    async def forever() -> None:
        nonlocal lost
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if lost == 0:  # the first cancel is lost, as wait_for loses one
                    lost += 1
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    continue
                raise

    task = asyncio.create_task(forever())
    await asyncio.sleep(0)
    started = time.monotonic()
    assert await cancel_and_wait(task, 5.0)
    assert task.cancelled() and lost == 1
    assert time.monotonic() - started < 1.0


async def test_a_task_that_never_ends_is_left_after_the_grace() -> None:
    stop = asyncio.Event()

    async def stubborn() -> None:
        while not stop.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    started = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        assert not await cancel_and_wait(task, 0.3)
    assert 0.3 <= time.monotonic() - started < 2.0
    assert {"event": "service.task_not_cancelled", "task": "stubborn", "log_level": "error"} in logs
    stop.set()  # the test's own end: it ends on the next cancel
    task.cancel()
    await task


async def test_a_quiet_on_drain_loop_stops_turning_when_the_process_begins_to_stop() -> None:
    """SIGTERM's `Liveness.drain()` ends a dispatcher's turns at once (its `finish` runs),
    before its own stop() comes; a loop that did not ask for it turns on until then."""
    liveness = Liveness()
    finished = asyncio.Event()

    async def finish() -> None:
        finished.set()

    quiet_turn, busy_turn = Turns(0.001), Turns(0.001)
    quiet = Loop("quiet", quiet_turn, idle_seconds=60, deadline_seconds=5,
                 failed_event="test.failed", liveness=liveness, finish=finish,
                 quiet_on_drain=True)  # fmt: skip
    busy = _loop(busy_turn, liveness)
    quiet.start()
    busy.start()
    await quiet_turn.wait_calls(3)
    liveness.drain()
    await asyncio.wait_for(finished.wait(), 5)
    calls = quiet_turn.calls
    await busy_turn.wait_calls(busy_turn.calls + 20)
    assert quiet_turn.calls == calls, "the quiet loop turned after the drain began"
    await quiet.stop(grace_seconds=1)
    await busy.stop(grace_seconds=1)
    assert not quiet.running and liveness.running() == []
    # A loop stopped and started again is not quieted by a drain hook left behind.
    quiet.start()
    await quiet_turn.wait_calls(calls + 3)
    await quiet.stop(grace_seconds=1)
