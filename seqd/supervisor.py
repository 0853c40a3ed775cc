"""`seqd serve --workers N`: one supervisor process running N worker processes.

The supervisor binds the listening sockets, owns the embedded store (when redis.url is
unset), makes and shows the first API key, then starts N workers: `seqd serve` processes
that inherit the bound sockets (every worker waits on the same sockets and the kernel
hands each new connection to one of them, so a dead worker strands no connection) and
connect to the same store. Each worker is a whole seqd (API, dispatcher, intake
consumer, outbox reader, webhook deliverer, mailbox readers); they share that work
through the store exactly as processes on separate hosts do (step leases, consumer
groups named by pid, mailbox holds). Each dispatches under its own id, `<id>/<index>`,
the same across its restarts, so a replacement takes its predecessor's leases back at
once and never a sibling's. Each dispatches its own share of the shards first
(`dispatch.shard_share`, engine/dispatcher.py); a worker that enrolls steps due now says
`SEQD_DUE=1` (`systemd.DUE`), and the supervisor writes a byte on every other worker's
control pipe, which wakes their dispatchers (the end of file alone means drain).

systemd sees only the supervisor (deploy/seqd.service: Type=notify, KillMode=mixed):
READY=1 once every worker said it was ready, WATCHDOG=1 from the supervisor's loop,
STOPPING=1 when a signal starts the drain. The workers speak the same protocol to the
supervisor over a private datagram socket (their NOTIFY_SOCKET, each sender known by its
credentials), so each worker is held to WatchdogSec= as the single process is: one
silent for longer is killed, and so replaced.

A worker that exits while the supervisor is not stopping is started again, after a pause
that doubles while workers keep dying soon after their start. SIGTERM or SIGINT closes
the control pipe of every worker, which drains as on its own SIGTERM; the supervisor
exits once all have, 0 when every one exited 0. A supervisor that dies (even by SIGKILL)
closes the pipes too, so no worker outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import struct
import sys
import time
from typing import TextIO

import msgspec
import structlog

from seqd import logs, stacks, systemd
from seqd.backoff import Backoff
from seqd.config import Config
from seqd.embedded import EmbeddedServer
from seqd.engine.dispatcher import default_worker
from seqd.service import WorkerSpec, banner, bind, open_store, warn_config

log = structlog.get_logger(__name__)

# `seqd serve --worker-spec JSON`: how the supervisor starts a worker (not for users).
SPEC_OPTION = "--worker-spec"
# A worker that ran this long before it died had not been crash-looping: no extra pause.
STABLE_SECONDS = 60.0
RESTART_BASE_SECONDS = 0.5
RESTART_CAP_SECONDS = 30.0
# Beyond the dispatcher's drain, what a worker may take to close its store and exit.
EXIT_GRACE_SECONDS = 30.0
# A worker is killed as stuck only after at least this long without a word, even under a
# shorter WatchdogSec=: replacing it takes seconds (imports, store, scripts), more than a
# brief stall costs.
STALL_FLOOR_SECONDS = 10.0
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def count(config: Config, option: int | None) -> int:
    """The number of workers: `--workers`, else http.workers, 0 meaning one per core."""
    wanted = option if option is not None else config.http.workers
    return wanted or len(os.sched_getaffinity(0))


def worker_config(config: Config, spec: WorkerSpec) -> Config:
    """The config a worker runs with: the supervisor's store, and its own dispatch id."""
    base = config.dispatch.worker_id or default_worker(config.http.port)
    dispatch = msgspec.structs.replace(
        config.dispatch,
        worker_id=f"{base}/{spec.index}",
        # Each worker dispatches its own shards first (unless the config shares them).
        shard_share=config.dispatch.shard_share
        or (f"{spec.index}/{spec.workers}" if spec.workers > 1 else ""),
    )
    redis = config.redis
    if spec.store_url is not None:
        redis = msgspec.structs.replace(redis, url=spec.store_url)
    return msgspec.structs.replace(config, dispatch=dispatch, redis=redis)


def embedded_url(config: Config) -> str:
    """The URL of the embedded store the supervisor runs (redis.url unset)."""
    return EmbeddedServer(config.embedded).url


class WorkerProcess:
    """One worker slot: the process running in it now, and what it last said."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.control: int | None = None  # write end of the control pipe
        self.ready = asyncio.Event()
        # The worker said STOPPING=1: its heartbeat has ended, it drains and exits.
        self.draining = False
        self.started = 0.0
        self.heard = 0.0
        self.status = ""
        self.backoff = Backoff(RESTART_BASE_SECONDS, RESTART_CAP_SECONDS)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def close_control(self) -> None:
        """Ask the worker to drain (its control pipe reaches end of file)."""
        if self.control is not None:
            os.close(self.control)
            self.control = None


class Pool:
    """N worker slots kept filled until `drain`."""

    def __init__(
        self,
        config: Config,
        size: int,
        sockets: list[socket.socket],
        *,
        store_url: str | None,
        config_path: str | None,
        watchdog_usec: int | None,
    ) -> None:
        self.config = config
        self.sockets = sockets
        self.store_url = store_url
        self.config_path = config_path
        self.watchdog_usec = watchdog_usec
        self.slots = [WorkerProcess(i) for i in range(size)]
        self.stopping = False
        # Until every worker was ready once: a worker that exits then fails the start.
        self.starting = True
        self.failed: str | None = None
        self._changed = asyncio.Event()
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # An abstract name: nothing on disk to clean up, reachable under PrivateTmp=.
        self.notify_address = f"@seqd-supervisor-{os.getpid()}-{secrets.token_hex(4)}"
        self._tasks: list[asyncio.Task[None]] = []

    # -- starting ------------------------------------------------------------------

    async def start(self) -> bool:
        """Start every worker; True once all are ready, False when one exited first."""
        self._notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._notify.setblocking(False)
        self._notify.bind("\0" + self.notify_address[1:])
        loop = asyncio.get_running_loop()
        loop.add_reader(self._notify.fileno(), self._on_datagram)
        self._tasks = [
            asyncio.create_task(self._keep(slot), name=f"seqd.supervisor.worker{slot.index}")
            for slot in self.slots
        ]
        if self.watchdog_usec:
            self._tasks.append(asyncio.create_task(self._watch(), name="seqd.supervisor.watch"))
        while self.failed is None and not all(slot.ready.is_set() for slot in self.slots):
            self._changed.clear()
            await self._changed.wait()
        self.starting = False
        return self.failed is None

    async def _spawn(self, slot: WorkerProcess) -> asyncio.subprocess.Process:
        read, write = os.pipe()
        os.set_blocking(write, False)  # a wake (_wake_others) never blocks the supervisor
        spec = WorkerSpec(
            index=slot.index,
            listen_fds=[sock.fileno() for sock in self.sockets],
            control_fd=read,
            store_url=self.store_url,
            workers=len(self.slots),
        )
        argv = [sys.executable, "-m", "seqd"]
        if self.config_path:
            argv += ["--config", self.config_path]
        argv += ["serve", SPEC_OPTION, msgspec.json.encode(spec).decode()]
        env = dict(os.environ, NOTIFY_SOCKET=self.notify_address)
        env.pop("WATCHDOG_PID", None)
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        try:
            # Its own session: a Ctrl-C in the terminal reaches the supervisor only, which
            # then drains the workers once (a second signal would make them exit at once).
            process = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                pass_fds=[read, *spec.listen_fds],
                start_new_session=True,
            )
        except BaseException:
            os.close(write)
            raise
        finally:
            os.close(read)
        slot.process, slot.control = process, write
        slot.ready.clear()
        slot.draining = False
        slot.started = slot.heard = time.monotonic()
        slot.status = ""
        log.info("supervisor.worker_started", worker=slot.index, pid=process.pid)
        return process

    async def _keep(self, slot: WorkerProcess) -> None:
        """Run the slot's worker; start it again each time it exits, until `drain`."""
        while not self.stopping:
            process = await self._spawn(slot)
            code = await process.wait()
            slot.close_control()
            if self.stopping:
                break
            ran = time.monotonic() - slot.started
            # Before any worker is ready a death is taken for a start that cannot work (a
            # bad config, a port in use); once one serves, a worker still starting that dies
            # (a store restarting under it) is restarted like any other.
            if self.starting and not any(other.ready.is_set() for other in self.slots):
                self.failed = f"worker {slot.index} exited with {code} before it was ready"
                self._changed.set()
                return
            if ran > STABLE_SECONDS:
                slot.backoff.reset()
            pause = slot.backoff.failed()
            log.error(
                "supervisor.worker_died",
                worker=slot.index,
                pid=process.pid,
                returncode=code,
                ran_seconds=round(ran, 1),
                restart_in_seconds=pause,
            )
            self._changed.set()
            await asyncio.sleep(pause)

    # -- what the workers say ---------------------------------------------------------

    def _on_datagram(self) -> None:
        while True:
            try:
                data, ancillary, _flags, _addr = self._notify.recvmsg(
                    4096, socket.CMSG_SPACE(_CREDENTIALS.size)
                )
            except (BlockingIOError, InterruptedError):
                return
            pid = next(
                (
                    _CREDENTIALS.unpack(cdata[: _CREDENTIALS.size])[0]
                    for level, kind, cdata in ancillary
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
                ),
                None,
            )
            slot = next((s for s in self.slots if s.pid is not None and s.pid == pid), None)
            if slot is None:
                continue
            slot.heard = time.monotonic()
            for line in data.decode(errors="replace").splitlines():
                key, _, value = line.partition("=")
                if key == "READY" and value == "1":
                    slot.ready.set()
                    log.info("supervisor.worker_ready", worker=slot.index, pid=pid)
                    self._changed.set()
                elif key == "STATUS":
                    slot.status = value
                elif key == "STOPPING" and value == "1":
                    slot.draining = True
                elif line == systemd.DUE:
                    self._wake_others(slot)

    def _wake_others(self, origin: WorkerProcess) -> None:
        """A byte on the control pipe of every other worker: their dispatchers look for
        due steps now (the end of file alone means drain)."""
        for slot in self.slots:
            if slot is origin or slot.control is None or slot.draining:
                continue
            # A full pipe holds wakes not yet read: one more changes nothing.
            with contextlib.suppress(BlockingIOError, BrokenPipeError):
                os.write(slot.control, b"w")

    async def _watch(self) -> None:
        """Kill a ready worker silent for longer than the watchdog timeout: its loop is
        stuck, and `_keep` replaces it."""
        assert self.watchdog_usec
        limit = max(self.watchdog_usec / 1_000_000, STALL_FLOOR_SECONDS)
        while not self.stopping:
            await asyncio.sleep(limit / 4)
            now = time.monotonic()
            for slot in self.slots:
                process = slot.process
                if (
                    not self.stopping
                    and process is not None
                    and process.returncode is None
                    and slot.ready.is_set()
                    and not slot.draining
                    and now - slot.heard > limit
                ):
                    log.error("supervisor.worker_stalled", worker=slot.index, pid=process.pid)
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()

    def status(self) -> str:
        """STATUS= for systemd: workers ready, and the sum of their send rates."""
        ready = sum(1 for slot in self.slots if slot.ready.is_set())
        rate = sum(systemd.sending_rate(slot.status) or 0.0 for slot in self.slots)
        return f"ready; {ready}/{len(self.slots)} workers; sending {rate:.1f} steps/s"

    def signal(self, sig: signal.Signals) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.process.send_signal(sig)

    # -- stopping -----------------------------------------------------------------------

    async def drain(self) -> int:
        """Ask every worker to drain and wait for them; 0 when each exited 0."""
        self.stopping = True
        for slot in self.slots:
            slot.close_control()
        limit = self.config.dispatch.drain_timeout_seconds + EXIT_GRACE_SECONDS
        codes: list[int] = []
        for slot in self.slots:
            process = slot.process
            # A worker that had died and waits for its restart has nothing to drain: its
            # exit was logged then (supervisor.worker_died) and is not the drain's.
            if process is None or process.returncode is not None:
                continue
            try:
                codes.append(await asyncio.wait_for(process.wait(), limit))
            except TimeoutError:
                log.error("supervisor.worker_killed", worker=slot.index, pid=process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                codes.append(await process.wait())
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        asyncio.get_running_loop().remove_reader(self._notify.fileno())
        self._notify.close()
        return 0 if all(code == 0 for code in codes) else 1


async def supervise(
    config: Config, size: int, *, out: TextIO = sys.stdout, config_path: str | None = None
) -> int:
    """`seqd serve` with `size` workers; the exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    notifier = systemd.Notifier.from_environ()
    pool: Pool | None = None
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            log.warning("service.exit_now")
            if pool is not None:
                pool.signal(signal.SIGKILL)
            os._exit(1)
        log.info("service.stopping")
        stop.set()

    def on_hangup() -> None:
        logs.reload(config_path)
        if pool is not None:
            pool.signal(signal.SIGHUP)

    def on_dump() -> None:
        stacks.dump(loop)
        if pool is not None:
            pool.signal(signal.SIGUSR1)

    sockets = bind(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    loop.add_signal_handler(signal.SIGUSR1, on_dump)
    warn_config(config)
    code = 0
    try:
        async with open_store(config, own=True) as store:
            # Before any worker answers: a start that failed earlier made no key.
            secret = await store.tenants.bootstrap()
            if secret:
                banner(secret, config, out)
                await store.tenants.bootstrap_shown()
            pool = Pool(
                config,
                size,
                sockets,
                store_url=None if config.redis.url is not None else embedded_url(config),
                config_path=config_path,
                watchdog_usec=notifier.watchdog_usec,
            )
            started = asyncio.create_task(pool.start())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({started, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if started.done() and not started.result():
                log.error("supervisor.start_failed", reason=pool.failed)
                code = 1
            elif not stop.is_set():
                log.info(
                    "service.listening",
                    host=config.http.host,
                    port=config.http.port,
                    base_path=config.http.base_path,
                    workers=size,
                )
                out.write(
                    f"seqd listening on http://{config.http.host}:{config.http.port} "
                    f"({size} workers)\n"
                )
                out.flush()
                notifier.ready(pool.status())
                async with systemd.heartbeat(notifier, pool.status):
                    await stop.wait()
            started.cancel()
            notifier.stopping()
            drained = await pool.drain()
            code = code or drained
    finally:
        for sock in sockets:
            sock.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
        notifier.close()
    log.info("service.stopped", returncode=code)
    return code
