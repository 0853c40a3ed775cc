"""`seqd serve` processes dispatching a burst on a 3-primary Valkey cluster: every step sent,
none twice (no process dies here, so at-least-once allows no duplicate), and with three
processes the work is shared. Size: `SEQD_FAULT_ENROLLMENTS` (default 600 × 2 steps).
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from seqd.store.db import Store, connect
from tests.clusterutil import ValkeyCluster
from tests.dispatchutil import queued, sms
from tests.faultutil import LogTail, counter_mismatches, seed, size, wait_for
from tests.opsutil import Daemon

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

STEPS = 2


@pytest.fixture
async def cluster_store16(valkey_cluster: ValkeyCluster, prefix: str) -> AsyncIterator[Store]:
    """16 shards: spread over the 3 primaries, as a deployment's would be."""
    store = await Store.open(connect(valkey_cluster.url), prefix, 16)
    yield store
    await store.close()


@pytest.mark.parametrize("processes", [1, 3])
async def test_a_burst_is_sent_once_each_by_processes_sharing_a_cluster(
    processes: int,
    valkey_cluster: ValkeyCluster,
    cluster_store16: Store,
    prefix: str,
    tmp_path: Path,
) -> None:
    store = cluster_store16
    enrollments = size("ENROLLMENTS", 600)
    logs = [LogTail(tmp_path / f"provider{n}.log") for n in range(processes)]
    daemons = [
        Daemon(
            valkey_cluster.url,
            prefix,
            tmp_path / f"seqd{n}",
            SEQD_CHANNELS_LOG_PATH=str(log.path),
            SEQD_DISPATCH_BATCH_SIZE="50",
        ).start()
        for n, log in enumerate(logs)
    ]
    try:
        for daemon in daemons:
            daemon.wait_healthy()
        # Enrolled while the processes run: each finds the steps as they come due.
        sid, eids = await seed(store, [sms(f"step {i}") for i in range(STEPS)], enrollments)

        async def all_done() -> bool:
            for daemon in daemons:
                assert daemon.process is not None
                assert daemon.process.poll() is None, daemon.stderr()[-4000:]
            stats = (await store.sequences.stats([sid]))[sid]
            return stats.completed == enrollments

        await wait_for(all_done, 120, "every enrollment to complete")
        for daemon in daemons:
            daemon.signal(signal.SIGTERM)
        for daemon in daemons:
            assert daemon.wait() == 0, daemon.stderr()[-4000:]
    finally:
        for daemon in daemons:
            daemon.stop()
    sent: Counter[tuple[str, int]] = Counter()
    for log in logs:
        log.read()
        sent.update(log.sent)
    shares = [log.lines for log in logs]
    lost = {(eid, step) for eid in eids for step in range(STEPS)} - set(sent)
    assert not lost, f"lost: {sorted(lost)[:5]}; lines per process {shares}"
    twice = {step: n for step, n in sent.items() if n > 1}
    assert not twice, f"sent more than once: {twice}; lines per process {shares}"
    assert all(log.torn == 0 for log in logs)
    if processes > 1:
        # Leases, not a leader, share the work: more than one process sent steps (which ones
        # and how many is a race of their polls; on a loaded machine one may get none).
        assert sum(1 for n in shares if n > 0) > 1, shares
    assert await counter_mismatches(store, sid) == []
    assert await queued(store) == 0
