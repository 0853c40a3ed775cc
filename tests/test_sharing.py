"""SharedSocketSite: a worker's site on a listening socket its siblings share, taking one
connection per turn of the event loop."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from aiohttp import web

from seqd.sharing import SharedSocketSite


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


async def test_connections_opened_together_are_all_served_and_stop_ends_the_accepting() -> None:
    app = web.Application()
    app.router.add_get("/", _hello)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    site = SharedSocketSite(runner, sock)
    await site.start()
    try:
        connector = aiohttp.TCPConnector(limit=8)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def get() -> str:
                async with http.get(f"http://127.0.0.1:{port}/") as resp:
                    return await resp.text()

            assert await asyncio.gather(*(get() for _ in range(8))) == ["hello"] * 8
        await runner.cleanup()
        # The socket is still open (the supervisor's), but this worker takes no more.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(100), 0.3)
        writer.close()
    finally:
        sock.close()
