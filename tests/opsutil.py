"""A real `seqd serve` in a subprocess, for the operations tests (signals, sd_notify, logs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import free_port

READY_TIMEOUT = 30.0


class Daemon:
    """`python -m seqd serve` on a free port against the test valkey, with a fresh prefix."""

    def __init__(self, redis_url: str, prefix: str, workdir: Path, **env: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        # Nothing of the outer environment's seqd or systemd settings leaks in.
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SEQD_", "NOTIFY_", "WATCHDOG_"))
        }
        self.env = {
            **inherited,
            "SEQD_REDIS_URL": redis_url,
            "SEQD_REDIS_PREFIX": prefix,
            "SEQD_HTTP_PORT": str(self.port),
            "SEQD_LOG_FORMAT": "json",
            # What these tests assert must not depend on the time of day they run at.
            "SEQD_COMPLIANCE_SMS_QUIET_HOURS_ENABLED": "false",
            # One process, as these tests were written for; tests/test_ops_workers.py runs
            # the supervisor and its workers (SEQD_HTTP_WORKERS given in `env`).
            "SEQD_HTTP_WORKERS": "1",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.stderr_path = workdir / "stderr.log"
        self.stdout_path = workdir / "stdout.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *args: str) -> Daemon:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.stderr_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "seqd", *args, "serve"],
                env=self.env,
                cwd=self.workdir,
                stdout=out,
                stderr=err,
            )
        return self

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"seqd exited {self.process.returncode}: {self.stderr()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"seqd did not answer in time: {self.stderr()}")

    def wait_output(self, text: str) -> str:
        """Standard output once it contains `text` (the banner is written after /healthz
        first answers)."""
        deadline = time.monotonic() + READY_TIMEOUT
        while text not in self.stdout():
            assert self.process is not None
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the output: {self.stderr()}")
            time.sleep(0.05)
        return self.stdout()

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        """The exit code; a process still running after `timeout` is killed, and the
        failure shows the end of its log (which parts had stopped), since the temporary
        directory holding the whole log does not outlive a few pytest runs."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            stuck = self.task_stacks()
            self.process.kill()
            self.process.wait(10)
            tail = "\n".join(self.stderr().splitlines()[-40:])
            message = f"seqd still running {timeout} s later; its log ends:\n{tail}\n{stuck}"
            raise AssertionError(message) from None

    def task_stacks(self) -> str:
        """Where each of the running seqd's asyncio tasks waits (its SIGUSR1 dump)."""
        assert self.process is not None
        before = len(self.stderr())
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            written = self.stderr()[before:]
            start = written.find(" asyncio tasks\n")
            if start >= 0 and written.endswith("\n"):
                time.sleep(0.2)  # the dump is one write; let it land whole
                return self.stderr()[before:]
            time.sleep(0.05)
        return "(no task dump within 5 s)"

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@contextmanager
def serving(redis_url: str, prefix: str, workdir: Path, **env: str) -> Iterator[Daemon]:
    """A healthy Daemon; on leaving, SIGTERM and a clean exit (0) asserted. (Killed if the
    block failed.)"""
    daemon = Daemon(redis_url, prefix, workdir, **env).start()
    try:
        daemon.wait_healthy()
        yield daemon
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.stderr()
    finally:
        daemon.stop()


def call(daemon: Daemon, key: str, method: str, path: str, body: Any = None) -> Any:
    """A JSON API call to `daemon` with API key `key`; a 4xx or 5xx fails the test."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{daemon.url}/v1{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"{method} {path}: {exc.code} {exc.read()!r}") from None
