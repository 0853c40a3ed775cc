"""Cost of the per-key rate limit per request: GET /v1/contacts/{id} with and without it.

One app on a dedicated valkey-server, one client keeping its connection alive, requests
one at a time (latency, not throughput); the two configurations alternate in rounds so
they see the same machine. Also the bare `limitRate` EVALSHA round trip.

    python -m benchmarks.ratelimit [--requests 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from benchmarks.dispatch import start_valkey
from benchmarks.results import median, record
from seqd import logs
from seqd.api.app import create_app
from seqd.config import Config, LogConfig, RateLimitConfig
from seqd.store.db import Store, connect
from seqd.times import now_ms


async def _latencies(client: TestClient, path: str, key: str, n: int) -> list[float]:
    headers = {"Authorization": f"Bearer {key}"}
    out = []
    for _ in range(n):
        start = time.perf_counter()
        resp = await client.get(path, headers=headers)
        await resp.read()
        out.append(time.perf_counter() - start)
        assert resp.status == 200, resp.status
    return out


async def run(requests: int, rounds: int, url: str) -> str:
    store = await Store.open(connect(url), "bench", 16)
    _, key = await store.tenants.create_key("acme")
    contact = await store.contacts.create("acme", {"phone": "+15005550006"})
    path = f"/v1/contacts/{contact.id}"
    on, off = [], []
    apps = {
        True: create_app(Config(), store),
        False: create_app(Config(ratelimit=RateLimitConfig(enabled=False)), store),
    }
    clients = {flag: TestClient(TestServer(app)) for flag, app in apps.items()}
    for c in clients.values():
        await c.start_server()
    try:
        for flag in (True, False):  # warm-up
            await _latencies(clients[flag], path, key, 200)
        for _ in range(rounds):
            on.append(median(await _latencies(clients[True], path, key, requests)))
            off.append(median(await _latencies(clients[False], path, key, requests)))
        script = []
        for _ in range(requests):
            start = time.perf_counter()
            await store.ratelimits.take("bench", limit=10**8, period_ms=300_000, now=now_ms())
            script.append(time.perf_counter() - start)
    finally:
        for c in clients.values():
            await c.close()
        await store.close()
    m_on, m_off, m_script = median(on) * 1e6, median(off) * 1e6, median(script) * 1e6
    return (
        f"GET /v1/contacts/{{id}}, {requests} sequential requests x {rounds} rounds, "
        "medians of the per-round medians.\n\n"
        "| | µs per request |\n| --- | --- |\n"
        f"| rate limit off | {m_off:.0f} |\n| rate limit on | {m_on:.0f} |\n"
        f"| difference | {m_on - m_off:.0f} ({(m_on / m_off - 1) * 100:.1f} %) |\n"
        f"| `limitRate` EVALSHA alone | {m_script:.0f} |\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logs.setup(LogConfig(level="warning"))  # no access line per request
    with tempfile.TemporaryDirectory() as tmp:
        valkey, url = start_valkey(Path(tmp))
        try:
            body = asyncio.run(run(args.requests, args.rounds, url))
        finally:
            valkey.terminate()
            valkey.wait()
    print(body)
    record("ratelimit", body)


if __name__ == "__main__":
    main()
