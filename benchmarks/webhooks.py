"""Events and webhooks: outbox reader rate, delivery rate against a bare-aiohttp peer, and
Redis memory per logged event and per pending delivery.

    python -m benchmarks.webhooks [--n 5000] [--concurrency 8 32]

A dedicated valkey-server (AOF everysec) on a free port; a receiver answering 204 in a
subprocess (so it does not share the deliverer's event loop). N events are appended to
the shards' outboxes as the scripts write them, then:

- reader only, no endpoint: events/s into the log, and `used_memory` delta per event;
- reader only, one endpoint subscribed to everything: events/s (log + fan-out), and the
  memory a pending delivery adds;
- per concurrency level, the deliverer drains N deliveries (`concurrency_per_endpoint`):
  deliveries/s, next to a bare aiohttp client POSTing the same N bodies to the same
  receiver with the same concurrency in the same run (the peer: HTTP alone, no signing,
  no Redis). The ratio is seqd's rate over the peer's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import msgspec
from aiohttp import web

from benchmarks.dispatch import free_port, start_valkey
from benchmarks.results import record
from seqd import collector, logs
from seqd.config import LogConfig, WebhooksConfig
from seqd.events import signing
from seqd.events.deliverer import Deliverer, session
from seqd.events.reader import Reader
from seqd.store.db import Store, connect
from seqd.times import now_ms

TENANT = "bench"
PREFIX = "benchwh"
SHARDS = 16


def serve_receiver(port: int) -> None:
    """The receiver subprocess: 204 to every POST, GET /count says how many arrived."""
    count = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal count
        await request.read()
        count += 1
        return web.Response(status=204)

    async def how_many(request: web.Request) -> web.Response:
        return web.json_response({"count": count})

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/count", how_many)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def received(http: aiohttp.ClientSession, base: str) -> int:
    async with http.get(f"{base}/count") as resp:
        return int((await resp.json())["count"])


async def fill_outbox(store: Store, n: int) -> None:
    pipe = store.client.pipeline(transaction=False)
    at = str(now_ms())
    for i in range(n):
        data = {"contact_id": f"con_{i}", "channel": "sms", "n": i}
        fields = {"type": "contact.opted_in", "tenant": TENANT, "at": at, "data": json.dumps(data)}
        pipe.xadd(store.keys.outbox(i % SHARDS), fields)  # type: ignore[arg-type]
    await pipe.execute()


async def used_memory(store: Store) -> int:
    info = await store.client.info("memory")
    return int(info["used_memory"])


async def read_all(reader: Reader, store: Store) -> float:
    start = time.perf_counter()
    while await store.outbox.backlog():
        await reader.run_once()
    return time.perf_counter() - start


async def peer(base: str, bodies: list[bytes], concurrency: int) -> float:
    """Bare aiohttp: the same POSTs, same concurrency, nothing else."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                async with http.post(f"{base}/hook", data=body) as resp:
                    await resp.read()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start


async def deliver_all(
    store: Store, config: WebhooksConfig, base: str, n: int
) -> tuple[float, float]:
    """Seconds for the deliverer to drain n due deliveries, and for the peer to POST n."""
    http = session(config)
    deliverer = Deliverer(store, config, http)
    async with aiohttp.ClientSession() as probe:
        already = await received(probe, base)
        start = time.perf_counter()
        deliverer.start()
        while await received(probe, base) < already + n:  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.02)
        deliver_s = time.perf_counter() - start
        await deliverer.stop()
        await http.close()
    body = json.dumps({"id": "evt_x", "type": "contact.opted_in", "data": {}}).encode()
    return deliver_s, await peer(base, [body] * n, config.concurrency_per_endpoint)


async def main(n: int, levels: list[int]) -> None:
    logs.setup(LogConfig(level="warning"))
    directory = Path(tempfile.mkdtemp(prefix="seqd-bench-wh-"))
    valkey, url = start_valkey(directory)
    port = free_port()
    receiver = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
        [sys.executable, "-m", "benchmarks.webhooks", "--receiver", str(port)]
    )
    base = f"http://127.0.0.1:{port}"
    config = WebhooksConfig(allow_private_targets=True, batch_size=500, jitter=0.0)
    rows = []
    try:
        store = await Store.open(connect(url), PREFIX, SHARDS)
        await store.tenants.ensure(TENANT)
        async with aiohttp.ClientSession() as probe:
            for _ in range(200):
                try:
                    await received(probe, base)
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
        reader = Reader(store, config)

        await fill_outbox(store, n)
        before = await used_memory(store)
        log_only_s = await read_all(reader, store)
        per_event = (await used_memory(store) - before) / n
        rows.append(("reader, log only", f"{n / log_only_s:,.0f} events/s", ""))

        await store.webhooks.create(
            TENANT,
            url=f"{base}/hook",
            events=["*"],
            description="",
            secret=signing.new_secret(),
            now=now_ms(),
            max_endpoints=5,
        )
        for i, level in enumerate(levels):
            await fill_outbox(store, n)
            before = await used_memory(store)
            fanout_s = await read_all(reader, store)
            if i == 0:
                per_delivery = (await used_memory(store) - before) / n - per_event
                rows.append(("reader, log + 1 endpoint", f"{n / fanout_s:,.0f} events/s", ""))
            level_config = msgspec.structs.replace(config, concurrency_per_endpoint=level)
            deliver_s, peer_s = await deliver_all(store, level_config, base, n)
            rows.append(
                (
                    f"deliverer, 1 endpoint, concurrency {level}",
                    f"{n / deliver_s:,.0f} deliveries/s",
                    f"{peer_s / deliver_s:.2f}x of the peer",
                )
            )
            rows.append(
                (f"peer: bare aiohttp POST, concurrency {level}", f"{n / peer_s:,.0f} req/s", "")
            )
        rows.append(("Redis memory per logged event", f"{per_event:,.0f} B", ""))
        rows.append(
            ("Redis memory per pending delivery", f"{per_delivery:,.0f} B", "body included")
        )
        await store.close()
    finally:
        receiver.terminate()
        receiver.wait(10)
        valkey.terminate()
        valkey.wait(10)

    table = "| measure | value | note |\n| --- | --- | --- |\n" + "\n".join(
        f"| {a} | {b} | {c} |" for a, b, c in rows
    )
    body = (
        f"N = {n} events (`contact.opted_in`, ~150-byte payloads) over {SHARDS} shards; "
        "receiver (204) in a subprocess on loopback; valkey AOF everysec; 2 shared cores. "
        "One run; the peer is measured right after seqd, in the same run.\n\n" + table
    )
    print(body)
    record("webhooks", body)


if __name__ == "__main__":
    # The collector schedule `seqd` sets at start: seqd's code in this process runs as in seqd.
    collector.tune()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        serve_receiver(args.receiver)
    else:
        asyncio.run(main(args.n, args.concurrency))
