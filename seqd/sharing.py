"""A listening socket shared by the workers of `seqd serve --workers N`, taken one
connection at a time.

uvloop (libuv) accepts every connection waiting on a readable listening socket in one go,
so connections that arrive together (a client opening its pool) all go to the first
worker to wake and the others stay idle: a batch load over 8 connections ran about 90 %
in one of 2 workers. Accepting one connection per turn of the event loop lets every
worker that is free at that moment take the next one, so new connections go to the
workers not busy running a request. The socket stays shared: a worker that dies strands
no connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket

import structlog
from aiohttp import web
from aiohttp.web_server import Server

log = structlog.get_logger(__name__)

# Errors of accept() that concern one connection (gone before it was taken): the next one.
_DROPPED = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
# Out of descriptors or memory: wait this long before accepting again, as asyncio does.
_PAUSE_SECONDS = 1.0


class _Acceptor:
    """The accept loop of one shared socket; `close` (the site's stop) ends it."""

    def __init__(self, factory: Server, sock: socket.socket) -> None:
        self._task = asyncio.create_task(self._run(factory, sock), name="seqd.accept")

    async def _run(self, factory: Server, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno in _DROPPED:
                    continue
                log.warning("service.accept_failed", error=str(exc))
                await asyncio.sleep(_PAUSE_SECONDS)
                continue
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                await loop.connect_accepted_socket(factory, conn)
            except OSError:  # reset before its transport was made
                conn.close()
            except asyncio.CancelledError:  # stopped meanwhile: not left open
                conn.close()
                raise
            # One connection per turn: a sibling woken by the same readiness takes the next.
            await asyncio.sleep(0)

    def close(self) -> None:
        self._task.cancel()


class SharedSocketSite(web.SockSite):
    """`web.SockSite` on a socket the sibling workers share (see the module docstring)."""

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = _Acceptor(server, self._sock)  # type: ignore[assignment]
