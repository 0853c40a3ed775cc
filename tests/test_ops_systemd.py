"""sd_notify against a datagram socket of the test's own, and the shipped unit file."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from seqd import systemd
from tests.conftest import ValkeyProcess
from tests.opsutil import Daemon

UNIT = Path(__file__).parent.parent / "deploy" / "seqd.service"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield str(path), sock
    sock.close()


def receive(sock: socket.socket, until: str, timeout: float = 30.0) -> list[str]:
    """Messages (each a list of lines joined by newlines) up to the one containing `until`."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if any(until in line.split("\n") for line in got[-1:]):
            return got
    raise AssertionError(f"no {until!r} in {got}")


def test_serve_speaks_sd_notify(
    valkey: ValkeyProcess, prefix: str, tmp_path: Path, notify_socket: tuple[str, socket.socket]
) -> None:
    path, sock = notify_socket
    d = Daemon(
        valkey.url,
        prefix,
        tmp_path / "d",
        NOTIFY_SOCKET=path,
        WATCHDOG_USEC="200000",  # 0.2 s: pings every 0.1 s
    )
    d.start()
    try:
        before_ready = receive(sock, "READY=1")
        # READY only once the HTTP listener (and so the store and scripts) is up.
        assert d.get("/readyz")[0] == 200
        assert not any("WATCHDOG=1" in m for m in before_ready)
        after = receive(sock, "WATCHDOG=1")
        after += receive(sock, "WATCHDOG=1")
        lines = [line for m in before_ready + after for line in m.split("\n")]
        status = [line for line in lines if line.startswith("STATUS=")]
        assert status and any("steps/s" in s for s in status), lines
        d.signal(signal.SIGTERM)
        stopping = receive(sock, "STOPPING=1")
        assert d.wait() == 0, d.stderr()
        assert "STOPPING=1" in stopping[-1].split("\n")
    finally:
        d.stop()


def test_child_processes_do_not_inherit_the_socket() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = systemd.Notifier.from_environ(env)
    assert env == {}
    assert notifier.address == "/run/x"
    assert notifier.watchdog_seconds == 15.0


def test_watchdog_for_another_pid_is_ignored() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}
    assert systemd.Notifier.from_environ(env).watchdog_seconds is None


def test_outside_systemd_nothing_is_sent() -> None:
    notifier = systemd.Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.send("READY=1") is False


async def test_abstract_socket_and_heartbeat() -> None:
    name = "seqd-test-" + uuid.uuid4().hex
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.setblocking(False)
    notifier = systemd.Notifier("@" + name, watchdog_usec=40_000)
    messages: list[str] = []
    try:
        notifier.ready("starting")
        async with systemd.heartbeat(notifier, lambda: "ready; sending 1.0 steps/s"):
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(5):
                while sum(m.startswith("WATCHDOG=1") for m in messages) < 2:
                    messages.append((await loop.sock_recv(sock, 4096)).decode())
        notifier.stopping()
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except BlockingIOError:
                break
    finally:
        notifier.close()
        sock.close()
    assert messages[0] == "READY=1\nSTATUS=starting"
    pings = [m for m in messages if m.startswith("WATCHDOG=1")]
    assert len(pings) >= 2
    assert pings[0] == "WATCHDOG=1\nSTATUS=ready; sending 1.0 steps/s"
    assert messages[-1] == "STOPPING=1\nSTATUS=draining"


def test_unreachable_socket_is_not_fatal(tmp_path: Path) -> None:
    notifier = systemd.Notifier(str(tmp_path / "nobody-listens"))
    try:
        assert notifier.send("READY=1") is False
        assert notifier.send("READY=1") is False
    finally:
        notifier.close()


def test_send_rate_status() -> None:
    sent = [0]
    clock = [100.0]
    rate = systemd.SendRate(lambda: sent[0], lambda: clock[0])
    sent[0], clock[0] = 50, 110.0
    assert rate() == "ready; sending 5.0 steps/s"
    assert rate() == "ready; sending 0.0 steps/s"


def _unit() -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value given (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_unit_file_has_notify_watchdog_and_hardening() -> None:
    unit = _unit()
    service = {key: values[0] for key, values in unit["Service"].items()}
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert int(service["WatchdogSec"].rstrip("s")) > 0
    assert service["Restart"] == "on-failure"
    assert service.get("DynamicUser") == "yes" or service.get("User")
    assert service["StateDirectory"] == "seqd"
    assert service["ExecStart"].split()[0].endswith("seqd")
    assert "serve" in service["ExecStart"].split()
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter": "@system-service",
        "CapabilityBoundingSet": "",
        "KillSignal": "SIGTERM",
        # The supervisor alone gets SIGTERM, and drains its workers (supervisor.py).
        "KillMode": "mixed",
    }.items():
        assert service[key] == value, key
    assert unit["Service"]["LoadCredential"]
    # The drain must finish before systemd's stop timeout.
    assert int(service["TimeoutStopSec"].rstrip("s")) > 10
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_file_verifies(tmp_path: Path) -> None:
    # verify wants ExecStart's binary to exist: point a copy at one that does.
    text = UNIT.read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    binary = exec_start.split("=", 1)[1].split()[0]
    copy = tmp_path / "seqd.service"
    copy.write_text(text.replace(binary, shutil.which("true") or "/bin/true", 1))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [
        line for line in result.stderr.splitlines() if str(copy) in line or "seqd.service" in line
    ]
    assert not problems, result.stderr
