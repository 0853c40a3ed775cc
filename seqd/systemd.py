"""The sd_notify protocol, spoken directly: one datagram per message to `$NOTIFY_SOCKET`.

No libsystemd: the protocol is newline-separated `KEY=value` lines in a datagram sent to
a unix socket (a path, or an abstract name written with a leading `@`). seqd sends
READY=1 once the store answered, the scripts are loaded and the HTTP listener is up;
STATUS= with its send rate; WATCHDOG=1 from a task on the event loop, at half of
`$WATCHDOG_USEC`, so a loop blocked for longer than `WatchdogSec=` is restarted by
systemd; STOPPING=1 when a signal starts the drain. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections.abc import AsyncIterator, Callable, MutableMapping

import structlog

log = structlog.get_logger(__name__)

# How often STATUS= is refreshed when no watchdog asks for more.
STATUS_SECONDS = 10.0
# Not systemd's: a worker of `seqd serve --workers N` made steps due now, and the
# supervisor wakes the other workers' dispatchers (supervisor.py).
DUE = "SEQD_DUE=1"


class Notifier:
    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Read and remove the variables, so child processes (valkey-server) never see them."""
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", None) or None
        usec = env.pop("WATCHDOG_USEC", None)
        pid = env.pop("WATCHDOG_PID", None)
        watchdog = None
        if usec and usec.isdigit() and int(usec) > 0 and (pid is None or pid == str(os.getpid())):
            watchdog = int(usec)
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_seconds(self) -> float | None:
        """Half the watchdog timeout: the ping interval systemd recommends."""
        return self.watchdog_usec / 2_000_000 if self.watchdog_usec else None

    def send(self, *lines: str) -> bool:
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode(), target)
            return True
        except OSError as exc:
            if not self._warned:
                log.warning("systemd.notify_failed", socket=self.address, error=str(exc))
                self._warned = True
            return False

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self, status: str = "draining") -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@contextlib.asynccontextmanager
async def heartbeat(notifier: Notifier, status: Callable[[], str]) -> AsyncIterator[None]:
    """While open: WATCHDOG=1 and STATUS= from a task on the running loop.

    The pings come from the loop itself, not a thread, on purpose: a loop stuck in a
    blocking call misses them, and systemd restarts the service.
    """
    if not notifier.enabled:
        yield
        return
    watchdog = notifier.watchdog_seconds
    period = min(watchdog, STATUS_SECONDS) if watchdog else STATUS_SECONDS

    async def loop() -> None:
        while True:
            if watchdog:
                notifier.send("WATCHDOG=1", f"STATUS={status()}")
            else:
                notifier.status(status())
            await asyncio.sleep(period)

    task = asyncio.create_task(loop(), name="seqd.systemd.heartbeat")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait({task})


class SendRate:
    """STATUS= text: steps sent per second by this process since the previous call."""

    def __init__(self, total: Callable[[], int], clock: Callable[[], float]) -> None:
        self.total = total
        self.clock = clock
        self._last = (clock(), total())

    def __call__(self) -> str:
        now, sent = self.clock(), self.total()
        then, before = self._last
        self._last = (now, sent)
        rate = (sent - before) / (now - then) if now > then else 0.0
        return f"ready; sending {rate:.1f} steps/s"


_RATE = re.compile(r"sending ([0-9.]+) steps/s")


def sending_rate(status: str) -> float | None:
    """The rate in a STATUS= text written by `SendRate` (a supervisor sums its workers')."""
    found = _RATE.search(status)
    return float(found.group(1)) if found else None
