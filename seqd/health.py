"""Readiness: the store answers, the scripts are loaded, every running loop is alive; and
how long the store has been unreachable, which /healthz reports past a configured limit.

Background loops (`loop.Loop`: dispatcher, outbox reader, webhook deliverer, intake
consumers) call `liveness.beat(name, deadline)` on every turn, with the longest time a
healthy turn can take, and `liveness.stopped(name)` when they stop. A loop that has never
beaten is not required (the dispatcher may be disabled in this process); one whose last
beat is older than its deadline makes the process not ready, so an orchestrator stops
sending it work and systemd/docker can restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import msgspec
from redis.exceptions import RedisError

from seqd.store.client import UNAVAILABLE
from seqd.store.db import Store
from seqd.store.scripts import SCRIPTS

# /readyz answers within this, even when Redis hangs (an orchestrator's probe times out).
CHECK_TIMEOUT_SECONDS = 2.0


class Liveness:
    """Last beat of each background loop, on the monotonic clock (a `loop.Heart`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._beats: dict[str, tuple[float, float]] = {}
        self._notes: dict[str, str] = {}
        self._drain_hooks: list[Callable[[], None]] = []

    def beat(self, name: str, deadline_seconds: float) -> None:
        self._beats[name] = (self.clock(), deadline_seconds)

    def stopped(self, name: str) -> None:
        self._beats.pop(name, None)

    def on_drain(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Call `hook` when the process begins to stop (`drain`); returns what forgets it."""
        self._drain_hooks.append(hook)

        def forget() -> None:
            with contextlib.suppress(ValueError):
                self._drain_hooks.remove(hook)

        return forget

    def drain(self) -> None:
        """The process begins to stop (SIGTERM): loops that asked stop taking work now."""
        for hook in list(self._drain_hooks):
            hook()

    def late(self) -> dict[str, float]:
        """Loops past their deadline -> seconds since their last beat."""
        now = self.clock()
        return {
            name: now - at for name, (at, deadline) in self._beats.items() if now - at > deadline
        }

    def running(self) -> list[str]:
        return sorted(self._beats)

    def note(self, name: str, state: str | None) -> None:
        """The state of a part that does not decide readiness (an IMAP mailbox: a broken
        one must not take the API out of service); None forgets it."""
        if state is None:
            self._notes.pop(name, None)
        else:
            self._notes[name] = state

    def notes(self) -> dict[str, str]:
        return dict(sorted(self._notes.items()))


class StoreWatch:
    """When the store last answered a ping (`probe`, every PROBE_SECONDS): /healthz turns
    unhealthy once that is longer ago than redis.unhealthy_after_seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.answered_at = clock()

    def unreachable_for(self) -> float:
        return self.clock() - self.answered_at

    async def probe(self, store: Store) -> None:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
                await store.client.ping()
        except (RedisError, OSError, TimeoutError):
            return
        self.answered_at = self.clock()


# How often the store is pinged for /healthz: its unreachable time is known to this much.
PROBE_SECONDS = 0.5


class Readiness(msgspec.Struct, kw_only=True):
    ready: bool
    # check name -> "ok" or what is wrong
    checks: dict[str, str]
    # parts that do not decide readiness (IMAP mailboxes) -> their state
    details: dict[str, str] = msgspec.field(default_factory=dict)


# What a check that did not get its answer from the store reports, rather than raises.
_NOT_READY: tuple[type[Exception], ...] = (RedisError, *UNAVAILABLE)


async def _store_checks(store: Store) -> dict[str, str]:
    checks = {}
    try:
        await store.client.ping()
        checks["store"] = "ok"
    except _NOT_READY as exc:
        return {"store": f"unreachable ({type(exc).__name__})", "scripts": "unknown"}
    try:
        shas = [s.sha for s in SCRIPTS.values()]
        loaded = await store.client.script_exists(*shas)
        if not all(loaded):
            # A restarted Redis lost its script cache: load them again (idempotent).
            await store.runner.load_all()
        checks["scripts"] = "ok"
    except _NOT_READY as exc:
        checks["scripts"] = f"not loaded ({type(exc).__name__})"
    return checks


async def check(store: Store, liveness: Liveness) -> Readiness:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            checks = await _store_checks(store)
    except TimeoutError:
        checks = {"store": f"no answer within {CHECK_TIMEOUT_SECONDS:g} s", "scripts": "unknown"}
    late = liveness.late()
    for name in liveness.running():
        checks[name] = f"no heartbeat for {late[name]:.1f} s" if name in late else "ok"
    return Readiness(
        ready=all(v == "ok" for v in checks.values()), checks=checks, details=liveness.notes()
    )
