"""Slots moved between primaries (`valkey-cli --cluster reshard`) while `seqd serve`
dispatches a burst: the keys of the shards on them migrate under the running scripts
(ASK, TRYAGAIN, then MOVED), and every step is still sent, none twice.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from seqd.store.db import Store, connect
from tests.clusterutil import ValkeyCluster, running
from tests.dispatchutil import queued, sms
from tests.faultutil import LogTail, counter_mismatches, seed, size, wait_for
from tests.opsutil import Daemon

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

STEPS = 2


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ValkeyCluster]:
    """A cluster of the test's own: its slots move."""
    with running(tmp_path / "cluster") as own:
        yield own


@pytest.fixture
async def store(cluster: ValkeyCluster, prefix: str) -> AsyncIterator[Store]:
    s = await Store.open(connect(cluster.url), prefix, 16)
    yield s
    await s.close()


async def test_slots_moved_during_a_burst_lose_no_step_and_send_none_twice(
    cluster: ValkeyCluster, store: Store, prefix: str, tmp_path: Path
) -> None:
    enrollments = size("ENROLLMENTS", 600)
    provider = LogTail(tmp_path / "provider.log")
    daemon = Daemon(
        cluster.url,
        prefix,
        tmp_path / "seqd",
        SEQD_CHANNELS_LOG_PATH=str(provider.path),
        SEQD_DISPATCH_BATCH_SIZE="20",
        SEQD_DISPATCH_CONCURRENCY="8",
    ).start()
    try:
        await asyncio.to_thread(daemon.wait_healthy)
        sid, eids = await seed(store, [sms(f"step {i}") for i in range(STEPS)], enrollments)
        # Shards 0 and 1 hash into the first 2 of 16 slot ranges: on the primary of slot 0.
        moved = [store.keys.shard_tag(0), store.keys.shard_tag(1)]
        first = cluster.owner(moved[0])
        assert cluster.owner(moved[1]) == first
        second = next(port for port in cluster.primary_ports() if port != first)

        async def some_sent() -> bool:
            return provider.read() >= enrollments // 2

        await wait_for(some_sent, 60, "a quarter of the burst at the provider")
        # The source's lowest slots go first: 2,500 of them hold shards 0 and 1.
        before = provider.read()
        await asyncio.to_thread(cluster.reshard, first, second, 2500)
        during = provider.read() - before
        assert {cluster.owner(tag) for tag in moved} == {second}

        async def all_done() -> bool:
            assert daemon.process is not None
            assert daemon.process.poll() is None, daemon.stderr()[-4000:]
            stats = (await store.sequences.stats([sid]))[sid]
            return stats.completed == enrollments

        await wait_for(all_done, 120, "every enrollment to complete after the move")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.stderr()[-4000:]
    finally:
        daemon.stop()
    provider.read()
    sent = provider.sent
    lost = {(eid, step) for eid in eids for step in range(STEPS)} - set(sent)
    assert not lost, sorted(lost)[:5]
    twice = {step: n for step, n in sent.items() if n > 1}
    assert not twice, twice
    assert await counter_mismatches(store, sid) == []
    assert await queued(store) == 0
    print(f"\nreshard: {during} of {enrollments * STEPS} steps sent while 2,500 slots moved")
