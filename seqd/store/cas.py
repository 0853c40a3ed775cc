"""Compare-and-set of a tenant's JSON record (schedules, senders): read it, write it back
changed only if it is still what was read, read again when another writer got first."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from seqd.errors import Conflict, NotFound
from seqd.store.scripts import ScriptError

T = TypeVar("T")
RETRIES = 10


async def swap(
    read: Callable[[], Awaitable[str]], write: Callable[[str], Awaitable[T]], noun: str
) -> tuple[str, T]:
    """`write(raw)` the record `read()` gave, until no other writer came between the two:
    (the record replaced, what `write` returned). Its script's NOT_FOUND is a 404 naming
    `noun`, and `RETRIES` conflicts in a row a 409."""
    for _ in range(RETRIES):
        raw = await read()
        try:
            return raw, await write(raw)
        except ScriptError as exc:
            if exc.code == "NOT_FOUND":
                raise NotFound(f"no {noun}", field="id") from None
            if exc.code != "CONFLICT":
                raise
    raise Conflict(f"{noun} keeps changing; try again")
