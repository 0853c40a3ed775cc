"""`seqd serve` on the embedded store, and the `keys` commands with and without it running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port


def _env(tmp_path: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQD_")}
    env.update(
        SEQD_EMBEDDED_DATA_DIR=str(tmp_path / "data"),
        SEQD_HTTP_PORT=str(port),
        SEQD_LOG_FORMAT="json",
        SEQD_DISPATCH_ENABLED="false",
    )
    return env


def _seqd(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seqd", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Serve:
    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.out = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "seqd", "serve"],
            env=env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # Started when it says so, once every worker is ready: the first worker answers
        # HTTP while another may still be starting (seconds on a loaded machine), and a
        # worker whose start fails (the store killed under it) makes the stop exit 1.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if "seqd listening on http://" in log.read_text():
                return
            assert self.proc.poll() is None, log.read_text()
            time.sleep(0.05)
        raise AssertionError("seqd serve did not start: " + log.read_text())

    def request(self, path: str, key: str, body: object = None) -> tuple[int, object]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self.out.close()
        return code


def _store_running(data: Path) -> bool:
    """Whether the embedded valkey-server answers on its socket in `data`."""
    import redis

    client = redis.Redis(unix_socket_path=str(data / "valkey.sock"), socket_timeout=2)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, FileNotFoundError):
        return False
    finally:
        client.close()


@pytest.mark.slow
def test_embedded_store_first_run_persist_and_stop(tmp_path: Path) -> None:
    port = free_port()
    env = _env(tmp_path, port)
    serve = Serve(env, port, tmp_path / "serve1.log")
    try:
        text = serve.log.read_text()
        key = next(w for w in text.split() if w.startswith("sk_live_"))
        status, body = serve.request("/contacts", key, {"phone": "+14155550100"})
        assert status == 201
        cid = body["contact"]["id"]  # type: ignore[index]
        assert _store_running(tmp_path / "data"), "embedded valkey-server is not running"
        # The CLI works while serve runs, on the same embedded store.
        made = _seqd("keys", "create", "--tenant", "default", "--label", "ci", env=env)
        assert made.returncode == 0, made.stderr
        second = made.stdout.strip().splitlines()[-1]
        assert second.startswith("sk_live_")
        assert serve.request("/contacts", second)[0] == 200
    finally:
        assert serve.stop() == 0
    assert not _store_running(tmp_path / "data"), "valkey-server outlived seqd"

    # Not running: the CLI starts the store for itself and stops it again.
    listed = _seqd("keys", "list", "--tenant", "default", env=env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("key_") for line in lines)
    key_id = next(line.split("\t")[0] for line in lines if line.endswith("\tci"))
    revoked = _seqd("keys", "revoke", key_id, env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert not _store_running(tmp_path / "data")

    # A restart keeps the data (AOF), prints no new key, and the revoked key is refused.
    serve = Serve(env, port, tmp_path / "serve2.log")
    try:
        assert "sk_live_" not in serve.log.read_text()
        status, body = serve.request(f"/contacts/{cid}", key)
        assert status == 200 and body["contact"]["phone"] == "+14155550100"  # type: ignore[index]
        assert serve.request("/contacts", second)[0] == 401
    finally:
        assert serve.stop() == 0


def test_bad_config_names_the_setting(tmp_path: Path) -> None:
    env = _env(tmp_path, free_port())
    env["SEQD_HTTP_PORT"] = "eighty"
    result = _seqd("serve", env=env)
    assert result.returncode == 2
    assert "http.port" in result.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[redis]\nshards = 0\n[http]\nportt = 1\n")
    result = _seqd("serve", "--config", str(bad), env=_env(tmp_path, 1))
    assert result.returncode == 2 and "redis.shards" in result.stderr


def test_keys_create_rejects_bad_tenant(tmp_path: Path) -> None:
    result = _seqd("keys", "create", "--tenant", "Bad Name!", env=_env(tmp_path, 1))
    assert result.returncode == 2 and "tenant" in result.stderr


def test_keys_against_redis_url(tmp_path: Path, valkey: object) -> None:
    env = _env(tmp_path, 1)
    env["SEQD_REDIS_URL"] = valkey.url  # type: ignore[attr-defined]
    env["SEQD_REDIS_PREFIX"] = "cli" + str(os.getpid())
    made = _seqd("keys", "create", "--tenant", "acme", env=env)
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip().splitlines()[-1].startswith("sk_live_")
    assert not (tmp_path / "data").exists(), "an embedded store was started despite redis.url"


def test_second_serve_on_the_same_store_fails_at_once(tmp_path: Path) -> None:
    port = free_port()
    env = _env(tmp_path, port)
    serve = Serve(env, port, tmp_path / "serve1.log")
    try:
        started = time.monotonic()
        second = _seqd("serve", env={**env, "SEQD_HTTP_PORT": str(free_port())}, timeout=10)
        assert time.monotonic() - started < 10
        assert second.returncode == 1
        assert f"another seqd (pid {serve.proc.pid}) owns this store" in second.stderr
        assert str(tmp_path / "data") in second.stderr
        # The first one is untouched.
        key = next(w for w in serve.log.read_text().split() if w.startswith("sk_live_"))
        assert serve.request("/contacts", key)[0] == 200
    finally:
        assert serve.stop() == 0


def _store_pid(data: Path) -> int | None:
    """The pid of the valkey-server answering on the embedded socket, or None."""
    import redis

    client = redis.Redis(unix_socket_path=str(data / "valkey.sock"), socket_timeout=2)
    try:
        return int(client.info("server")["process_id"])
    except (redis.ConnectionError, FileNotFoundError):
        return None
    finally:
        client.close()


def test_embedded_store_restarted_when_it_dies(tmp_path: Path) -> None:
    port = free_port()
    env = {**_env(tmp_path, port), "SEQD_EMBEDDED_APPENDFSYNC": "always"}
    serve = Serve(env, port, tmp_path / "serve.log")
    try:
        key = next(w for w in serve.log.read_text().split() if w.startswith("sk_live_"))
        status, body = serve.request("/contacts", key, {"phone": "+14155550100"})
        assert status == 201
        cid = body["contact"]["id"]  # type: ignore[index]
        first = _store_pid(tmp_path / "data")
        assert first is not None
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while (second := _store_pid(tmp_path / "data")) in (None, first):
            assert time.monotonic() < deadline, "the store was not restarted: " + _tail(serve)
            time.sleep(0.05)
        # Same files: what was written before the kill is there (appendfsync always).
        while serve.request(f"/contacts/{cid}", key)[0] != 200:
            assert time.monotonic() < deadline, _tail(serve)
            time.sleep(0.05)
        events = [json.loads(line) for line in serve.log.read_text().splitlines() if "{" in line]
        died = next(e for e in events if e.get("event") == "embedded.died")
        assert died["pid"] == first
        restarted = next(
            e for e in events if e.get("event") == "embedded.started" and e["pid"] == second
        )
        assert restarted["restart"] == 1
    finally:
        assert serve.stop() == 0
    assert not _store_running(tmp_path / "data"), "the restarted valkey-server outlived seqd"


def _tail(serve: Serve) -> str:
    return "\n".join(serve.log.read_text().splitlines()[-20:])
