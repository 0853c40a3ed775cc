"""Wiring of the daemon: the store (embedded or not), the HTTP app, background loops, signals."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TextIO

import msgspec
import structlog
from aiohttp import web

from seqd import collector, intake, logs, metrics, stacks, systemd
from seqd.api.app import create_app
from seqd.appkeys import LIVENESS, METRICS, STORE
from seqd.config import Config
from seqd.embedded import EmbeddedServer
from seqd.engine import dispatcher
from seqd.events import background as webhooks
from seqd.lifecycle import mailbox
from seqd.loop import Heart
from seqd.metrics import Metrics
from seqd.sharing import SharedSocketSite
from seqd.store.db import Store, connect
from seqd.store.replication import ReplicaWait

log = structlog.get_logger(__name__)


class BackgroundPart(Protocol):
    """A background part of the daemon (dispatcher, webhook deliverer, intake consumer),
    given what it needs: started on enter, stopped and awaited on exit."""

    def __call__(
        self, config: Config, store: Store, *, liveness: Heart, observer: Metrics
    ) -> contextlib.AbstractAsyncContextManager[None]: ...


def background(
    part: BackgroundPart, config: Config
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    """`part` as an aiohttp cleanup_ctx, with the app's store, liveness and metrics."""

    def running(app: web.Application) -> contextlib.AbstractAsyncContextManager[None]:
        return part(config, app[STORE], liveness=app[LIVENESS], observer=app[METRICS])

    return running


BACKGROUND: list[BackgroundPart] = []
# The dispatcher (a no-op part when dispatch.enabled is false).
BACKGROUND.append(dispatcher.background)
BACKGROUND.append(intake.part)
# The outbox reader and the webhook deliverer (no-op when webhooks.enabled is false).
BACKGROUND.append(webhooks.part)
# A reader per IMAP mailbox ([channels.imap]; none configured: a no-op).
BACKGROUND.append(mailbox.part)


@contextlib.asynccontextmanager
async def open_store(config: Config, *, own: bool = False) -> AsyncIterator[Store]:
    """The configured store; with no redis.url, the embedded one (started if needed)."""
    embedded = None
    url = config.redis.url
    if url is None:
        embedded = EmbeddedServer(config.embedded)
        url = await embedded.start(own=own)
    client = connect(
        url,
        cluster=config.redis.cluster,
        socket_timeout=config.redis.socket_timeout,
        max_connections=config.redis.max_connections,
    )
    # The owner restarts the embedded server if it dies, until the store is closed.
    supervisor = None
    if embedded is not None and embedded.owner:
        supervisor = asyncio.create_task(embedded.supervise())
    try:
        wait = None
        if config.redis.wait_replicas:
            wait = ReplicaWait(config.redis.wait_replicas, config.redis.wait_timeout_ms)
        store = await Store.open(
            client,
            config.redis.prefix,
            config.redis.shards,
            wait=wait,
            intake_streams=config.intake.streams,
        )
        await store.stats.keep_for(config.stats.retention_days)
        try:
            yield store
        finally:
            await store.close()
    finally:
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        if embedded is not None:
            await embedded.stop()


def build_app(config: Config, store: Store) -> web.Application:
    app = create_app(config, store)
    app.cleanup_ctx.append(lambda app: metrics.recording(app[METRICS], app[STORE]))
    for part in BACKGROUND:
        app.cleanup_ctx.append(background(part, config))
    return app


def banner(secret: str, config: Config, out: TextIO) -> None:
    base = f"http://{config.http.host}:{config.http.port}{config.http.base_path}"
    out.write(
        "\nseqd: tenant 'default' has this API key (shown by the first start that completes, "
        "stored only as a hash):\n"
        f"\n    {secret}\n\n"
        f"    curl -H 'Authorization: Bearer {secret}' {base}/sequences\n\n"
    )
    out.flush()


def warn_quiet_hours_off(config: Config) -> list[str]:
    """Log each place SMS quiet hours are turned off (the default, a tenant's own): texts
    may then reach phones at night. Returns the tenants concerned ("" for the default)."""
    off = [""] if not config.compliance.sms_quiet_hours.enabled else []
    off += [name for name in config.tenants if not config.quiet_hours_for(name).enabled]
    for tenant in off:
        log.warning("compliance.sms_quiet_hours_off", tenant=tenant or None)
    return off


def warn_config(config: Config) -> None:
    """The start's warnings about settings that are allowed but likely wrong."""
    warn_quiet_hours_off(config)
    warning = config.http.public_url_warning()
    if warning:
        log.warning("config.public_url_port", detail=warning)


class ListenError(RuntimeError):
    """The HTTP listener could not be bound; the message is the one line to show."""


def bind(config: Config) -> list[socket.socket]:
    """The listening sockets of http.host:http.port (each address the host resolves to).

    Bound before the store is opened and before any background part or key is made, so a
    port in use stops the start with nothing done."""
    host, port = config.http.host, config.http.port
    where = f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {where}: {exc.strerror} (http.host)") from None
    sockets: list[socket.socket] = []
    try:
        for family, address in dict.fromkeys((info[0], info[4]) for info in infos):
            try:
                sockets.append(_listen(family, address))
            except OSError as exc:
                # An address of a family the host has disabled (IPv6 for "localhost"), as
                # asyncio's create_server skips it (bpo-30945).
                if exc.errno != errno.EADDRNOTAVAIL or family != socket.AF_INET6:
                    raise
        if not sockets:
            raise OSError(errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL))
    except OSError as exc:
        for sock in sockets:
            sock.close()
        if exc.errno == errno.EADDRINUSE:
            reason = "the address is in use (another seqd or another program); set http.port"
        else:
            reason = f"{exc.strerror or exc} (http.host, http.port)"
        raise ListenError(f"cannot listen on {where}: {reason}") from None
    return sockets


def _listen(family: socket.AddressFamily, address: Any) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class WorkerSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a worker is told on its command line: its index among `workers`, the inherited
    listening sockets, the read end of its control pipe, and the embedded store's URL (if
    any)."""

    index: int
    listen_fds: list[int]
    control_fd: int
    store_url: str | None = None
    # How many workers the supervisor runs (the dispatcher's shard share).
    workers: int = 1


# The shortest time between two `systemd.DUE` messages of a worker: its siblings may wait
# that long for a step another worker enrolled due at once, and each message may cost
# each sibling a dispatch round (a poll of every shard, about 0.4 ms of CPU), so single
# enrollments at any rate cost the siblings at most 100 extra rounds a second.
RELAY_GAP_SECONDS = 0.01


class DueRelay:
    """Tells the supervisor (`systemd.DUE` on its notify socket) that this worker made steps due
    now, at most once per RELAY_GAP_SECONDS: a burst of enrollments is one message, and
    the last of it is always told (the siblings' dispatchers would otherwise find those
    steps at their next poll)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, notifier: systemd.Notifier) -> None:
        self.loop = loop
        self.notifier = notifier
        self._last = -RELAY_GAP_SECONDS
        self._later: asyncio.TimerHandle | None = None

    def tell(self) -> None:
        if self._later is not None:
            return
        now = self.loop.time()
        if now - self._last >= RELAY_GAP_SECONDS:
            self._send()
        else:
            self._later = self.loop.call_at(self._last + RELAY_GAP_SECONDS, self._send)

    def _send(self) -> None:
        self._later = None
        self._last = self.loop.time()
        self.notifier.send(systemd.DUE)


def inherited(fds: list[int]) -> list[socket.socket]:
    """The listening sockets a worker got from its supervisor (service.bind's)."""
    sockets = [socket.socket(fileno=fd) for fd in fds]
    for sock in sockets:
        sock.setblocking(False)
    return sockets


async def serve(
    config: Config,
    *,
    out: TextIO = sys.stdout,
    config_path: str | None = None,
    worker: WorkerSpec | None = None,
) -> int:
    """The daemon in this process: alone, or as one of a supervisor's workers (`worker`:
    its sockets, store and first key are the supervisor's, and the end of file on its
    control pipe asks it to drain, as SIGTERM does)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    notifier = systemd.Notifier.from_environ()
    signals = 0
    control = worker.control_fd if worker is not None else -1

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("service.exit_now")
            os._exit(1)
        log.info("service.stopping")
        stop.set()

    # A sibling worker made steps due now (the supervisor passes it on): wake ours.
    woken: list[Callable[[], None]] = []

    def on_control() -> None:
        if os.read(control, 64):
            for wake in woken:
                wake()
            return
        # The supervisor closed it, or is gone.
        loop.remove_reader(control)
        if not stop.is_set():
            log.info("service.stopping", by="supervisor")
            stop.set()

    if worker is None:
        sockets = bind(config)
        warn_config(config)
    else:
        sockets = inherited(worker.listen_fds)
        structlog.contextvars.bind_contextvars(worker=worker.index)
        loop.add_reader(control, on_control)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    loop.add_signal_handler(signal.SIGHUP, logs.reload, config_path)
    # Where each task waits, on stderr: what a drain that does not end is stuck on.
    loop.add_signal_handler(signal.SIGUSR1, stacks.dump, loop)
    try:
        async with open_store(config, own=worker is None) as store:
            if worker is not None and worker.workers > 1:
                # Each worker dispatches its share of the shards: what one enrolls due at
                # once, the others are told of through the supervisor (supervisor.py).
                store.due_elsewhere = DueRelay(loop, notifier).tell
                woken.append(store.woken)
            app = build_app(config, store)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            try:
                await runner.setup()
                # Once the port is ours and everything else started: a start that fails
                # before this makes no key; the key is shown before the API answers.
                secret = await store.tenants.bootstrap() if worker is None else None
                if secret:
                    banner(secret, config, out)
                    await store.tenants.bootstrap_shown()
                # Workers share their sockets with siblings: one connection per turn.
                site = web.SockSite if worker is None else SharedSocketSite
                for sock in sockets:
                    await site(runner, sock).start()
                log.info(
                    "service.listening",
                    host=config.http.host,
                    port=config.http.port,
                    base_path=config.http.base_path,
                )
                if worker is None:
                    out.write(f"seqd listening on http://{config.http.host}:{config.http.port}\n")
                    out.flush()
                # Store answered, scripts loaded, background parts started, port open.
                collector.freeze()
                notifier.ready("ready")
                rate = systemd.SendRate(lambda: app[METRICS].sent_total, time.monotonic)
                async with systemd.heartbeat(notifier, rate):
                    await stop.wait()
            finally:
                notifier.stopping()
                # The dispatcher stops claiming now, not after the API's requests in flight
                # and the other background parts have been waited for.
                app[LIVENESS].drain()
                await runner.cleanup()
    finally:
        for sock in sockets:
            sock.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
        if worker is not None:
            loop.remove_reader(control)
            os.close(control)
        notifier.close()
    log.info("service.stopped")
    return 0
