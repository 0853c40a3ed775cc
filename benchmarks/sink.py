"""The end-to-end benchmark's provider: a raw asyncio HTTP/1.1 server answering every POST
with a fixed 201, so that its own CPU per request stays small and the senders are measured.

    python -m benchmarks.sink PORT

`GET /stats` answers `{"hits": N, "first": t, "last": t}` (`time.monotonic()`, which is the
system-wide CLOCK_MONOTONIC on Linux, so another process on the machine can compare it) and
`POST /reset` zeroes them. Keep-alive, pipelining and any number of connections are served.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import cast

ANSWER = (
    b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
    b'Content-Length: 13\r\n\r\n{"id":"sink"}'
)


class Tally:
    def __init__(self) -> None:
        self.hits = 0
        self.first = 0.0
        self.last = 0.0


class Sink(asyncio.Protocol):
    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out: list[bytes] = []
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = self.buffer[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                break
            self.buffer = self.buffer[end + 4 + length :]
            out.append(self.answer(head.split(b" ", 2)))
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def answer(self, line: list[bytes]) -> bytes:
        tally = self.tally
        if len(line) > 1 and line[1] == b"/stats":
            body = json.dumps({"hits": tally.hits, "first": tally.first, "last": tally.last})
            data = body.encode()
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data)
        if len(line) > 1 and line[1] == b"/reset":
            tally.hits, tally.first, tally.last = 0, 0.0, 0.0
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        now = time.monotonic()
        if not tally.hits:
            tally.first = now
        tally.hits += 1
        tally.last = now
        return ANSWER


async def serve(port: int) -> None:
    tally = Tally()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Sink(tally), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        from uvloop import run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        from asyncio import run
    run(serve(int(sys.argv[1])))
