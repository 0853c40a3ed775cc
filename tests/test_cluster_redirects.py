"""A shard's slot moved by hand, step by step, as `valkey-cli --cluster reshard` moves it,
with enrollments made at each step through the store with and without
`redis.wait_replicas`: TRYAGAIN while the script's keys are split between the nodes (the
caller sees an error the API answers 503, and nothing is written), ASK once they have all
left (followed), MOVED once the slot is the target's (followed, the client's slot map
updated). An acknowledged write is on the target's replica when it answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from redis.crc import key_slot
from redis.exceptions import ClusterError, TryAgainError

from seqd import ids
from seqd.store.client import UNAVAILABLE
from seqd.store.db import Store, connect
from seqd.store.enrollments import EnrollItem
from seqd.store.replication import ReplicaWait
from tests.clusterutil import ValkeyCluster, running
from tests.dispatchutil import TENANT, contacts_in_shard, sequence, sms

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

SHARDS = 16
SHARD = 3


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    with running(tmp_path_factory.mktemp("redirects"), replicas=1) as cluster:
        yield cluster


@pytest.fixture
async def stores(replicated: ValkeyCluster, prefix: str) -> AsyncIterator[tuple[Store, Store]]:
    waiting = await Store.open(connect(replicated.url), prefix, SHARDS, wait=ReplicaWait(1, 2000))
    plain = await Store.open(connect(replicated.url), prefix, SHARDS)
    yield waiting, plain
    await waiting.close()
    await plain.close()


def _id(port: int) -> str:
    with redis.Redis(port=port, decode_responses=True) as node:
        return str(node.execute_command("CLUSTER", "MYID"))


def _migrate(source: int, target: int, keys: list[str]) -> None:
    with redis.Redis(port=source, decode_responses=True) as node:
        node.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)


def _keys_in(port: int, slot: int) -> list[str]:
    with redis.Redis(port=port, decode_responses=True) as node:
        return list(node.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10_000))


def _on_replica(cluster: ValkeyCluster, primary: int, key: str) -> dict[str, str]:
    with redis.Redis(port=primary, decode_responses=True) as node:
        replica = int(node.info("replication")["slave0"]["port"])
    with redis.Redis(port=replica, decode_responses=True) as node:
        node.execute_command("READONLY")
        # (ASKING: while the slot is still the source's, the target's replica serves it too.)
        pipe = node.pipeline(transaction=False)
        pipe.execute_command("ASKING")
        pipe.hgetall(key)
        return dict(pipe.execute()[1])


async def _enroll(store: Store, seq: object, cid: str) -> str:
    [result] = await store.enrollments.enroll(TENANT, seq, [EnrollItem(cid, {})])  # type: ignore[arg-type]
    assert result.id is not None, result
    return result.id


async def test_an_enrollment_meets_tryagain_ask_and_moved_while_its_slot_moves(
    replicated: ValkeyCluster, stores: tuple[Store, Store]
) -> None:
    waiting, plain = stores
    seq = await sequence(waiting, sms(wait=60))
    cids = await contacts_in_shard(waiting, 6, SHARD)
    await _enroll(waiting, seq, cids[0])  # the shard's outbox and heads exist
    tag = waiting.keys.shard_tag(SHARD)
    slot = key_slot(tag.encode())
    source = replicated.owner(tag)
    target = next(p for p in replicated.primary_ports() if p != source)
    with redis.Redis(port=target) as node:
        node.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", _id(source))
    with redis.Redis(port=source) as node:
        node.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", _id(target))

    # TRYAGAIN: the outbox has left, the heads have not: the script runs on neither node.
    # The caller sees an error the API answers 503 with: TryAgainError, or redis-py's
    # "TTL exhausted" once it has followed TRYAGAIN as often as it does.
    _migrate(source, target, [waiting.keys.outbox(SHARD)])
    for store, cid in ((waiting, cids[1]), (plain, cids[2])):
        with pytest.raises(UNAVAILABLE) as caught:
            await _enroll(store, seq, cid)
        assert isinstance(caught.value, TryAgainError | ClusterError), caught.value
    assert len(await _all(waiting, seq.id)) == 1  # refused, and nothing written

    # ASK: every key of the slot is on the target; the source still serves the slot.
    _migrate(source, target, _keys_in(source, slot))
    assert _keys_in(source, slot) == []
    asked = await _enroll(waiting, seq, cids[3])
    assert _on_replica(replicated, target, waiting.keys.enrollment(SHARD, asked))["st"] == "active"
    await _enroll(plain, seq, cids[4])

    # MOVED: the slot is the target's; the clients' maps still say the source.
    for port in replicated.primary_ports():
        with redis.Redis(port=port) as node:
            node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", _id(target))
    moved = await _enroll(waiting, seq, cids[5])
    assert _on_replica(replicated, target, waiting.keys.enrollment(SHARD, moved))["st"] == "active"
    paused = await waiting.enrollments.transition(TENANT, asked, "pause")
    assert paused.status == "paused"
    assert _on_replica(replicated, target, waiting.keys.enrollment(SHARD, asked))["st"] == "paused"
    made = await _all(waiting, seq.id)
    assert len(made) == 4  # the first, ASK's two, MOVED's one: TRYAGAIN's wrote nothing
    assert all(ids.shard_of(e, SHARDS) == SHARD for e in made)


async def _all(store: Store, sid: str) -> list[str]:
    page, _, _ = await store.enrollments.list(
        TENANT, sid, limit=100, after=None, statuses=["active", "paused"]
    )
    return [e.id for e in page]
