"""Consumer groups' housekeeping: forgetting the consumers of processes that are gone.

Every seqd process reads the outbox and the intake stream as a consumer named after
itself (host, pid, a random suffix), so a group gains a consumer per process start. One
that stops cleanly removes itself; one that was killed stays listed, holding nothing once
the live ones have taken its entries over (after the lease). `prune` removes those:
consumers idle longer than the caller says, with nothing pending. A live consumer is
never idle that long (every read attempt counts on Redis 7.2+ and Valkey); on an older
Redis one that merely had nothing to read may go, and comes back by itself at its next
read, holding nothing either way.
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import Any

from redis.exceptions import ResponseError

from seqd.store.client import Client


def consumer_name() -> str:
    """This process's name in a consumer group: host, pid and a random suffix (a pid is
    reused after a restart)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


# How often a reader looks for consumers to forget, in ms.
PRUNE_EVERY_MS = 60_000


def dead_after_ms(lease_ms: int) -> int:
    """Idle time after which a consumer holding nothing is taken for gone: well past the
    lease (after which its entries were taken over) and never under ten minutes."""
    return max(10 * lease_ms, 600_000)


async def prune(client: Client, stream: str, group: str, idle_ms: int) -> list[str]:
    """Delete the consumers of `group` on `stream` idle over `idle_ms` with nothing
    pending; the names deleted."""
    try:
        consumers: list[dict[str, Any]] = await client.xinfo_consumers(stream, group)
    except ResponseError:  # no such stream or group (yet)
        return []
    gone = [
        str(c["name"])
        for c in consumers
        if int(c.get("pending", 0)) == 0 and int(c.get("idle", 0)) > idle_ms
    ]
    if gone:
        pipe = client.pipeline(transaction=False)
        for name in gone:
            pipe.xgroup_delconsumer(stream, group, name)
        await pipe.execute()
    return gone


async def drop(client: Client, stream: str, group: str, consumer: str) -> bool:
    """Remove `consumer` if it holds nothing (a clean stop); whether it was removed."""
    pending = await client.xpending_range(stream, group, "-", "+", 1, consumername=consumer)
    if pending:
        return False
    await client.xgroup_delconsumer(stream, group, consumer)
    return True
