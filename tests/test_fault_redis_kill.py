"""Redis SIGKILLed under a running `seqd serve` and restarted from its AOF.

While Redis is away the process must stay up and answer 503 problem+json (never 500);
when it is back every part resumes: the dispatcher sends the rest, the outbox reader
fans out, the deliverer delivers webhooks, the intake consumer enrolls, /readyz is 200.
What may be lost is what `appendfsync` allows: with `always` no acknowledged write
(an enrollment answered 201 is there after the restart); with `everysec` up to about a
second of them, and a step whose advance was lost is sent once more. Size:
`SEQD_FAULT_REDIS_ENROLLMENTS` (default 1000 × 3 steps), `SEQD_FAULT_OUTAGE_MS` (2000).
And a SIGTERM while Redis is away or just back drains in time and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from seqd import ids
from seqd.store.db import Store, connect
from tests.conftest import ValkeyProcess
from tests.dispatchutil import TENANT, contacts, sequence, sms
from tests.faultutil import LogTail, counter_mismatches, seed, size, wait_for
from tests.opsutil import Daemon
from tests.webhookutil import endpoint, receiving

STEPS = 3


@pytest.mark.slow
@pytest.mark.parametrize("fsync", ["always", "everysec"])
async def test_redis_killed_and_restarted_from_aof(
    valkey_factory: type[ValkeyProcess], prefix: str, tmp_path: Path, fsync: str
) -> None:
    n, outage = size("REDIS_ENROLLMENTS", 1000), size("OUTAGE_MS", 2000) / 1000
    server = valkey_factory("--appendonly", "yes", "--appendfsync", fsync)  # type: ignore[arg-type]
    server.start()
    store = await Store.open(connect(server.url), prefix, 4)
    provider = LogTail(tmp_path / "provider.log")
    daemon: Daemon | None = None
    try:
        async with receiving() as receiver, aiohttp.ClientSession() as http:
            sid, eids = await seed(store, [sms(f"step {i}") for i in range(STEPS)], n)
            later = await sequence(store, sms("later", wait=600))
            writer_cids = await contacts(store, 3000)
            await endpoint(store, receiver.url(), ["sequence.step.sent"])
            _, secret = await store.tenants.create_key(TENANT)
            auth = {"Authorization": f"Bearer {secret}"}
            daemon = Daemon(
                server.url,
                prefix,
                tmp_path / "seqd",
                SEQD_CHANNELS_LOG_PATH=str(provider.path),
                SEQD_DISPATCH_LEASE_SECONDS="5",
                SEQD_DISPATCH_BATCH_SIZE="100",
                SEQD_WEBHOOKS_ALLOW_PRIVATE_TARGETS="true",
                SEQD_WEBHOOKS_IDLE_POLL_MS="50",
                SEQD_WEBHOOKS_LEASE_SECONDS="3",
                SEQD_WEBHOOKS_TIMEOUT_SECONDS="2",
            ).start()
            # The dispatcher starts before the HTTP listener: wait for it, or the writer's
            # first POST can find no one listening.
            await asyncio.to_thread(daemon.wait_healthy)
            api = daemon.url + "/v1"

            def alive() -> None:
                assert daemon is not None and daemon.process is not None
                assert daemon.process.poll() is None, daemon.stderr()

            async def a_third_sent() -> bool:
                alive()
                return provider.read() >= n * STEPS // 3

            # Writes acknowledged to the API up to the kill: enrollments answered 201.
            acked: list[str] = []
            answers: dict[int, int] = {}
            down = asyncio.Event()

            async def writer() -> None:
                for cid in writer_cids:
                    async with http.post(
                        f"{api}/sequences/{later.id}/enrollments",
                        json={"contact_id": cid},
                        headers=auth,
                    ) as resp:
                        body = await resp.json(content_type=None)
                        if resp.status == 201:
                            acked.append(body["enrollment"]["id"])
                        elif down.is_set():
                            return
                        else:
                            unhandled = [
                                line
                                for line in daemon.stderr().splitlines()
                                if "http.unhandled" in line
                            ]
                            raise AssertionError((resp.status, body, unhandled))

            await wait_for(a_third_sent, 30, "a third of the steps to be sent")
            writing = asyncio.create_task(writer())
            await asyncio.sleep(0.5)
            down.set()
            server.kill()
            killed = time.monotonic()
            # Redis is away: every store-backed route answers 503 problem+json.
            routes = [
                ("GET", f"{api}/sequences/{sid}", None),
                ("GET", f"{api}/contacts?limit=5", None),
                ("POST", f"{api}/sequences/{later.id}/enrollments", {"contact_id": eids[0]}),
                ("GET", daemon.url + "/readyz", None),
            ]
            while time.monotonic() - killed < outage:
                for method, url, body in routes:
                    async with http.request(method, url, json=body, headers=auth) as resp:
                        answers[resp.status] = answers.get(resp.status, 0) + 1
                        assert resp.status == 503, (url, resp.status, await resp.text())
                        if "readyz" not in url:
                            assert resp.content_type == "application/problem+json"
                            assert resp.headers["Retry-After"] == "1"
                async with http.get(daemon.url + "/healthz") as resp:
                    assert resp.status == 200  # the process itself is fine
                async with http.get(daemon.url + "/metrics") as resp:
                    assert resp.status == 200  # its own figures, and the store down
                    assert "seqd_store_up 0.0" in await resp.text()
                alive()
                await asyncio.sleep(0.05)
            await writing
            sent_before = provider.read()
            webhooks_before = len(receiver.requests)
            server.start()  # same port and directory: loads the AOF
            outage_s = time.monotonic() - killed
            await store.client.connection_pool.disconnect()  # the test's own stale sockets

            # Everything resumes: dispatcher, reader, deliverer, intake consumer, readiness.
            await store.client.xadd(
                store.keys.intake(),
                {"tenant": TENANT, "sequence_id": later.id, "contact_id": writer_cids[-1]},
            )

            async def all_done() -> bool:
                alive()
                stats = (await store.sequences.stats([sid]))[sid]
                return stats.completed == n

            await wait_for(all_done, 60, "every enrollment to complete")

            async def resumed() -> bool:
                alive()
                backlog = sum([await store.client.xlen(store.keys.outbox(s)) for s in range(4)])
                intake = await store.client.xlen(store.keys.intake())
                return backlog == 0 and intake == 0 and len(receiver.requests) > webhooks_before

            await wait_for(resumed, 30, "the outbox, intake and webhooks to resume")
            async with http.get(daemon.url + "/readyz") as resp:
                assert resp.status == 200, await resp.text()
            last = writer_cids[-1]  # enrolled by the intake consumer, not the writer
            contact = store.keys.contact(ids.shard_of(last, store.shards), last)
            assert await store.client.hget(contact, f"e:{later.id}")

            # Loss: acknowledged enrollments missing after the restart.
            lost = 0
            for eid in acked:
                async with http.get(f"{api}/enrollments/{eid}", headers=auth) as resp:
                    assert resp.status in (200, 404)
                    lost += resp.status == 404
            if fsync == "always":
                assert lost == 0
            daemon.signal(signal.SIGTERM)
            assert daemon.wait() == 0, daemon.stderr()
            provider.read()
            sent = provider.sent
            assert set(sent) == {(eid, step) for eid in eids for step in range(STEPS)}
            assert max(sent.values()) <= 2  # one outage: at most one re-send per step
            assert await counter_mismatches(store, sid) == []
            assert await counter_mismatches(store, later.id) == []
            # Nothing but the expected complaints: no unretrieved task exception, no crash.
            expected = {
                "dispatch.round_failed",
                "dispatch.recovery_failed",
                "events.read_failed",
                "webhook.round_failed",
                "webhook.finish_failed",
                "intake.batch_failed",
            }
            errors = {
                str(record.get("event"))
                for line in daemon.stderr().splitlines()
                for record in [json.loads(line) if line.startswith("{") else {"event": line}]
                if record.get("level", "error") not in ("debug", "info", "warning")
            }
            assert errors <= expected, errors - expected
            failures = {
                e: daemon.stderr().count(f'"{e}"')
                for e in ("dispatch.round_failed", "events.read_failed", "webhook.round_failed")
            }
            print(
                f"\nredis kill ({fsync}): outage {outage_s:.2f} s, answers {answers}, "
                f"{sent_before} sends before the restart, {provider.lines} in all for "
                f"{n * STEPS} steps ({sum(v - 1 for v in sent.values())} duplicates), "
                f"{len(acked)} enrollments acknowledged before the kill, {lost} lost, "
                f"failed rounds logged per loop {failures}"
            )
    finally:
        if daemon is not None:
            daemon.stop()
        await store.close()


@pytest.mark.slow
@pytest.mark.parametrize("store", ["down", "just restarted"])
async def test_sigterm_with_the_store_down_or_just_back_drains_in_time(
    valkey_factory: type[ValkeyProcess], prefix: str, tmp_path: Path, store: str
) -> None:
    """SIGTERM while Redis is away, or a moment after it came back from its AOF (stale
    pooled connections, loops in their back-off): every part stops, each within its
    grace, and the process exits 0 well within the drain timeout's bound."""
    server = valkey_factory("--appendonly", "yes", "--appendfsync", "everysec")  # type: ignore[arg-type]
    server.start()
    daemon = Daemon(
        server.url, prefix, tmp_path / "seqd", SEQD_DISPATCH_DRAIN_TIMEOUT_SECONDS="2"
    ).start()
    try:
        await asyncio.to_thread(daemon.wait_healthy)
        server.kill()

        async def failing() -> bool:  # the loops found the store gone
            return '"dispatch.round_failed"' in daemon.stderr()

        await wait_for(failing, 30, "the dispatcher to see the store gone")
        if store == "just restarted":
            server.start()
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert await asyncio.to_thread(daemon.wait, 20.0) == 0, daemon.stderr()
        assert time.monotonic() - started < 15.0
        assert '"service.stopped"' in daemon.stderr()
        assert '"service.task_not_cancelled"' not in daemon.stderr()
    finally:
        daemon.stop()
