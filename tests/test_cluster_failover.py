"""A primary of the cluster killed while `seqd serve` dispatches a burst and clients call the
API: its replica takes over (cluster-node-timeout 1 s), the API answers 503 with Retry-After
in the gap and never 500, and dispatch and the outbox reader resume on the new primary by
themselves.

Replication is asynchronous: what the killed primary acknowledged in its last moment may not
have reached its replica. The enrollments are in place (and on the replicas) before the kill,
so what such a loss can undo is the record of a send, which sends that step again: the test
allows one duplicate per step, and reports how many there were.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis

from seqd.store.db import Store, connect
from tests.clusterutil import ValkeyCluster, running
from tests.dispatchutil import queued, sms
from tests.faultutil import LogTail, seed, size, wait_for
from tests.opsutil import Daemon

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

STEPS = 2


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[ValkeyCluster]:
    """3 primaries with a replica each: this test kills one, so the cluster is its own."""
    with running(tmp_path / "cluster", replicas=1) as cluster:
        yield cluster


@pytest.fixture
async def store(replicated: ValkeyCluster, prefix: str) -> AsyncIterator[Store]:
    s = await Store.open(connect(replicated.url), prefix, 16)
    yield s
    await s.close()


def _replicas_caught_up(cluster: ValkeyCluster) -> bool:
    """Every primary's replica has acknowledged all it was sent."""
    for port in cluster.primary_ports():
        with redis.Redis(port=port) as node:
            info = node.info("replication")
        if info.get("slave0", {}).get("offset") != info["master_repl_offset"]:
            return False
    return True


async def _call_api(url: str, key: str, statuses: Counter[int], stop: asyncio.Event) -> None:
    """A client creating contacts (every shard, so every primary) and reading them back."""
    headers = {"Authorization": f"Bearer {key}"}
    n = 0
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(url, headers=headers, timeout=timeout) as http:
        while not stop.is_set():
            n += 1
            body = {"phone": f"+1415555{n % 10_000:04d}", "first_name": f"api{n}"}
            async with http.post("/v1/contacts", json=body) as resp:
                statuses[resp.status] += 1
                if resp.status == 503:
                    assert resp.headers.get("Retry-After") == "1"
                elif resp.status == 201:
                    cid = (await resp.json())["contact"]["id"]
                    async with http.get(f"/v1/contacts/{cid}") as got:
                        statuses[got.status] += 1
                        assert got.status in (200, 503), await got.text()
            await asyncio.sleep(0.01)


async def test_a_primary_killed_during_a_burst_fails_over_without_a_500_or_a_lost_step(
    replicated: ValkeyCluster, store: Store, prefix: str, tmp_path: Path
) -> None:
    enrollments = size("ENROLLMENTS", 600)
    _, key = await store.tenants.create_key("acme")
    sid, eids = await seed(store, [sms(f"step {i}") for i in range(STEPS)], enrollments)
    await wait_for(
        lambda: asyncio.to_thread(_replicas_caught_up, replicated), 10, "replicas in sync"
    )
    provider = LogTail(tmp_path / "provider.log")
    daemon = Daemon(
        replicated.url,
        prefix,
        tmp_path / "seqd",
        SEQD_CHANNELS_LOG_PATH=str(provider.path),
        SEQD_DISPATCH_BATCH_SIZE="20",
        SEQD_DISPATCH_LEASE_SECONDS="6",
        SEQD_DISPATCH_CONCURRENCY="8",
        SEQD_WEBHOOKS_TIMEOUT_SECONDS="1",
        SEQD_WEBHOOKS_LEASE_SECONDS="3",
    ).start()
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()
    client = None
    try:
        await asyncio.to_thread(daemon.wait_healthy)
        client = asyncio.create_task(_call_api(daemon.url, key, statuses, stop))

        async def some_sent() -> bool:
            return provider.read() >= enrollments // 2

        await wait_for(some_sent, 60, "a quarter of the burst at the provider")
        victim = replicated.primary_ports()[0]
        replicated.node(victim).kill()
        killed_at = time.monotonic()
        await asyncio.to_thread(replicated.wait_ok, 30.0)
        failover = time.monotonic() - killed_at
        assert victim not in replicated.primary_ports()

        async def all_done() -> bool:
            assert daemon.process is not None and daemon.process.poll() is None, daemon.stderr()
            stats = (await store.sequences.stats([sid]))[sid]
            return stats.completed == enrollments

        await wait_for(all_done, 120, "every enrollment to complete after the failover")

        async def outbox_drained() -> bool:
            return await store.outbox.backlog() == 0

        # The outbox reader resumed on the new primary too: every event handled. Entries it
        # had read whose acknowledgement the failover lost come back after its lease.
        await wait_for(outbox_drained, 30, "the outbox read to the end after the failover")
        stop.set()
        await client
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.stderr()
    finally:
        stop.set()
        if client is not None and not client.done():
            client.cancel()
        daemon.stop()
    provider.read()
    sent = provider.sent
    assert set(sent) == {(eid, step) for eid in eids for step in range(STEPS)}, "a step was lost"
    assert max(sent.values()) <= 2, "a step was sent more than once again"
    assert 500 not in statuses, statuses
    assert statuses[201] > 0, statuses
    assert await queued(store) == 0
    duplicates = sum(n - 1 for n in sent.values())
    print(
        f"\nfailover: {failover:.1f} s until the cluster was ok again; API answers "
        f"{dict(statuses)}; {provider.lines} sends of {enrollments * STEPS} steps, "
        f"{duplicates} duplicates"
    )
