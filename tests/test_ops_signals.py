"""Signals on a real `seqd serve`: SIGTERM/SIGINT drain and exit 0, a second one exits at
once, SIGHUP reopens the log file and reloads the level, SIGUSR1 shows where each asyncio
task waits."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import ValkeyProcess
from tests.opsutil import Daemon


@pytest.fixture
def daemon(valkey: ValkeyProcess, prefix: str, tmp_path: Path) -> object:
    started: list[Daemon] = []

    def make(**env: str) -> Daemon:
        d = Daemon(valkey.url, prefix, tmp_path / f"d{len(started)}", **env)
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_one_signal_drains_and_exits_zero(daemon: object, sig: signal.Signals) -> None:
    d = daemon()  # type: ignore[operator]
    d.start()
    d.wait_healthy()
    d.signal(sig)
    assert d.wait() == 0, d.stderr()
    events = [json.loads(line)["event"] for line in d.stderr().splitlines() if line.startswith("{")]
    assert events.index("service.stopping") < events.index("service.stopped")


def test_second_signal_exits_at_once(daemon: object) -> None:
    d = daemon()  # type: ignore[operator]
    d.start()
    d.wait_healthy()
    # Back to back: the second arrives while the first one's drain is under way.
    d.signal(signal.SIGTERM)
    d.signal(signal.SIGINT)
    assert d.wait() == 1, d.stderr()
    assert '"service.exit_now"' in d.stderr()
    assert '"service.stopped"' not in d.stderr()


def test_sigusr1_shows_where_each_task_waits_and_serves_on(daemon: object) -> None:
    d = daemon()  # type: ignore[operator]
    d.start()
    d.wait_healthy()
    dump = d.task_stacks()
    # The background loops, each at the line it waits on.
    for task in ("'dispatcher'", "'intake-1'", "'events.reader'", "'events.deliverer'"):
        assert f"task {task}:" in dump, dump
    assert 'seqd/loop.py", line' in dump, dump
    assert d.get("/healthz")[0] == 200
    d.signal(signal.SIGTERM)
    assert d.wait() == 0, d.stderr()


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_sighup_reopens_log_file_and_reloads_level(daemon: object, tmp_path: Path) -> None:
    log_file = tmp_path / "seqd.log"
    config = tmp_path / "seqd.toml"
    config.write_text('[log]\nlevel = "info"\n')
    d = daemon(SEQD_LOG_FILE=str(log_file), SEQD_CONFIG=str(config))  # type: ignore[operator]
    d.start()
    d.wait_healthy()
    assert any(e["event"] == "service.listening" for e in _lines(log_file))

    # logrotate moves the file away, then sends SIGHUP.
    rotated = tmp_path / "seqd.log.1"
    log_file.rename(rotated)
    d.signal(signal.SIGHUP)
    _wait_for(
        lambda: log_file.exists() and any(e["event"] == "log.reloaded" for e in _lines(log_file))
    )
    d.get("/healthz")
    _wait_for(lambda: any(e["event"] == "http.request" for e in _lines(log_file)))
    before = len(_lines(rotated))

    # The level comes from the file as it is now: warning hides the access log. Rotated
    # again, the new file's appearance shows the reload ran (the reopen and the level
    # change are one callback on the daemon's loop, before it serves the next request).
    config.write_text('[log]\nlevel = "warning"\n')
    log_file.rename(tmp_path / "seqd.log.2")
    d.signal(signal.SIGHUP)
    _wait_for(log_file.exists)
    d.get("/healthz")
    d.get("/healthz")
    # A request's line is written before its response is sent (api/access.py).
    assert [e for e in _lines(log_file) if e["event"] == "http.request"] == []
    assert len(_lines(rotated)) == before  # nothing written to the moved file after the reopen

    # A config that no longer loads keeps the level and says why.
    config.write_text('[log]\nlevel = "loud"\n')
    d.signal(signal.SIGHUP)
    _wait_for(lambda: any(e["event"] == "log.reload_failed" for e in _lines(log_file)))
    failed = next(e for e in _lines(log_file) if e["event"] == "log.reload_failed")
    assert "log.level" in str(failed["error"])

    d.signal(signal.SIGTERM)
    assert d.wait() == 0
