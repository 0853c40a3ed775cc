"""`seqd serve --workers N` on real processes: one port served by every worker, a killed
worker replaced while the API keeps answering, sd_notify from the supervisor only, and a
SIGTERM that drains every worker with no step lost or sent twice."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from seqd import config as configmod
from seqd import ids, service, supervisor, systemd
from seqd.store.db import Store
from tests.conftest import ValkeyProcess
from tests.dispatchutil import TENANT, sequence, sms
from tests.faultutil import LogTail, seed, wait_for
from tests.opsutil import Daemon, call
from tests.test_dispatch_crash import PipeProvider
from tests.test_fault_webhook_hang import Receivers
from tests.test_ops_systemd import notify_socket, receive  # noqa: F401 - a fixture
from tests.webhookutil import endpoint

PID = re.compile(rb'^seqd_process\{pid="(\d+)"\} 1\.0$', re.M)


def answering_pid(d: Daemon) -> int:
    """The pid of the worker that answered a /metrics request (a new connection each)."""
    status, body = d.get("/metrics")
    assert status == 200
    found = PID.search(body)
    assert found, body[:200]
    return int(found.group(1))


def pids_answering(d: Daemon, want: int, timeout: float = 20.0) -> set[int]:
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < want:
        assert time.monotonic() < deadline, f"only {seen} answered"
        seen.add(answering_pid(d))
    return seen


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def two_workers(
    valkey: ValkeyProcess, prefix: str, tmp_path: Path, provider: LogTail, **env: str
) -> Daemon:
    """A started `seqd serve` of 2 workers sending through the log channel to `provider`."""
    return Daemon(
        valkey.url,
        prefix,
        tmp_path / "d",
        SEQD_HTTP_WORKERS="2",
        SEQD_CHANNELS_LOG_PATH=str(provider.path),
        **env,
    ).start()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) is not a running worker.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow  # three real processes, a kill and a restart
def test_workers_share_the_port_and_a_killed_one_is_replaced(
    valkey: ValkeyProcess,
    prefix: str,
    tmp_path: Path,
    notify_socket: tuple[str, socket.socket],  # noqa: F811 - the imported fixture
) -> None:
    path, sock = notify_socket
    d = Daemon(
        valkey.url,
        prefix,
        tmp_path / "d",
        SEQD_HTTP_WORKERS="2",
        NOTIFY_SOCKET=path,
        WATCHDOG_USEC="2000000",
    )
    d.start()
    try:
        ready = receive(sock, "READY=1")
        assert "STATUS=ready; 2/2 workers; sending 0.0 steps/s" in ready[-1].split("\n")
        assert d.process is not None
        workers = pids_answering(d, 2)
        assert {parent_of(pid) for pid in workers} == {d.process.pid}

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        # The other worker answers every request while the victim is replaced.
        deadline = time.monotonic() + 30
        replaced: set[int] = set()
        while not replaced:
            assert time.monotonic() < deadline, d.stderr()
            replaced = {answering_pid(d)} - workers
        assert not alive(victim)
        (new,) = replaced
        assert parent_of(new) == d.process.pid
        assert '"supervisor.worker_died"' in d.stderr()
        assert '"returncode":-9' in d.stderr()

        # systemd hears the supervisor only: pings from its loop, then STOPPING on SIGTERM.
        assert any("WATCHDOG=1" in m for m in receive(sock, "WATCHDOG=1"))
        d.signal(signal.SIGTERM)
        receive(sock, "STOPPING=1")
        assert d.wait() == 0, d.stderr()
        assert not any(alive(pid) for pid in (workers | replaced) - {victim})
    finally:
        d.stop()


@pytest.mark.slow  # real processes sending thousands of steps
async def test_sigterm_drains_every_worker_and_no_step_is_lost_or_sent_twice(
    valkey: ValkeyProcess, prefix: str, store: Store, tmp_path: Path
) -> None:
    n, steps = 1500, 2
    sid, eids = await seed(store, [sms("one {{first_name}}"), sms("two")], n)
    # The provider is a FIFO this test reads (test_dispatch_crash.py): held from the start,
    # it blocks both workers mid-batch once full, so the SIGTERM lands with sends in flight.
    provider = PipeProvider(tmp_path / "provider.pipe")
    provider.start()
    env = {"SEQD_CHANNELS_LOG_PATH": str(provider.path), "SEQD_DISPATCH_BATCH_SIZE": "50"}
    first = Daemon(valkey.url, prefix, tmp_path / "first", SEQD_HTTP_WORKERS="2", **env)
    try:
        provider.hold.set()
        first.start()

        async def both_dispatching() -> bool:
            assert first.process is not None and first.process.poll() is None, first.stderr()
            beating = await store.client.zrange(store.keys.workers(), 0, -1)
            return {str(w).rsplit("/", 1)[-1] for w in beating} >= {"0", "1"}

        await wait_for(both_dispatching, 30, "both workers' dispatch heartbeats")
        await asyncio.sleep(0.5)  # the pipe fills; the workers block mid-batch
        first.signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        provider.hold.clear()
        assert first.wait() == 0, first.stderr()
    finally:
        first.stop()
    sent = Counter((line["enrollment_id"], line["step"]) for line in provider.lines)
    assert max(sent.values()) == 1  # a drain sends nothing twice
    assert 0 < len(provider.lines) < n * steps  # stopped mid-run

    second = Daemon(valkey.url, prefix, tmp_path / "second", **env).start()
    try:

        async def all_sent() -> bool:
            return len(provider.lines) >= n * steps

        await wait_for(all_sent, 90, "every step")
        second.signal(signal.SIGTERM)
        assert second.wait() == 0, second.stderr()
    finally:
        second.stop()
        provider.close()
    sent = Counter((line["enrollment_id"], line["step"]) for line in provider.lines)
    assert set(sent) == {(eid, step) for eid in eids for step in range(steps)}
    assert max(sent.values()) == 1
    stats = (await store.sequences.stats([sid]))[sid]
    assert stats.completed == n


@pytest.mark.slow  # real processes, a webhook receiver
async def test_two_workers_send_each_step_and_deliver_each_event_once(
    valkey: ValkeyProcess, prefix: str, store: Store, tmp_path: Path
) -> None:
    """Both workers read the outbox and deliver webhooks beside dispatching: every event
    reaches the endpoint once, every step the provider once."""
    n, steps = 500, 2
    provider = LogTail(tmp_path / "provider.log")
    async with Receivers() as receivers:
        sid, eids = await seed(store, [sms(f"step {i}") for i in range(steps)], n)
        await endpoint(store, receivers.url("/good"), ["sequence.step.sent"])
        d = two_workers(
            valkey, prefix, tmp_path, provider, SEQD_WEBHOOKS_ALLOW_PRIVATE_TARGETS="true"
        )
        try:

            async def delivered() -> bool:
                assert d.process is not None and d.process.poll() is None, d.stderr()
                return len({e["id"] for _, e in receivers.good}) == n * steps

            await wait_for(delivered, 120, "every event at the endpoint")

            async def settled() -> bool:
                return await store.client.zcard(store.keys.workers()) == 2 and (
                    (await store.sequences.stats([sid]))[sid].completed == n
                )

            await wait_for(settled, 30, "every enrollment complete, both workers beating")
            d.signal(signal.SIGTERM)
            assert d.wait() == 0, d.stderr()
        finally:
            d.stop()
    provider.read()
    assert set(provider.sent) == {(eid, step) for eid in eids for step in range(steps)}
    assert max(provider.sent.values()) == 1
    assert len(receivers.good) == n * steps  # no event delivered twice


@pytest.mark.slow  # real processes
async def test_a_step_enrolled_through_either_worker_is_sent_at_once_whatever_its_shard(
    valkey: ValkeyProcess, prefix: str, store: Store, tmp_path: Path
) -> None:
    """Each worker dispatches its own share of the shards first: a step enrolled due at
    once, in a shard of the other worker's share, is still sent at once with idle polls a
    minute apart (the enrolling worker wakes the others through the supervisor)."""
    provider = LogTail(tmp_path / "provider.log")
    seq = await sequence(store, sms("hi"))
    _, key = await store.tenants.create_key(TENANT)
    d = two_workers(valkey, prefix, tmp_path, provider, SEQD_DISPATCH_IDLE_POLL_MS="60000")
    try:
        d.wait_healthy()

        async def both_dispatching() -> bool:
            assert d.process is not None and d.process.poll() is None, d.stderr()
            return await store.client.zcard(store.keys.workers()) == 2

        await wait_for(both_dispatching, 30, "both workers' dispatch heartbeats")
        await asyncio.sleep(0.5)  # each worker's first round is over: both sleep a minute
        for round_ in range(2):
            items = [{"contact": {"phone": f"+1415555{round_}{i:03d}"}} for i in range(40)]
            path = f"/sequences/{seq.id}/enrollments/batch"
            answer = await asyncio.to_thread(call, d, key, "POST", path, {"items": items})
            eids = {r["enrollment"]["id"] for r in answer["results"]}
            assert {ids.shard_of(e, store.shards) % 2 for e in eids} == {0, 1}

            async def sent(eids: set[str] = eids) -> bool:
                provider.read()
                return {eid for eid, _ in provider.sent} >= eids

            await wait_for(sent, 10, "every step of the batch")
        d.signal(signal.SIGTERM)
        assert d.wait() == 0, d.stderr()
    finally:
        d.stop()


def test_each_worker_dispatches_under_its_own_id_on_the_supervisor_store() -> None:
    config = configmod.load(environ={"SEQD_HTTP_PORT": "9000"})
    spec = service.WorkerSpec(index=1, listen_fds=[3], control_fd=4, store_url="unix:///s")
    mine = supervisor.worker_config(config, spec)
    assert mine.dispatch.worker_id == f"{socket.gethostname()}:9000/1"
    assert mine.dispatch.shard_share == ""
    two = supervisor.worker_config(config, msgspec.structs.replace(spec, workers=2))
    assert two.dispatch.shard_share == "1/2"
    assert mine.redis.url == "unix:///s"
    named = configmod.load(
        environ={"SEQD_DISPATCH_WORKER_ID": "edge", "SEQD_REDIS_URL": "redis://r"}
    )
    other = supervisor.worker_config(named, msgspec.structs.replace(spec, store_url=None))
    assert (other.dispatch.worker_id, other.redis.url) == ("edge/1", "redis://r")


async def test_a_burst_of_due_steps_is_told_to_the_supervisor_once_and_its_end_again() -> None:
    """DueRelay: the first of a burst goes at once, the rest as one message after the gap."""

    class Heard(systemd.Notifier):
        def __init__(self) -> None:
            super().__init__("@test")
            self.heard: list[tuple[str, ...]] = []

        def send(self, *lines: str) -> bool:
            self.heard.append(lines)
            return True

    notifier = Heard()
    relay = service.DueRelay(asyncio.get_running_loop(), notifier)
    for _ in range(5):
        relay.tell()
    assert notifier.heard == [(systemd.DUE,)]
    await asyncio.sleep(service.RELAY_GAP_SECONDS * 3)
    assert notifier.heard == [(systemd.DUE,), (systemd.DUE,)]


def test_worker_count_defaults_to_the_cores() -> None:
    config = configmod.load(environ={})
    assert supervisor.count(config, None) == len(os.sched_getaffinity(0))
    assert supervisor.count(config, 3) == 3
    assert supervisor.count(configmod.load(environ={"SEQD_HTTP_WORKERS": "1"}), None) == 1
