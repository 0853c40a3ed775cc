"""`seqd serve` SIGKILLed again and again mid-run: no step lost, no enrollment failed by the
kills, duplicates within the promise, sending back within seconds.

The promise (docs/reliability.md): at least once, at most one duplicate per crash per
step whose send had started. A crash can only re-send a step whose lease it left
unsettled with its sends started (`lease_starts`), so after every kill the test records
those (enrollment, step) pairs, and at the end each step's sends must be at most 1 + the
number of kills that left it so. A step leased and never handed to a channel is no
attempt: with the default max_attempts (5) and more kills than that, no enrollment may
end `failed`. The leases of a killed process come back when its heartbeat stops (3 s),
not after `lease_seconds` (left at its default, 60 s). Kills land at random points of the
run: each one when the provider has received a random fraction more of the work. Size:
`SEQD_FAULT_ENROLLMENTS` (default 2000 × 3 steps), `SEQD_FAULT_KILLS` (default 10).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from seqd.store.db import Store, connect
from tests.conftest import ValkeyProcess
from tests.dispatchutil import queued, sms
from tests.faultutil import LogTail, counter_mismatches, seed, size, unsettled, wait_for
from tests.opsutil import Daemon

STEPS = 3
# Seconds from a restart (the new process started) to its first send, at most.
RESUME_S = 5.0


def _env(provider: LogTail) -> dict[str, str]:
    return {
        "SEQD_CHANNELS_LOG_PATH": str(provider.path),
        "SEQD_DISPATCH_BATCH_SIZE": "100",
        "SEQD_WEBHOOKS_ENABLED": "false",
    }


async def _first_send(daemon: Daemon, provider: LogTail, before: int, run: int) -> None:
    """Wait for `daemon`'s first send (the provider past `before` lines)."""

    async def sending() -> bool:
        assert daemon.process is not None
        assert daemon.process.poll() is None, daemon.stderr()
        return provider.read() > before

    await wait_for(sending, 30, f"run {run}: the first send")


async def _finish(
    server: ValkeyProcess,
    store: Store,
    prefix: str,
    tmp_path: Path,
    provider: LogTail,
    sid: str,
    enrollments: int,
) -> None:
    """A last process completes every enrollment and stops cleanly."""
    final = Daemon(server.url, prefix, tmp_path / "final", **_env(provider)).start()
    try:

        async def all_done() -> bool:
            stats = (await store.sequences.stats([sid]))[sid]
            return stats.completed + stats.cancelled + stats.paused == enrollments

        await wait_for(all_done, 120, "every enrollment to complete")
        await asyncio.to_thread(final.wait_healthy)  # (a SIGTERM before its handler kills it)
        final.signal(signal.SIGTERM)
        assert final.wait() == 0, final.stderr()
    finally:
        final.stop()
    provider.read()


async def _check(
    store: Store, sid: str, eids: list[str], enrollments: int, provider: LogTail, kills: int
) -> None:
    sent = provider.sent
    assert provider.torn <= kills  # only a kill mid-write tears a line
    assert set(sent) == {(eid, step) for eid in eids for step in range(STEPS)}, "lost steps"
    stats = (await store.sequences.stats([sid]))[sid]
    assert (stats.completed, stats.active, stats.paused, stats.cancelled) == (
        enrollments,
        0,
        0,
        0,
    ), "enrollments failed or held by the kills"
    assert await counter_mismatches(store, sid) == []
    assert await queued(store) == 0


@pytest.mark.slow
async def test_repeated_sigkill_loses_no_step_and_duplicates_stay_within_the_bound(
    valkey_factory: type[ValkeyProcess], prefix: str, tmp_path: Path
) -> None:
    enrollments, kills = size("ENROLLMENTS", 2000), size("KILLS", 10)
    rng = random.Random()
    server = valkey_factory()  # type: ignore[call-arg]
    server.start()
    store = await Store.open(connect(server.url), prefix, 4)
    provider = LogTail(tmp_path / "provider.log")
    try:
        sid, eids = await seed(store, [sms(f"step {i}") for i in range(STEPS)], enrollments)
        total = enrollments * STEPS
        held: Counter[tuple[str, int]] = Counter()  # kills that left each step in flight
        resumed: list[float] = []
        started = time.monotonic()
        for kill in range(kills):
            # A random point inside this kill's share of the run.
            target = total * (kill + rng.uniform(0.1, 0.9)) / (kills + 1)
            before = provider.read()
            start = time.monotonic()
            daemon = Daemon(server.url, prefix, tmp_path / f"run{kill}", **_env(provider)).start()
            try:
                await _first_send(daemon, provider, before, kill)
                resumed.append(time.monotonic() - start)

                async def reached(daemon: Daemon = daemon, target: float = target) -> bool:
                    assert daemon.process is not None
                    assert daemon.process.poll() is None, daemon.stderr()
                    return provider.read() >= target

                await wait_for(reached, 60, f"kill {kill}: {target:.0f} lines at the provider")
                daemon.signal(signal.SIGKILL)
                daemon.wait()
            finally:
                daemon.stop()
            held.update(await unsettled(store, eids, started_only=True))

        await _finish(server, store, prefix, tmp_path, provider, sid, enrollments)
        elapsed = time.monotonic() - started
        sent = provider.sent
        over = {k: (n, held[k]) for k, n in sent.items() if n > 1 + held[k]}
        assert not over, f"steps sent more often than the promise allows: {over}"
        await _check(store, sid, eids, enrollments, provider, kills)
        assert max(resumed[1:]) < RESUME_S, f"sending resumed {resumed} s after the restarts"
        duplicates = sum(n - 1 for n in sent.values())
        print(
            f"\nseqd kills: {kills} kills, {total} steps, {provider.lines} sends, "
            f"{duplicates} duplicates, {provider.torn} torn lines, bound {sum(held.values())} "
            f"(sends started and unsettled at the kills), max sends of one step "
            f"{max(sent.values())}, first send {max(resumed[1:]):.2f} s after a restart at "
            f"most, {elapsed:.1f} s"
        )
    finally:
        await store.close()


@pytest.mark.slow
async def test_kills_right_after_each_start_lose_nothing_and_fail_nothing(
    valkey_factory: type[ValkeyProcess], prefix: str, tmp_path: Path
) -> None:
    # A crash loop: each process is killed 0.5 s after it began sending, while most of what
    # it leased has not gone out. None of that may count an attempt (6 kills > max_attempts)
    # or be lost. (Three times the other test's enrollments: 6 half seconds of sending must
    # not finish the work.)
    enrollments, kills = 3 * size("ENROLLMENTS", 2000), 6
    server = valkey_factory()  # type: ignore[call-arg]
    server.start()
    store = await Store.open(connect(server.url), prefix, 4)
    provider = LogTail(tmp_path / "provider.log")
    try:
        sid, eids = await seed(store, [sms(f"step {i}") for i in range(STEPS)], enrollments)
        held: Counter[tuple[str, int]] = Counter()
        for kill in range(kills):
            before = provider.read()
            daemon = Daemon(server.url, prefix, tmp_path / f"run{kill}", **_env(provider)).start()
            try:
                await _first_send(daemon, provider, before, kill)
                kill_at = time.monotonic() + 0.5

                async def half_a_second(kill_at: float = kill_at) -> bool:
                    return time.monotonic() >= kill_at

                await wait_for(half_a_second, 5, "half a second of sending")
                daemon.signal(signal.SIGKILL)
                daemon.wait()
            finally:
                daemon.stop()
            held.update(await unsettled(store, eids, started_only=True))
        await _finish(server, store, prefix, tmp_path, provider, sid, enrollments)
        sent = provider.sent
        over = {k: (n, held[k]) for k, n in sent.items() if n > 1 + held[k]}
        assert not over, f"steps sent more often than the promise allows: {over}"
        await _check(store, sid, eids, enrollments, provider, kills)
        print(
            f"\nseqd kills 0.5 s after sending began: {kills} kills, {enrollments * STEPS} "
            f"steps, {provider.lines} sends, {sum(n - 1 for n in sent.values())} duplicates"
        )
    finally:
        await store.close()
