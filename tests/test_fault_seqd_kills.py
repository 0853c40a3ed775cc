"""`seqd serve` SIGKILLed again and again mid-run: no step lost, duplicates within the promise.

The promise (docs/architecture.md "Dispatcher"): at least once, at most one duplicate per
crash per step. A crash can only re-send a step whose claim it left unsettled (`cl` set on
the enrollment), so after every kill the test records those (enrollment, step) pairs, and
at the end each step's sends must be at most 1 + the number of kills that left it
unsettled. Kills land at random points of the run: each one when the provider has received
a random fraction more of the work. Size: `SEQD_FAULT_ENROLLMENTS` (default 2000 × 3
steps), `SEQD_FAULT_KILLS` (default 10).
"""

from __future__ import annotations

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
    env = {
        "SEQD_CHANNELS_LOG_PATH": str(provider.path),
        "SEQD_DISPATCH_LEASE_SECONDS": "1",
        "SEQD_DISPATCH_BATCH_SIZE": "100",
        "SEQD_WEBHOOKS_ENABLED": "false",
        # Each kill that finds a step leased counts an attempt at it (a send that may have
        # happened), and a step out of attempts is cancelled, as it should be. Kills close
        # together (a loaded machine) can each find the same step leased, still unsent: with
        # more attempts than kills, every enrollment must complete.
        "SEQD_DISPATCH_MAX_ATTEMPTS": str(kills + 1),
    }
    try:
        sid, eids = await seed(store, [sms(f"step {i}") for i in range(STEPS)], enrollments)
        total = enrollments * STEPS
        held: Counter[tuple[str, int]] = Counter()  # kills that left each step unsettled
        started = time.monotonic()
        for kill in range(kills):
            # A random point inside this kill's share of the run.
            target = total * (kill + rng.uniform(0.1, 0.9)) / (kills + 1)
            daemon = Daemon(server.url, prefix, tmp_path / f"run{kill}", **env).start()
            try:

                async def reached(daemon: Daemon = daemon, target: float = target) -> bool:
                    assert daemon.process is not None
                    assert daemon.process.poll() is None, daemon.stderr()
                    return provider.read() >= target

                await wait_for(reached, 60, f"kill {kill}: {target:.0f} lines at the provider")
                daemon.signal(signal.SIGKILL)
                daemon.wait()
            finally:
                daemon.stop()
            held.update(await unsettled(store, eids))

        final = Daemon(server.url, prefix, tmp_path / "final", **env).start()
        try:

            async def all_done() -> bool:
                stats = (await store.sequences.stats([sid]))[sid]
                return stats.completed == enrollments

            await wait_for(all_done, 120, "every enrollment to complete")
            final.signal(signal.SIGTERM)
            assert final.wait() == 0, final.stderr()
        finally:
            final.stop()
        elapsed = time.monotonic() - started
        provider.read()

        sent = provider.sent
        assert provider.torn <= kills  # only a kill mid-write tears a line
        assert set(sent) == {(eid, step) for eid in eids for step in range(STEPS)}
        over = {k: (n, held[k]) for k, n in sent.items() if n > 1 + held[k]}
        assert not over, f"steps sent more often than the promise allows: {over}"
        stats = (await store.sequences.stats([sid]))[sid]
        assert (stats.completed, stats.active, stats.paused, stats.cancelled) == (
            enrollments,
            0,
            0,
            0,
        )
        assert await counter_mismatches(store, sid) == []
        assert await queued(store) == 0
        duplicates = sum(n - 1 for n in sent.values())
        print(
            f"\nseqd kills: {kills} kills, {total} steps, {provider.lines} sends, "
            f"{duplicates} duplicates, {provider.torn} torn lines, bound {sum(held.values())} "
            f"(unsettled claims at the kills), max sends of one step {max(sent.values())}, "
            f"{elapsed:.1f} s"
        )
    finally:
        await store.close()
