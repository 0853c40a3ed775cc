"""Shared fixtures: private valkey-servers on free ports, a fresh key prefix per test."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

os.environ["SEQD_CHECK_SLOTS"] = "1"

from seqd.config import ComplianceConfig, SmsQuietHours
from seqd.embedded import find_binary
from seqd.store import scripts
from seqd.store.db import Store, connect

scripts.CHECK_SLOTS = True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ValkeyProcess:
    """A valkey-server of our own on a free loopback port, data in `directory`."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                find_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                str(self.directory / "valkey.log"),
                *self.extra,
            ]
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        client.close()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyProcess]:
    server = ValkeyProcess(tmp_path_factory.mktemp("valkey"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def valkey_factory(tmp_path: Path) -> Iterator[type[ValkeyProcess]]:
    started: list[ValkeyProcess] = []

    class Factory(ValkeyProcess):
        def __init__(self, *extra: str) -> None:
            super().__init__(tmp_path / f"valkey-{len(started)}", *extra)
            started.append(self)

    yield Factory
    for server in started:
        server.stop()


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
async def store(valkey: ValkeyProcess, prefix: str) -> AsyncIterator[Store]:
    s = await Store.open(connect(valkey.url), prefix, 4)
    yield s
    await s.close()


@pytest.fixture
async def fake_store(prefix: str) -> AsyncIterator[Store]:
    import fakeredis

    client = fakeredis.FakeAsyncRedis(decode_responses=True)
    s = await Store.open(client, prefix, 4)
    yield s
    await s.close()


@pytest.fixture(params=["valkey", "fakeredis"])
def any_store(request: pytest.FixtureRequest) -> Store:
    """Each test twice: on a real valkey-server, and on fakeredis (the scripts run there too)."""
    store: Store = request.getfixturevalue("store" if request.param == "valkey" else "fake_store")
    return store


QUIET_OFF = ComplianceConfig(sms_quiet_hours=SmsQuietHours(enabled=False))


class Api:
    """A TestClient on the app, with one tenant's key; `as_tenant` gives another tenant's view."""

    def __init__(self, client: object, key: str, store: Store) -> None:
        self.client = client
        self.key = key
        self.store = store

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    async def call(
        self, method: str, path: str, json: object = None, *, key: str | None = None, **kw: object
    ) -> tuple[int, object]:
        kwargs: dict[str, object] = {"headers": self.headers(key), **kw}
        if json is not None:
            kwargs["json"] = json
        resp = await self.client.request(method, "/v1" + path, **kwargs)  # type: ignore[attr-defined]
        text = await resp.text()
        import json as jsonlib

        return resp.status, (jsonlib.loads(text) if text else None)


@pytest.fixture
async def api(store: Store) -> AsyncIterator[Api]:
    from aiohttp.test_utils import TestClient, TestServer

    from seqd.api.app import create_app
    from seqd.config import Config

    _, key = await store.tenants.create_key("acme")
    # SMS quiet hours off: what these tests assert must not depend on the time of day they
    # run at (tests/test_timing_*.py turn them on with an injected clock).
    app = create_app(Config(compliance=QUIET_OFF), store)
    async with TestClient(TestServer(app)) as client:
        yield Api(client, key, store)


@pytest.fixture
async def quiet_api(store: Store, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Api]:
    """The API under the default config (SMS quiet hours on), its enroll clock fixed at
    tests.timingutil.NOW."""
    from aiohttp.test_utils import TestClient, TestServer

    from seqd import bulk
    from seqd.api.app import create_app
    from seqd.config import Config
    from seqd.store import enrollments
    from tests.timingutil import NOW

    monkeypatch.setattr(bulk, "now_ms", lambda: NOW)
    monkeypatch.setattr(enrollments, "now_ms", lambda: NOW)
    _, key = await store.tenants.create_key("acme")
    async with TestClient(TestServer(create_app(Config(), store))) as client:
        yield Api(client, key, store)


class ScriptCalls:
    """Every `call_many` of a store's runner, still made: (script, keys, tag) of each
    call in `calls`, and how many calls each round trip carried in `trips`."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, list[str], str]] = []
        self.trips: list[int] = []
        call_many = store.runner.call_many

        async def spy(calls: Any) -> list[Any]:
            self.calls.extend((name, list(keys), tag) for name, keys, _, tag in calls)
            self.trips.append(len(calls))
            return await call_many(calls)

        monkeypatch.setattr(store.runner, "call_many", spy)
