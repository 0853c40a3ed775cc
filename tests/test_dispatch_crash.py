"""A real `seqd serve` killed with SIGKILL mid-run loses no step and sends none three times.

The provider is the `log` channel writing to a named pipe that this test reads: every
line that enters the pipe has reached the provider (lines are written whole, one write(2)
each, shorter than PIPE_BUF). Holding the reader mid-run fills the pipe, so the daemon
blocks in the middle of a batch: some of its lines have gone out, none of its claims is
settled. That is the moment of the kill, every time, not by luck of timing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from aiohttp import web

from seqd.store.claims import is_unsettled
from seqd.store.db import Store, connect
from tests.conftest import ValkeyProcess
from tests.dispatchutil import TENANT, enroll, queued, sequence, sms
from tests.faultutil import seed, wait_for
from tests.opsutil import Daemon, free_port

ENROLLMENTS = 2000
STEPS = 3


class PipeProvider(threading.Thread):
    """Reads whole lines from a FIFO, writer after writer, until closed; `hold` pauses it."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        os.mkfifo(path)
        self.path = path
        self.lines: list[dict[str, object]] = []
        self.hold = threading.Event()
        self.closed = False

    def run(self) -> None:
        while not self.closed:
            with open(self.path, "rb") as pipe:  # blocks until a writer opens the FIFO
                for line in pipe:
                    self.lines.append(json.loads(line))
                    while self.hold.is_set() and not self.closed:
                        time.sleep(0.001)

    def close(self) -> None:
        self.closed = True
        self.hold.clear()
        deadline = time.monotonic() + 5
        while self.is_alive() and time.monotonic() < deadline:
            # A reader blocked in open() waits for a writer: be one, briefly.
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # ENXIO: the reader is not in open() right now
                pass
            self.join(0.05)


async def _seed(store: Store) -> tuple[str, list[str]]:
    seq = await sequence(store, *(sms(f"step {i} for {{{{first_name}}}}") for i in range(STEPS)))
    cids: list[str] = []
    for start in range(0, ENROLLMENTS, 50):
        batch = await asyncio.gather(
            *(
                store.contacts.create(TENANT, {"first_name": f"c{i}", "phone": f"+1415{i:07d}"})
                for i in range(start, start + 50)
            )
        )
        cids += [c.id for c in batch]
    enrolled = await enroll(store, seq, cids)
    return seq.id, [e.id for e in enrolled]


async def _wait_for(predicate, seconds: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.mark.slow  # a fault test: a daemon killed mid-run and restarted
async def test_sigkill_mid_run_loses_no_step_and_restart_completes_all(
    valkey_factory: type[ValkeyProcess], prefix: str, tmp_path: Path
) -> None:
    server = valkey_factory()  # type: ignore[call-arg]
    server.start()
    store = await Store.open(connect(server.url), prefix, 4)
    provider = PipeProvider(tmp_path / "provider.pipe")
    provider.start()
    try:
        sid, eids = await _seed(store)
        total = ENROLLMENTS * STEPS
        env = {
            "SEQD_CHANNELS_LOG_PATH": str(provider.path),
            "SEQD_DISPATCH_BATCH_SIZE": "100",
        }
        first = Daemon(server.url, prefix, tmp_path / "first", **env).start()
        try:

            async def a_third_sent() -> bool:
                assert first.process is not None
                assert first.process.poll() is None, first.stderr()
                return len(provider.lines) >= total // 3

            await _wait_for(a_third_sent, 30, "the first process to send a third of the steps")
            provider.hold.set()
            await asyncio.sleep(0.5)  # the pipe fills; the daemon blocks mid-batch
            first.signal(signal.SIGKILL)
            first.wait()
        finally:
            first.stop()
        # Claims the dead process never settled: these steps come back when its heartbeat
        # is gone (seconds), not after the lease (60 s).
        pipe = store.client.pipeline(transaction=False)
        for eid in eids:
            pipe.zscore(store.keys.queue(_shard(store, eid), sid), eid)
        assert any(is_unsettled(score) for score in await pipe.execute())
        provider.hold.clear()

        second = Daemon(server.url, prefix, tmp_path / "second", **env).start()
        try:

            async def all_done() -> bool:
                stats = (await store.sequences.stats([sid]))[sid]
                return stats.completed == ENROLLMENTS

            await _wait_for(all_done, 60, "every enrollment to complete")
            second.signal(signal.SIGTERM)
            assert second.wait() == 0, second.stderr()
        finally:
            second.stop()
        provider.close()

        sent = Counter((line["enrollment_id"], line["step"]) for line in provider.lines)
        expected = {(eid, step) for eid in eids for step in range(STEPS)}
        assert set(sent) == expected  # every step reached the provider at least once
        assert max(sent.values()) <= 2  # and at most twice
        # The kill did hit steps between their send and their advance: sent twice.
        assert Counter(sent.values())[2] > 0
        stats = (await store.sequences.stats([sid]))[sid]
        assert (stats.completed, stats.active, stats.paused, stats.cancelled) == (
            ENROLLMENTS,
            0,
            0,
            0,
        )
        # Nothing is left scheduled.
        assert await queued(store) == 0
    finally:
        provider.close()
        await store.close()


def _shard(store: Store, eid: str) -> int:
    from seqd import ids

    return ids.shard_of(eid, store.shards)


class HoldingTwilio:
    """A Messages API on loopback that records every request it receives (the `To`) and,
    once `holding`, answers none: the sends then stay in flight in the process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[str] = []
        self.answered = 0
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def messages(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.received.append(str(form["To"]))
        if self.holding.is_set():
            await self.release.wait()
            raise web.HTTPServiceUnavailable()
        self.answered += 1
        return web.json_response({"sid": f"SM{len(self.received):032d}"}, status=201)


@pytest.mark.slow
async def test_after_a_sigkill_hold_pauses_only_steps_whose_send_had_started(
    valkey_factory: type[ValkeyProcess], prefix: str, tmp_path: Path
) -> None:
    # 400 SMS steps to a provider that answers the first 100 and then holds every request.
    # The process (20 sends at most in flight, batches of 50) is killed while its sends
    # hang. With on_unknown = hold, the steps paused `delivery_unknown` must all have
    # reached the provider: a step leased and never handed to it is sent normally later.
    n = 400
    server = valkey_factory()  # type: ignore[call-arg]
    server.start()
    store = await Store.open(connect(server.url), prefix, 4)
    fake = HoldingTwilio()
    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", fake.messages)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", fake.port).start()
    env = {
        "SEQD_CHANNELS_SMS": "twilio",
        "SEQD_CHANNELS_TWILIO_BASE_URL": f"http://127.0.0.1:{fake.port}",
        "SEQD_CHANNELS_TWILIO_ACCOUNT_SID": "AC1",
        "SEQD_CHANNELS_TWILIO_AUTH_TOKEN": "token",
        "SEQD_CHANNELS_TWILIO_FROM_NUMBER": "+15550001111",
        "SEQD_DISPATCH_ON_UNKNOWN": "hold",
        "SEQD_DISPATCH_BATCH_SIZE": "50",
        "SEQD_DISPATCH_CONCURRENCY": "20",
        "SEQD_WEBHOOKS_ENABLED": "false",
    }
    try:
        sid, eids = await seed(store, [sms("only step")], n)
        phone_of = {}
        for eid in eids:
            enrollment = await store.enrollments.get(TENANT, eid)
            contact = await store.contacts.get(TENANT, enrollment.contact_id)
            phone_of[eid] = contact.phone

        first = Daemon(server.url, prefix, tmp_path / "first", **env).start()
        try:

            async def a_hundred_answered() -> bool:
                assert first.process is not None
                assert first.process.poll() is None, first.stderr()
                if fake.answered >= 100:
                    fake.holding.set()
                return fake.holding.is_set()

            await wait_for(a_hundred_answered, 60, "100 sends answered")
            # The sends in flight reach the provider, then nothing more comes.
            seen = -1
            steady_since = time.monotonic()

            async def steady() -> bool:
                nonlocal seen, steady_since
                if len(fake.received) != seen:
                    seen, steady_since = len(fake.received), time.monotonic()
                return time.monotonic() - steady_since > 1.0

            await wait_for(steady, 30, "the sends in flight to arrive")
            first.signal(signal.SIGKILL)
            first.wait()
        finally:
            first.stop()
        received_first = set(fake.received)
        in_flight = len(fake.received) - fake.answered
        fake.holding.clear()
        fake.release.set()

        second = Daemon(server.url, prefix, tmp_path / "second", **env).start()
        try:

            async def settled() -> bool:
                stats = (await store.sequences.stats([sid]))[sid]
                return stats.completed + stats.paused == n

            await wait_for(settled, 60, "every enrollment to complete or be held")
            await asyncio.to_thread(second.wait_healthy)
            second.signal(signal.SIGTERM)
            assert second.wait() == 0, second.stderr()
        finally:
            second.stop()
        paused = [
            eid
            for eid in eids
            if (await store.enrollments.get(TENANT, eid)).paused_reason == "delivery_unknown"
        ]
        assert paused, "the kill caught sends in flight"
        never_sent = [eid for eid in paused if phone_of[eid] not in received_first]
        assert never_sent == [], f"held without a send started: {len(never_sent)}"
        stats = (await store.sequences.stats([sid]))[sid]
        assert (stats.completed, stats.paused, stats.cancelled) == (n - len(paused), len(paused), 0)
        print(
            f"\nhold after a SIGKILL: {len(paused)} held, {in_flight} sends in flight at the "
            f"kill, {fake.answered} answered in all, 0 held that had not reached the provider"
        )
    finally:
        await runner.cleanup()
        await store.close()
