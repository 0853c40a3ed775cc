"""Events and webhooks: the outbox reader's cost per event, the deliverer's rate against a
bare aiohttp POST loop, and Redis memory per logged event and per pending delivery.

    python -m benchmarks.webhooks [--n 10000] [--concurrency 8 32] [--reps 5]
                                  [--receiver sink|aiohttp]

A dedicated valkey-server (AOF everysec, started as `seqd serve` starts its embedded one)
on a free port, and a receiver in a subprocess on loopback: `sink` is benchmarks/sink.py
(a raw asyncio server answering a fixed 201, so its own CPU stays small and the clients
are measured), `aiohttp` an aiohttp.web app answering 204. This process runs on uvloop,
as `seqd serve` does. Each repetition, interleaved:

- reader, log only: N events appended to the shards' outboxes (as the scripts write them)
  for a tenant with no endpoint, read into the log: events/s, this process's CPU and
  valkey's CPU per event, and the `used_memory` delta per event;
- per concurrency level: N more events for a tenant with one endpoint subscribed to
  everything, read (log + fan-out: the same figures, and the memory a pending delivery
  adds), then the deliverer drains the N deliveries (`concurrency_per_endpoint` = the
  level) and the peer POSTs N bodies of the same size to the same receiver with the same
  concurrency (which goes first alternates by repetition). The peer is a tuned bare
  aiohttp loop: one session, a connector without a cap, a prepared URL, the same
  Content-Type; no signing, no Redis.

Reported: medians over the repetitions; the ratio is the median of each repetition's
deliverer rate over the peer's rate measured next to it.
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
import uvloop
from aiohttp import web
from yarl import URL

from benchmarks.dispatch import cpu_seconds, free_port, start_valkey
from benchmarks.e2e import cpu_model
from benchmarks.results import median, record
from seqd import collector, logs
from seqd.config import LogConfig, WebhooksConfig
from seqd.events import signing
from seqd.events.deliverer import Deliverer, session
from seqd.events.reader import Reader
from seqd.store.db import Store, connect
from seqd.times import now_ms

LOG_TENANT = "benchlog"
HOOK_TENANT = "benchhook"
PREFIX = "benchwh"
SHARDS = 16


def serve_aiohttp(port: int) -> None:
    """The aiohttp receiver subprocess: 204 to every POST, GET /stats says how many came."""
    hits = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal hits
        await request.read()
        hits += 1
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"hits": hits})

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/stats", stats)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class Receiver:
    def __init__(self, kind: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        module = "benchmarks.sink" if kind == "sink" else "benchmarks.webhooks"
        args = [str(self.port)] if kind == "sink" else ["--serve-aiohttp", str(self.port)]
        self.proc = subprocess.Popen([sys.executable, "-m", module, *args])

    async def hits(self, http: aiohttp.ClientSession) -> int:
        async with http.get(f"{self.base}/stats") as resp:
            return int((await resp.json(content_type=None))["hits"])

    async def up(self, http: aiohttp.ClientSession) -> None:
        for _ in range(200):
            try:
                await self.hits(http)
                return
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
        raise RuntimeError("the receiver did not start")

    async def wait_for(self, http: aiohttp.ClientSession, n: int) -> None:
        while await self.hits(http) < n:  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.005)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)


class Cost(msgspec.Struct):
    """One measured run: wall seconds and CPU seconds of this process, valkey, receiver."""

    wall: float
    own: float
    valkey: float
    receiver: float = 0.0


class Meter:
    def __init__(self, store: Store, receiver: Receiver) -> None:
        self.store = store
        self.receiver = receiver

    async def valkey_cpu(self) -> float:
        info = await self.store.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    async def start(self) -> tuple[float, float, float, float]:
        valkey = await self.valkey_cpu()
        return time.perf_counter(), time.process_time(), valkey, self.receiver.cpu()

    async def stop(self, began: tuple[float, float, float, float]) -> Cost:
        wall, own, valkey, receiver = began
        return Cost(
            wall=time.perf_counter() - wall,
            own=time.process_time() - own,
            valkey=await self.valkey_cpu() - valkey,
            receiver=self.receiver.cpu() - receiver,
        )


async def fill_outbox(store: Store, tenant: str, n: int) -> None:
    pipe = store.client.pipeline(transaction=False)
    at = str(now_ms())
    for i in range(n):
        data = {"contact_id": f"con_{i}", "channel": "sms", "n": i}
        fields = {"type": "contact.opted_in", "tenant": tenant, "at": at, "data": json.dumps(data)}
        pipe.xadd(store.keys.outbox(i % SHARDS), fields)  # type: ignore[arg-type]
    await pipe.execute()


async def used_memory(store: Store) -> int:
    info = await store.client.info("memory")
    return int(info["used_memory"])


async def read_all(reader: Reader, store: Store, meter: Meter) -> tuple[Cost, int]:
    """Read the whole backlog; its cost, and the `used_memory` it added."""
    before = await used_memory(store)
    began = await meter.start()
    while await store.outbox.backlog():
        await reader.run_once()
    cost = await meter.stop(began)
    return cost, await used_memory(store) - before


class Delivered:
    """The deliverer's observer: sets `done` once n deliveries were delivered."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.done = asyncio.Event()

    def webhook_delivery(self, outcome: str) -> None:
        if outcome == "delivered":
            self.left -= 1
            if self.left <= 0:
                self.done.set()


async def deliver_all(
    store: Store, config: WebhooksConfig, receiver: Receiver, meter: Meter, n: int
) -> Cost:
    """The deliverer draining n due deliveries, until every outcome is written. It counts
    its own deliveries (no polling of the receiver inside the measured time, which the peer
    does not pay either); the receiver's count is checked afterwards."""
    async with aiohttp.ClientSession() as probe:
        target = await receiver.hits(probe) + n
        delivered = Delivered(n)
        began = await meter.start()
        http = session(config)
        deliverer = Deliverer(store, config, http, observer=delivered)
        deliverer.start()
        await delivered.done.wait()
        await deliverer.drain()
        cost = await meter.stop(began)
        await deliverer.stop()
        await http.close()
        if await receiver.hits(probe) < target:
            raise RuntimeError("the receiver saw fewer requests than were delivered")
    return cost


async def peer(receiver: Receiver, meter: Meter, body: bytes, n: int, concurrency: int) -> Cost:
    """Bare aiohttp: the same number of POSTs of the same size, same concurrency."""
    url = URL(f"{receiver.base}/hook")
    headers = {"Content-Type": "application/json"}
    left = n
    began = await meter.start()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with http.post(url, data=body, headers=headers) as resp:
                    await resp.read()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return await meter.stop(began)


async def a_body(store: Store) -> bytes:
    """A pending delivery's body, for the peer to send the same bytes."""
    for shard in range(SHARDS):
        for key in await store.client.keys(store.keys.delivery(shard, "*")):
            body = await store.client.hget(key, "b")
            if body:
                return str(body).encode()
    raise RuntimeError("no pending delivery")


def per(costs: list[Cost], field: str, n: int) -> float:
    """Median µs of CPU per item of one process over the runs."""
    return median([getattr(c, field) / n * 1e6 for c in costs])


def rate(costs: list[Cost], n: int) -> float:
    return median([n / c.wall for c in costs])


async def main(n: int, levels: list[int], reps: int, kind: str) -> None:
    logs.setup(LogConfig(level="warning"))
    directory = Path(tempfile.mkdtemp(prefix="seqd-bench-wh-"))
    valkey, url = start_valkey(directory)
    receiver = Receiver(kind)
    config = WebhooksConfig(allow_private_targets=True, batch_size=500, jitter=0.0)
    log_only: list[Cost] = []
    fanout: list[Cost] = []
    per_event: list[float] = []
    per_delivery: list[float] = []
    delivered: dict[int, list[Cost]] = {level: [] for level in levels}
    peers: dict[int, list[Cost]] = {level: [] for level in levels}
    ratios: dict[int, list[float]] = {level: [] for level in levels}
    try:
        store = await Store.open(connect(url), PREFIX, SHARDS)
        meter = Meter(store, receiver)
        for tenant in (LOG_TENANT, HOOK_TENANT):
            await store.tenants.ensure(tenant)
        async with aiohttp.ClientSession() as probe:
            await receiver.up(probe)
        await store.webhooks.create(
            HOOK_TENANT,
            url=f"{receiver.base}/hook",
            events=["*"],
            description="",
            secret=signing.new_secret(),
            now=now_ms(),
            max_endpoints=5,
        )
        reader = Reader(store, config)
        for rep in range(reps):
            await fill_outbox(store, LOG_TENANT, n)
            cost, grown = await read_all(reader, store, meter)
            log_only.append(cost)
            per_event.append(grown / n)
            for level in levels:
                await fill_outbox(store, HOOK_TENANT, n)
                cost, grown = await read_all(reader, store, meter)
                fanout.append(cost)
                per_delivery.append(grown / n - per_event[-1])
                body = await a_body(store)
                level_config = msgspec.structs.replace(config, concurrency_per_endpoint=level)
                runs = [
                    lambda: deliver_all(store, level_config, receiver, meter, n),  # noqa: B023
                    lambda: peer(receiver, meter, body, n, level),  # noqa: B023
                ]
                if rep % 2:
                    runs.reverse()
                first, second = [await run() for run in runs]
                seqd_run, peer_run = (second, first) if rep % 2 else (first, second)
                delivered[level].append(seqd_run)
                peers[level].append(peer_run)
                ratios[level].append(peer_run.wall / seqd_run.wall)
        await store.close()
    finally:
        receiver.proc.terminate()
        receiver.proc.wait(10)
        valkey.terminate()
        valkey.wait(10)

    rows = [
        (
            "reader, log only",
            f"{rate(log_only, n):,.0f} events/s",
            f"{per(log_only, 'own', n):.1f}",
            f"{per(log_only, 'valkey', n):.1f}",
            "",
        ),
        (
            "reader, log + 1 endpoint",
            f"{rate(fanout, n):,.0f} events/s",
            f"{per(fanout, 'own', n):.1f}",
            f"{per(fanout, 'valkey', n):.1f}",
            "",
        ),
    ]
    for level in levels:
        rows.append(
            (
                f"deliverer, 1 endpoint, concurrency {level}",
                f"{rate(delivered[level], n):,.0f} deliveries/s",
                f"{per(delivered[level], 'own', n):.1f}",
                f"{per(delivered[level], 'valkey', n):.1f}",
                f"{median(ratios[level]):.2f}x the peer "
                f"(runs {', '.join(f'{r:.2f}' for r in ratios[level])}); "
                f"receiver {per(delivered[level], 'receiver', n):.1f} µs",
            )
        )
        rows.append(
            (
                f"peer: bare aiohttp POST loop, concurrency {level}",
                f"{rate(peers[level], n):,.0f} req/s",
                f"{per(peers[level], 'own', n):.1f}",
                "",
                f"receiver {per(peers[level], 'receiver', n):.1f} µs",
            )
        )
    table = (
        "| measure | rate | this process, CPU µs per item | valkey, CPU µs per item | note |\n"
        "| --- | --- | --- | --- | --- |\n"
        + "\n".join("| " + " | ".join(row) + " |" for row in rows)
    )
    receiver_text = (
        "benchmarks/sink.py (raw asyncio, fixed 201)"
        if kind == "sink"
        else "an aiohttp.web app answering 204"
    )
    body = (
        f"CPU: {cpu_model()} (2 cores, shared). N = {n:,} events (`contact.opted_in`) per run "
        f"over {SHARDS} shards; receiver: {receiver_text}, in its own process on loopback; "
        "valkey AOF everysec; this process on uvloop. Medians of "
        f"{reps} interleaved repetitions (deliverer and peer alternate which goes first).\n"
        f"Command: `/work/wt/bench python -m benchmarks.webhooks --n {n} --concurrency "
        f"{' '.join(map(str, levels))} --reps {reps} --receiver {kind}`\n\n"
        + table
        + f"\n\nRedis memory per logged event: {median(per_event):,.0f} B; per pending "
        f"delivery (body included): {median(per_delivery):,.0f} B.\n"
    )
    record("webhooks" if kind == "sink" else "webhooks, aiohttp receiver", body)


if __name__ == "__main__":
    # The collector schedule `seqd` sets at start: seqd's code in this process runs as in seqd.
    collector.tune()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--receiver", choices=["sink", "aiohttp"], default="sink")
    parser.add_argument("--serve-aiohttp", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_aiohttp:
        serve_aiohttp(args.serve_aiohttp)
    else:
        uvloop.run(main(args.n, args.concurrency, args.reps, args.receiver))
