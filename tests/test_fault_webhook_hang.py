"""A webhook receiver that hangs leaves the other endpoints and the dispatcher alone.

Two runs of a real `seqd serve` on the same work (enrollments of two SMS steps to the
`log` channel, every `sequence.step.sent` delivered to a healthy endpoint): one with the
healthy endpoint alone, one with a second endpoint that accepts connections and never
answers. Both must deliver every event to the healthy endpoint and complete every
enrollment; the figures (steps/s, the healthy endpoint's delivery latency) are printed
for docs/reliability.md. No timed assertions. Size: `SEQD_FAULT_HANG_ENROLLMENTS`
(default 1000).
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import time
from datetime import datetime
from pathlib import Path

import pytest
from aiohttp import web

from seqd.store.db import Store, connect
from tests.conftest import ValkeyProcess, free_port
from tests.dispatchutil import sms
from tests.faultutil import LogTail, seed, size, wait_for
from tests.opsutil import Daemon
from tests.webhookutil import endpoint

STEPS = 2


class Receivers:
    """`/good` answers at once and records (arrival, event); `/hang` never answers."""

    def __init__(self) -> None:
        self.port = free_port()
        self.good: list[tuple[float, dict[str, object]]] = []
        self.hung = 0
        self._runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _good(self, request: web.Request) -> web.Response:
        self.good.append((time.time(), json.loads(await request.read())))
        return web.Response(text="ok")

    async def _hang(self, request: web.Request) -> web.Response:
        self.hung += 1
        await asyncio.sleep(3600)
        return web.Response(text="late")

    async def __aenter__(self) -> Receivers:
        app = web.Application()
        app.router.add_post("/good", self._good)
        app.router.add_post("/hang", self._hang)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def _run(
    server: ValkeyProcess, prefix: str, workdir: Path, n: int, hang: bool
) -> tuple[float, list[float], int]:
    """steps/s, the healthy endpoint's latencies (ms), requests the hanging one took."""
    store = await Store.open(connect(server.url), prefix, 4)
    provider = LogTail(workdir / "provider.log")
    try:
        async with Receivers() as receivers:
            sid, _ = await seed(store, [sms(f"step {i}") for i in range(STEPS)], n)
            await endpoint(store, receivers.url("/good"), ["sequence.step.sent"])
            if hang:
                await endpoint(store, receivers.url("/hang"), ["sequence.step.sent"])
            daemon = Daemon(
                server.url,
                prefix,
                workdir,
                SEQD_CHANNELS_LOG_PATH=str(provider.path),
                SEQD_WEBHOOKS_ALLOW_PRIVATE_TARGETS="true",
            ).start()
            try:

                async def delivered() -> bool:
                    assert daemon.process is not None
                    assert daemon.process.poll() is None, daemon.stderr()
                    return len({e["id"] for _, e in receivers.good}) == n * STEPS

                await wait_for(delivered, 120, "every event at the healthy endpoint")
                stats = (await store.sequences.stats([sid]))[sid]
                assert stats.completed == n
                daemon.signal(signal.SIGTERM)
                assert daemon.wait() == 0, daemon.stderr()
            finally:
                daemon.stop()
            hung = receivers.hung
    finally:
        await store.close()
    provider.read()
    assert provider.lines >= n * STEPS
    stamps = [
        datetime.fromisoformat(json.loads(line)["at"]).timestamp()
        for line in provider.path.read_text().splitlines()
    ]
    rate = len(stamps) / max(max(stamps) - min(stamps), 1e-3)
    latencies = [
        (arrived - datetime.fromisoformat(str(event["created_at"])).timestamp()) * 1000
        for arrived, event in receivers.good
    ]
    return rate, latencies, hung


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


@pytest.mark.slow
async def test_hanging_receiver_does_not_hold_up_other_endpoints_or_the_dispatcher(
    valkey_factory: type[ValkeyProcess], prefix: str, tmp_path: Path
) -> None:
    n = size("HANG_ENROLLMENTS", 1000)
    server = valkey_factory()  # type: ignore[call-arg]
    server.start()
    alone = await _run(server, prefix + "a", tmp_path / "alone", n, hang=False)
    beside = await _run(server, prefix + "b", tmp_path / "hang", n, hang=True)
    assert beside[2] > 0  # the hanging endpoint was tried, and held its slots
    for name, (rate, latencies, hung) in (("alone", alone), ("with a hanging endpoint", beside)):
        print(
            f"\nwebhook hang, {name}: {rate:.0f} steps/s, healthy endpoint latency "
            f"p50 {_pct(latencies, 50):.0f} ms p99 {_pct(latencies, 99):.0f} ms "
            f"max {max(latencies):.0f} ms; {hung} requests to the hanging endpoint"
        )
