"""The store's Redis clients: one server's, or a cluster's; how they connect, pack and retry.

`Store.client` is either kind (`Client`); code that needs a second client with other
options (the intake's reader) asks `derive` for one, so both kinds get the same treatment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import AbstractConnection as Connection
from redis.asyncio.connection import ConnectionPool, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    DataError,
    ReadOnlyError,
    RedisClusterUnreachableError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from seqd.config import cluster_seeds, is_cluster_url

# What `Store.client` is: one server's client, or a cluster's; and a pipeline of either.
Client = aioredis.Redis | RedisCluster
Pipe = Pipeline | ClusterPipeline

# The errors that mean the store cannot answer now but may soon (a restart, a failover: the
# API's 503 with Retry-After). On a cluster: CLUSTERDOWN, TRYAGAIN (a slot migrating), a slot
# no primary serves, no node reachable, READONLY (a write reached a primary just demoted to
# replica), and ClusterError "TTL exhausted" (redirected or refused, TRYAGAIN included, more
# times than the client follows), once the client's own retries are spent.
UNAVAILABLE: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterDownError,
    ClusterError,
    TryAgainError,
    SlotNotCoveredError,
    RedisClusterUnreachableError,
    ReadOnlyError,
)


class _StoreConnection(Connection):
    """A redis-py connection with two changes.

    Commands are packed by hiredis (C) instead of redis-py's asyncio packer, which re-joins
    its growing buffer once per argument: a script call with thousands of arguments (a
    batch of enrollments, of claimed steps, of events) cost milliseconds of Python to
    pack, now a tenth of that. Same bytes, whatever the connection's encoding (the
    intake's reader escapes bad bytes as surrogates).

    Writing to a socket the server reset is a ConnectionError, as redis-py makes it on
    the default event loop: uvloop raises RuntimeError ("the handler is closed") there,
    which redis-py lets through, so a Redis restart failed requests with a 500 and was not
    retried.

    A cancellation that arrives while a command is written is never lost. redis-py writes
    through `asyncio.wait_for`, which on Python 3.11 drops a cancellation that lands as
    the write completes (CPython gh-86296, fixed in 3.12): the command then went on, and
    a task stopped by `cancel()` (the /healthz probe, the send-rate flusher) ran on, so a
    shutdown that awaited it never ended (one cancel in three during a PING, measured).
    The task's count of cancel requests tells: when it grew during the write and nothing
    was raised, the connection is dropped (its reply must not reach another command) and
    the cancellation raised.
    """

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        task = asyncio.current_task()
        cancels = task.cancelling() if task is not None else 0
        try:
            await super().send_packed_command(command, check_health)
        except RuntimeError as exc:  # redis-py has disconnected it already
            raise RedisConnectionError(f"Error while writing to socket: {exc}") from exc
        if task is not None and task.cancelling() > cancels:
            await self.disconnect(nowait=True)
            raise asyncio.CancelledError

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        first = args[0]
        # As redis-py does: "CONFIG GET" is two arguments.
        if isinstance(first, str):
            if " " in first:
                args = (*first.split(), *args[1:])
        elif isinstance(first, bytes) and b" " in first:
            args = (*first.split(), *args[1:])
        encoder = self.encoder
        if encoder.encoding_errors != "strict" or encoder.encoding.lower() not in UTF8:
            # hiredis writes text as strict UTF-8: other encodings are applied here.
            code, errors = encoder.encoding, encoder.encoding_errors
            args = tuple(a.encode(code, errors) if isinstance(a, str) else a for a in args)
        # (hiredis's stub types the argument as a 1-tuple: any length is accepted.)
        try:
            return [hiredis.pack_command(args)]  # type: ignore[arg-type]
        except TypeError:
            packed = tuple(bytes(a) if isinstance(a, bytearray | memoryview) else a for a in args)
            try:
                return [hiredis.pack_command(packed)]  # type: ignore[arg-type]
            except TypeError as exc:
                raise DataError(str(exc)) from exc


UTF8 = frozenset({"utf-8", "utf8"})
_CLASSES: dict[type[Connection], type[Connection]] = {}


def _store_connection(base: type[Connection]) -> type[Connection]:
    made = _CLASSES.get(base)
    if made is None:
        made = _CLASSES[base] = type(f"Store{base.__name__}", (_StoreConnection, base), {})
    return made


DEFAULT_TIMEOUT = 5.0


def connect(
    url: str,
    *,
    cluster: bool = False,
    socket_timeout: float = DEFAULT_TIMEOUT,
    max_connections: int = 64,
) -> Client:
    """A client for `url`: a cluster's when `cluster` is set or the URL names one."""
    if cluster or is_cluster_url(url):
        return StoreCluster.connect(
            url, socket_timeout=socket_timeout, max_connections=max_connections
        )
    pool = ConnectionPool.from_url(
        url,
        decode_responses=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        max_connections=max_connections,
        health_check_interval=30,
        # A connection pooled before Redis restarted is dead: its first command fails with
        # ConnectionError, and is sent once more on a new connection instead of failing
        # the request or round that made it. Timeouts are not retried (the command may
        # still be running).
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )
    # TCP, TLS or unix socket, as the URL says: the same class, with _StoreConnection's ways.
    pool.connection_class = _store_connection(pool.connection_class)
    return aioredis.Redis.from_pool(pool)


class StoreCluster(RedisCluster):
    """redis-py's cluster client on the seed nodes of a cluster URL, whose connections pack
    and fail as `_StoreConnection` says, and which remembers its URL (`derive`).

    The cluster client retries a command or a pipeline itself on a connection error, a
    timeout, CLUSTERDOWN or an uncovered slot, refreshing the slot map first (a failover, a
    restarted node), and follows MOVED and ASK. It retries timeouts too, which the one-server
    client does not: on a cluster a node that stops answering is about to be failed over.
    Three retries within about a second, then the caller sees the error (the API a 503).
    """

    url: str

    async def _determine_slot(self, command: str, *args: Any) -> int:
        # redis-py asks the server (COMMAND GETKEYS, a round trip) for the keys of a command
        # whose keys move, every time; XREADGROUP's (the outbox and intake reads) follow
        # STREAMS, the first half of what is left.
        if command.upper() == "XREADGROUP":
            words = [a.upper() if isinstance(a, str | bytes) else a for a in args]
            after = next((i + 1 for i, w in enumerate(words) if w in ("STREAMS", b"STREAMS")), 0)
            streams = args[after : after + (len(args) - after) // 2]
            slots = {self.keyslot(name) for name in streams}
            if after and len(slots) == 1:
                return slots.pop()
        return await super()._determine_slot(command, *args)

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        socket_timeout: float,
        max_connections: int,
        encoding_errors: str = "strict",
    ) -> StoreCluster:
        first, seeds = cluster_seeds(url)
        options: dict[str, Any] = dict(parse_url(first))
        for name in ("host", "port", "db", "path"):
            options.pop(name, None)
        ssl = options.pop("connection_class", None) is not None
        client = cls(
            startup_nodes=[ClusterNode(host, port) for host, port in seeds],
            decode_responses=True,
            encoding_errors=encoding_errors,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            max_connections=max_connections,
            health_check_interval=30,
            retry=Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), 3),
            ssl=ssl,
            **options,
        )
        client.url = url
        # Every node's connections, those of nodes found later included, are made from this.
        made = _store_connection(client.connection_kwargs["connection_class"])
        client.connection_kwargs["connection_class"] = made
        for node in client.startup_nodes:
            node.connection_class = made  # type: ignore[assignment]
        return client


def derive(
    client: Client, *, encoding_errors: str, wait_longer: float, max_connections: int
) -> Client:
    """A client of its own on the store `client` reaches, decoding with `encoding_errors`
    and waiting `wait_longer` seconds more for an answer; the caller closes it."""
    if isinstance(client, StoreCluster):
        timeout = client.connection_kwargs.get("socket_timeout") or DEFAULT_TIMEOUT
        return StoreCluster.connect(
            client.url,
            socket_timeout=timeout + wait_longer,
            max_connections=max_connections,
            encoding_errors=encoding_errors,
        )
    if isinstance(client, RedisCluster):
        raise TypeError("derive() takes a cluster client made by connect()")
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs["encoding_errors"] = encoding_errors
    kwargs["socket_timeout"] = (kwargs.get("socket_timeout") or DEFAULT_TIMEOUT) + wait_longer
    # from_pool: the client owns its pool and closes it on aclose().
    return aioredis.Redis.from_pool(
        aioredis.ConnectionPool(
            connection_class=pool.connection_class, max_connections=max_connections, **kwargs
        )
    )
