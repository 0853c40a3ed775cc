"""Where every asyncio task of a loop is waiting: `kill -USR1 <pid>` writes it to stderr.

A daemon that does not exit after SIGTERM is almost always an asyncio task waiting on
something nobody completes; a thread dump (faulthandler, py-spy) shows only the event
loop idle in its selector. This walks each task's chain of awaits (coroutine, the
coroutine it awaits, ...) down to the future it is parked on, which is what names the
culprit. The tests' per-test timeout prints the same dump (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import gc
import linecache
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any, TextIO


def _frames(awaitable: Any) -> Iterator[FrameType | str]:
    """The frames of a chain of awaits, outermost first, then what the last one awaits
    (a future, a task) as text."""
    seen = 0
    while awaitable is not None and seen < 200:
        seen += 1
        frame = next(
            (
                getattr(awaitable, name)
                for name in ("cr_frame", "gi_frame", "ag_frame")
                if getattr(awaitable, name, None) is not None
            ),
            None,
        )
        if frame is None:
            inner = _asend_target(awaitable)
            if inner is not None:  # an async generator's __anext__() (asend): go into it
                awaitable = inner
                continue
            yield repr(_future_of(awaitable))
            return
        yield frame
        awaitable = next(
            (
                getattr(awaitable, name)
                for name in ("cr_await", "gi_yieldfrom", "ag_await")
                if getattr(awaitable, name, None) is not None
            ),
            None,
        )


def _asend_target(awaitable: Any) -> Any:
    """The async generator an `async_generator_asend` (what `__anext__()` returns, as
    an async fixture's or context manager's) runs; it exposes it to the collector only."""
    if type(awaitable).__name__ not in ("async_generator_asend", "async_generator_athrow"):
        return None
    return next((r for r in gc.get_referents(awaitable) if hasattr(r, "ag_frame")), None)


def _future_of(awaitable: Any) -> Any:
    """The future behind a C `FutureIter` (what `await future` leaves in `cr_await`), whose
    repr names its state and callbacks (a Task's, its name)."""
    if type(awaitable).__name__ != "FutureIter":
        return awaitable
    return next((r for r in gc.get_referents(awaitable) if asyncio.isfuture(r)), awaitable)


def task_stacks(loop: asyncio.AbstractEventLoop) -> str:
    """Each pending task of `loop`: its name and the line each coroutine in its chain of
    awaits is at."""
    lines: list[str] = []
    tasks = sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name())
    for task in tasks:
        lines.append(f"task {task.get_name()!r}:")
        for part in _frames(task.get_coro()):
            if isinstance(part, str):
                lines.append(f"    awaiting {part}")
                continue
            code = part.f_code
            source = linecache.getline(code.co_filename, part.f_lineno).strip()
            lines.append(f'  File "{code.co_filename}", line {part.f_lineno}, in {code.co_name}')
            if source:
                lines.append(f"    {source}")
    return "\n".join([f"{len(tasks)} asyncio tasks", *lines, ""])


def dump(loop: asyncio.AbstractEventLoop, out: TextIO | None = None) -> None:
    """Write `task_stacks` to `out` (stderr) in one write, so it is not cut into by logs."""
    out = out or sys.stderr
    out.write(task_stacks(loop))
    out.flush()
