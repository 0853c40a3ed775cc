"""The store's Redis client: commands packed by hiredis, byte for byte what redis-py sends."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import DataError

from seqd.store.db import Store, connect
from tests.conftest import ValkeyProcess

ARGS = [
    ("SET", "k", "é😀", b"\x00\xff", 7, -3, 2.5, 0.1, 1795571562893.0),
    ("CONFIG GET", "maxmemory"),
    (b"CLIENT SETINFO", "LIB-NAME", "seqd"),
    ("EVALSHA", "a" * 40, 3, "{t}:a", "{t}:b", "{t}:c", *[f"enr_{i:022d}" for i in range(3000)]),
    ("HSET", "k", "f", memoryview(b"view"), "g", bytearray(b"array")),
]


@pytest.mark.parametrize("args", ARGS, ids=[str(a[0]) for a in ARGS])
def test_packing_is_byte_for_byte_redis_pys(args: tuple[object, ...]) -> None:
    ours = connect("redis://127.0.0.1:1/0").connection_pool.connection_class()
    theirs = Connection()
    assert b"".join(ours.pack_command(*args)) == b"".join(theirs.pack_command(*args))


def test_an_argument_of_another_type_is_a_data_error() -> None:
    ours = connect("redis://127.0.0.1:1/0").connection_pool.connection_class()
    with pytest.raises(DataError):
        ours.pack_command("SET", "k", None)


def test_every_url_scheme_keeps_its_connection_class() -> None:
    unix = connect("unix:///tmp/seqd-test.sock").connection_pool.connection_class
    assert issubclass(unix, UnixDomainSocketConnection)
    tcp = connect("redis://127.0.0.1:6379/0").connection_pool.connection_class
    assert issubclass(tcp, Connection) and not issubclass(tcp, UnixDomainSocketConnection)


async def test_a_large_script_call_round_trips(store: Store) -> None:
    """Through a real server: thousands of arguments and non-ASCII text arrive intact."""
    values = [f"é{i}" for i in range(5000)]
    await store.client.rpush("seqd-test:list", *values)
    assert await store.client.lrange("seqd-test:list", 0, -1) == values
    echoed = await store.client.eval("return ARGV", 0, *values)
    assert echoed == values


def test_a_connection_escaping_bad_bytes_packs_them_back() -> None:
    """The intake's reader decodes non-UTF-8 bytes as surrogates: writing such text back
    (to the rejected stream) must give the original bytes, as redis-py's packer does."""
    cls = connect("redis://127.0.0.1:1/0").connection_pool.connection_class
    ours = cls(encoding_errors="surrogateescape")
    text = b"caf\xe9".decode("utf-8", "surrogateescape")
    assert b"$4\r\ncaf\xe9\r\n" in b"".join(ours.pack_command("XADD", "s", "*", "f", text))


async def test_a_command_after_a_redis_restart_succeeds_first_time(
    valkey_factory: type[ValkeyProcess], prefix: str
) -> None:
    """Connections pooled before Redis restarted are stale: the first command on one is sent
    again on a fresh connection rather than failing the request that made it."""
    server = valkey_factory("--appendonly", "yes")  # type: ignore[arg-type]
    server.start()
    store = await Store.open(connect(server.url), prefix, 4)
    try:
        await store.client.set("seqd-test:k", "before")
        server.kill()
        server.start()  # same port and files
        assert await store.client.get("seqd-test:k") == "before"
        pipe = store.client.pipeline(transaction=False)
        pipe.set("seqd-test:k", "after")
        pipe.get("seqd-test:k")
        assert await pipe.execute() == [True, "after"]
    finally:
        await store.close()


def test_a_connection_reset_under_uvloop_is_a_connection_error_and_retried(
    valkey_factory: type[ValkeyProcess], prefix: str
) -> None:
    """`seqd serve` runs on uvloop, where writing to a socket the server reset raises
    RuntimeError: the store client makes it the ConnectionError it is, so the command is
    sent again on a new connection (it failed requests with a 500 before)."""
    import uvloop

    server = valkey_factory()
    server.start()

    async def scenario() -> str | None:
        store = await Store.open(connect(server.url), prefix, 4)
        try:
            await store.client.set("seqd-test:k", "kept")
            pool = store.client.connection_pool
            conn = await pool.get_connection()
            conn._writer.transport.abort()  # type: ignore[attr-defined]  # as a reset does
            await asyncio.sleep(0.01)
            await pool.release(conn)
            return await store.client.get("seqd-test:k")  # type: ignore[no-any-return]
        finally:
            await store.close()

    assert uvloop.run(scenario()) == "kept"


async def test_a_cancel_during_a_command_is_never_lost(store: Store) -> None:
    """A task cancelled at any point of a store command ends cancelled: on Python 3.11
    redis-py's write (asyncio.wait_for) dropped a cancel that landed as the write
    completed, about one in three here, and a background task stopped by cancel() ran on,
    so the shutdown awaiting it hung (the api fixture's teardown, seqd's drain). The
    connection such a cancel leaves is dropped: every later command gets its own reply."""
    outcomes = {"lost": 0, "cancelled": 0, "done before": 0}
    for i in range(400):

        async def command(i: int = i) -> None:
            await store.client.set(f"seqd-test:{i % 8}", i)
            await asyncio.sleep(0)  # a cancel still pending surfaces here at the latest

        task = asyncio.create_task(command())
        for _ in range(i % 8):  # every point of the command's round trip, in turn
            await asyncio.sleep(0)
        if not task.cancel():
            outcomes["done before"] += 1
            continue
        try:
            await task
            outcomes["lost"] += 1
        except asyncio.CancelledError:
            outcomes["cancelled"] += 1
    assert outcomes["lost"] == 0, outcomes
    assert outcomes["cancelled"] > 100, outcomes
    keys = [f"seqd-test:{i}" for i in range(40)]
    replies = await asyncio.gather(*(store.client.echo(key) for key in keys))
    assert replies == keys
