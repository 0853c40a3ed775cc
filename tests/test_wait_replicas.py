"""`redis.wait_replicas`: an enrollment or a transition answers only once a replica has it.

On one server with a replica (fast tier): what the API acknowledged is on the replica the
moment it answers; a replica that does not acknowledge (stopped, or none) makes the API
answer 503 `replicas_behind` with Retry-After, and the intake leaves its entries pending.
"""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from seqd import config as configmod
from seqd import ids
from seqd.api.app import create_app
from seqd.config import Config
from seqd.intake import Intake
from seqd.store.db import Store, connect
from seqd.store.replication import ReplicasBehind, ReplicaWait
from tests.conftest import QUIET_OFF, Api, ValkeyProcess
from tests.dispatchutil import TENANT, contacts, enroll, sequence, sms


def _replica_synced(primary: ValkeyProcess, replica: ValkeyProcess) -> bool:
    with redis.Redis(port=replica.port, decode_responses=True) as r:
        if r.info("replication").get("master_link_status") != "up":
            return False
    with redis.Redis(port=primary.port, decode_responses=True) as p:
        return int(p.info("replication").get("connected_slaves", 0)) == 1


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ValkeyProcess, ValkeyProcess]]:
    """A primary and its replica (the tests' prefixes keep them apart)."""
    where = tmp_path_factory.mktemp("pair")
    primary = ValkeyProcess(where / "primary", "--repl-diskless-sync-delay", "0")
    primary.start()
    replica = ValkeyProcess(where / "replica", "--replicaof", "127.0.0.1", str(primary.port))
    try:
        replica.start()
        deadline = time.monotonic() + 10
        while not _replica_synced(primary, replica):
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.02)
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()


@pytest.fixture
async def waiting(pair: tuple[ValkeyProcess, ValkeyProcess], prefix: str) -> AsyncIterator[Store]:
    store = await Store.open(connect(pair[0].url), prefix, 4, wait=ReplicaWait(1, 300))
    yield store
    await store.close()


async def _api(store: Store) -> tuple[TestClient, Api]:  # type: ignore[type-arg]
    _, key = await store.tenants.create_key(TENANT)
    client = TestClient(TestServer(create_app(Config(compliance=QUIET_OFF), store)))
    await client.start_server()
    return client, Api(client, key, store)


async def test_what_the_api_acknowledged_is_on_the_replica_when_it_answers(
    pair: tuple[ValkeyProcess, ValkeyProcess], waiting: Store
) -> None:
    seq = await sequence(waiting, sms(wait=60))
    cids = await contacts(waiting, 20)
    client, api = await _api(waiting)
    try:
        status, one = await api.call(
            "POST", f"/sequences/{seq.id}/enrollments", {"contact_id": cids[0]}
        )
        assert status == 201, one
        status, many = await api.call(
            "POST",
            f"/sequences/{seq.id}/enrollments/batch",
            {"items": [{"contact_id": c} for c in cids[1:]]},
        )
        assert status == 200, many
        eid = one["enrollment"]["id"]  # type: ignore[index]
        status, paused = await api.call("POST", f"/enrollments/{eid}/pause")
        assert status == 200, paused
        made = [eid] + [r["enrollment"]["id"] for r in many["results"]]  # type: ignore[index]
        # Read at once from the replica: WAIT answered, so it has every write.
        async with aioredis.Redis(port=pair[1].port, decode_responses=True) as replica:
            on_replica = {
                e: await replica.hget(waiting.keys.enrollment(ids.shard_of(e, 4), e), "st")
                for e in made
            }
        assert on_replica == {e: "paused" if e == eid else "active" for e in made}
    finally:
        await client.close()


async def test_a_replica_that_does_not_acknowledge_makes_the_api_answer_503(
    pair: tuple[ValkeyProcess, ValkeyProcess], waiting: Store
) -> None:
    seq = await sequence(waiting, sms(wait=60))
    [cid, other] = await contacts(waiting, 2)
    [enrolled] = await enroll(waiting, seq, [other])
    client, api = await _api(waiting)
    replica = pair[1].process
    assert replica is not None
    replica.send_signal(signal.SIGSTOP)
    try:
        path = f"/sequences/{seq.id}/enrollments"
        resp = await client.post("/v1" + path, json={"contact_id": cid}, headers=api.headers())
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        body = await resp.json()
        assert body["type"] == "urn:seqd:problem:replicas_behind"
        assert "0 of 1 replicas" in body["detail"]
        status, problem = await api.call("POST", f"/enrollments/{enrolled.id}/cancel")
        assert (status, problem["type"]) == (503, body["type"])  # type: ignore[index]
        with pytest.raises(ReplicasBehind):
            await enroll(waiting, seq, [cid])
    finally:
        replica.send_signal(signal.SIGCONT)
    # The replica back: the same request is answered (the enrollment the 503 left on the
    # primary, as an idempotent one).
    status, again = await api.call("POST", path, {"contact_id": cid})
    assert status == 200 and again["idempotent"] is True  # type: ignore[index]
    await client.close()


async def test_the_intake_leaves_entries_pending_until_a_replica_has_their_enrollments(
    pair: tuple[ValkeyProcess, ValkeyProcess], waiting: Store
) -> None:
    seq = await sequence(waiting, sms(wait=60))
    [cid] = await contacts(waiting, 1)
    await waiting.tenants.create_key(TENANT)
    config = configmod.load(environ={"SEQD_INTAKE_LEASE_SECONDS": "0.001"})
    intake = Intake(config, waiting, consumer="c1")
    await intake.stream.ensure_group()
    fields = {"tenant": TENANT, "sequence_id": seq.id, "contact_id": cid, "request_id": "r1"}
    await waiting.client.xadd(waiting.keys.intake(), fields)  # type: ignore[arg-type]
    replica = pair[1].process
    assert replica is not None
    replica.send_signal(signal.SIGSTOP)
    try:
        assert await intake.run_once(block_ms=0) == 0
    finally:
        replica.send_signal(signal.SIGCONT)
    assert await waiting.client.get(waiting.keys.intake_result(TENANT, "r1")) is None
    # Past its lease (1 ms), the pending entry is taken over and enrolled.
    assert await intake.run_once(block_ms=0) == 1
    result = await waiting.client.get(waiting.keys.intake_result(TENANT, "r1"))
    assert result is not None and '"enrolled"' in result
    await intake.stream.close()


async def test_with_no_replica_at_all_every_acknowledged_write_is_refused(
    valkey_factory: type[ValkeyProcess], prefix: str
) -> None:
    alone = valkey_factory()
    alone.start()
    store = await Store.open(connect(alone.url), prefix, 4, wait=ReplicaWait(1, 20))
    try:
        seq = await sequence(store, sms())
        cids = await contacts(store, 10)
        with pytest.raises(ReplicasBehind, match="0 of 1 replicas"):
            await enroll(store, seq, cids)  # several shards: one round trip each
    finally:
        await store.close()


def test_the_wait_must_end_before_the_socket_timeout() -> None:
    with pytest.raises(configmod.ConfigError, match="wait_timeout_ms: must be below"):
        configmod.load(
            environ={"SEQD_REDIS_WAIT_REPLICAS": "1", "SEQD_REDIS_WAIT_TIMEOUT_MS": "5000"}
        )
    loaded = configmod.load(environ={"SEQD_REDIS_WAIT_REPLICAS": "2"})
    assert (loaded.redis.wait_replicas, loaded.redis.wait_timeout_ms) == (2, 1000)


async def test_a_primary_that_lost_its_scripts_runs_them_within_the_acknowledged_call(
    pair: tuple[ValkeyProcess, ValkeyProcess], waiting: Store
) -> None:
    """A restarted primary has no scripts: NOSCRIPT, then EVAL, then WAIT for that."""
    seq = await sequence(waiting, sms(wait=60))
    cids = await contacts(waiting, 8)
    await waiting.client.script_flush()
    made = await enroll(waiting, seq, cids)
    async with aioredis.Redis(port=pair[1].port, decode_responses=True) as replica:
        for e in made:
            key = waiting.keys.enrollment(ids.shard_of(e.id, 4), e.id)
            assert await replica.hget(key, "st") == "active"
