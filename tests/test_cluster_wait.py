"""`redis.wait_replicas` on a cluster with a replica per primary: WAIT goes to the node that
took each write, and an enrollment acknowledged just before its primary is killed is found
on the replica that took over.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from seqd import ids
from seqd.errors import NotFound
from seqd.store.client import UNAVAILABLE
from seqd.store.db import Store, connect
from seqd.store.enrollments import EnrollItem
from seqd.store.replication import ReplicasBehind, ReplicaWait
from tests.clusterutil import ValkeyCluster, running
from tests.dispatchutil import TENANT, contacts, sequence, sms

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    """3 primaries with a replica each, this module's own (its last test kills a primary)."""
    with running(tmp_path_factory.mktemp("waitcluster"), replicas=1) as cluster:
        yield cluster


@pytest.fixture
async def store(replicated: ValkeyCluster, prefix: str) -> AsyncIterator[Store]:
    s = await Store.open(connect(replicated.url), prefix, 16, wait=ReplicaWait(1, 500))
    yield s
    await s.close()


def _replica_of(primary: int) -> int:
    with redis.Redis(port=primary, decode_responses=True) as node:
        return int(node.info("replication")["slave0"]["port"])


async def test_each_write_waits_for_the_replica_of_the_node_that_took_it(
    replicated: ValkeyCluster, store: Store
) -> None:
    """One replica stopped: enrollments in its primary's shards answer ReplicasBehind, the
    others are acknowledged, in the same call of several shards as alone."""
    seq = await sequence(store, sms(wait=60))
    cids = await contacts(store, 48)
    stopped = replicated.primary_ports()[0]
    owner = {c: replicated.owner(store.keys.shard_tag(ids.shard_of(c, 16))) for c in cids}
    on_stopped = [c for c in cids if owner[c] == stopped]
    elsewhere = [c for c in cids if owner[c] != stopped]
    assert on_stopped and elsewhere
    [there] = await store.enrollments.enroll(TENANT, seq, [EnrollItem(on_stopped[0], {})])
    assert there.id is not None
    replica = replicated.node(_replica_of(stopped)).process
    assert replica is not None
    replica.send_signal(signal.SIGSTOP)
    try:
        done = await store.enrollments.enroll(TENANT, seq, [EnrollItem(c, {}) for c in elsewhere])
        assert all(r.id for r in done)
        with pytest.raises(ReplicasBehind, match=f"replicas of 127.0.0.1:{stopped}"):
            await store.enrollments.enroll(TENANT, seq, [EnrollItem(c, {}) for c in cids])
        with pytest.raises(ReplicasBehind):
            await store.enrollments.transition(TENANT, there.id, "pause")
    finally:
        replica.send_signal(signal.SIGCONT)
    # Acknowledged once the replica is back: the pause the refusal left on the primary.
    paused = await store.enrollments.get(TENANT, there.id)
    assert paused.status == "paused"


async def test_enrollments_acknowledged_before_their_primary_is_killed_survive_the_failover(
    replicated: ValkeyCluster, store: Store
) -> None:
    seq = await sequence(store, sms(wait=60))
    cids = await contacts(store, int(os.environ.get("SEQD_WAIT_CONTACTS", "400")))
    victim = replicated.primary_ports()[0]
    victims = {s for s in range(16) if replicated.owner(store.keys.shard_tag(s)) == victim}
    acknowledged: list[str] = []
    failed = 0
    killed = asyncio.Event()

    async def enroll_one_by_one() -> None:
        nonlocal failed
        for cid in cids:
            try:
                [result] = await store.enrollments.enroll(TENANT, seq, [EnrollItem(cid, {})])
            except (*UNAVAILABLE, ReplicasBehind):  # the gap: 503s, counted
                failed += 1
                await asyncio.sleep(0.05)
                continue
            assert result.id is not None
            acknowledged.append(result.id)
            if len(acknowledged) == len(cids) // 4:
                killed.set()

    writer = asyncio.create_task(enroll_one_by_one())
    await killed.wait()
    replicated.node(victim).kill()  # SIGKILL: no time to pass anything more on
    await writer
    await asyncio.to_thread(replicated.wait_ok, 30.0)
    assert victim not in replicated.primary_ports()
    on_victim = [e for e in acknowledged if ids.shard_of(e, 16) in victims]
    assert on_victim
    missing = []
    for eid in acknowledged:
        try:
            got = await store.enrollments.get(TENANT, eid)
        except NotFound:
            missing.append(eid)
            continue
        assert got.status == "active"
    assert missing == [], f"{len(missing)} acknowledged enrollments lost"
    print(
        f"\nwait_replicas failover: {len(acknowledged)} acknowledged ({len(on_victim)} on "
        f"shards now served by the promoted replica), {failed} refused during the gap, 0 lost"
    )
