"""Where every asyncio task of a loop is waiting: `kill -USR1 <pid>` writes it to stderr.

A daemon that does not exit after SIGTERM is almost always an asyncio task waiting on
something nobody completes; a thread dump (faulthandler, py-spy) shows only the event
loop idle in its selector. This walks each task's chain of awaits (coroutine, the
coroutine it awaits, ...) down to the future it is parked on, which is what names the
culprit. The tests' per-test timeout prints the same dump (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
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
            yield repr(awaitable)
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
