"""The intake split into several streams (`intake.streams`): writers pick one by the hash of
the request_id (docs/redis-intake.md), the plain name keeps working, every process reads
them all. On the cluster (slow tier) each stream is a slot of its own."""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator

import pytest
import redis
from aiohttp.test_utils import TestServer
from redis.crc import key_slot

from seqd import intake, service
from seqd.api.app import create_app
from seqd.appkeys import LIVENESS
from seqd.config import Config, IntakeConfig, is_cluster_url
from seqd.store import backlog
from seqd.store.db import Store, connect
from seqd.times import now_ms
from tests import test_intake
from tests.test_intake import SMS_ONLY, _contacts, _eventually

# The writer of test_intake: plain redis-py, its cluster client on a cluster.
writer = test_intake.writer

SPLIT = 4


@pytest.fixture
async def store(store_url: str, prefix: str) -> AsyncIterator[Store]:
    s = await Store.open(connect(store_url), prefix, 4, intake_streams=SPLIT)
    await s.tenants.create_key("acme")
    yield s
    await s.close()


def _stream_of(store: Store, request_id: str) -> str:
    """As docs/redis-intake.md tells a writer: CRC-32 of the request_id, modulo the count."""
    return f"{store.keys.prefix}:intake:{zlib.crc32(request_id.encode()) % SPLIT}"


async def test_entries_written_to_every_split_stream_and_the_plain_one_are_all_enrolled(
    store: Store, writer: redis.Redis, store_url: str
) -> None:
    seq = (await store.sequences.create("acme", SMS_ONLY)).id
    contacts = await _contacts(store, "acme", 40)
    names = [store.keys.intake(i) for i in store.keys.intake_streams()]
    assert names == [f"{store.keys.prefix}:intake"] + [
        f"{store.keys.prefix}:intake:{n}" for n in range(SPLIT)
    ]
    assert len({key_slot(n.encode()) for n in names}) == len(names)
    # Written before any seqd reads them: found all the same.
    for i, cid in enumerate(contacts):
        rid = f"rq-{i}"
        fields = {"tenant": "acme", "sequence_id": seq, "contact_id": cid, "request_id": rid}
        target = store.keys.intake() if i % 8 == 0 else _stream_of(store, rid)
        writer.xadd(target, fields)  # type: ignore[arg-type]
        writer.xadd(target, fields)  # a writer's retry: a no-op
    used = {_stream_of(store, f"rq-{i}") for i in range(40) if i % 8}
    assert len(used) == SPLIT
    snap = await backlog.read(store, now_ms())
    assert snap.intake.length == 80
    config = Config(intake=IntakeConfig(streams=SPLIT, consumers=4, block_ms=50))
    app = create_app(config, store)
    app.cleanup_ctx.append(service.background(intake.part, config))
    async with TestServer(app):
        # ceil(4 consumers / 5 streams): one on each stream.
        running = [n for n in app[LIVENESS].running() if n.startswith("intake")]
        assert running == [f"intake-{i}" for i in range(1, 6)]

        async def all_enrolled() -> bool:
            return (await store.sequences.stats([seq]))[seq].active == 40

        await _eventually(all_enrolled, 10)

        async def drained() -> bool:
            return (await backlog.read(store, now_ms())).intake.length == 0

        await _eventually(drained, 10)
    for i, cid in enumerate(contacts):
        rid = f"rq-{i}"
        stream = None if i % 8 == 0 else zlib.crc32(rid.encode()) % SPLIT
        outcome = writer.get(store.keys.intake_result("acme", rid, stream))
        assert outcome is not None, rid
        assert json.loads(outcome)["contact_id"] == cid
    if is_cluster_url(store_url):
        # Each stream with its companions in its own slot: one MULTI finishes an entry.
        for i in store.keys.intake_streams():
            slot = key_slot(store.keys.intake(i).encode())
            assert key_slot(store.keys.intake_rejected(i).encode()) == slot
            assert key_slot(store.keys.intake_result("acme", "x", i).encode()) == slot


async def test_an_entry_rejected_on_a_split_stream_is_kept_beside_it(
    store: Store, writer: redis.Redis
) -> None:
    stream = store.keys.intake(2)
    writer.xadd(stream, {"tenant": "acme", "sequence_id": "seq_nope", "colour": "red"})
    consumer = intake.Intake(Config(), store, consumer="c", stream=2)
    await consumer.stream.ensure_group()
    try:
        assert await consumer.run_once(block_ms=0) == 1
    finally:
        await consumer.stream.close()
    [(_, fields)] = writer.xrange(store.keys.intake_rejected(2))
    assert fields[b"field"] == b"colour" and fields[b"reason"] == b"invalid"
    assert writer.xlen(store.keys.intake_rejected()) == 0
    assert (await backlog.read(store, now_ms())).intake_rejected == 1
