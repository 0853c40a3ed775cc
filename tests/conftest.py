"""Shared fixtures: private valkey-servers on free ports, a fresh key prefix per test."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import pytest
import redis

os.environ["SEQD_CHECK_SLOTS"] = "1"

from seqd import stacks
from seqd.config import ComplianceConfig, SmsQuietHours
from seqd.embedded import find_binary
from seqd.store import scripts
from seqd.store.db import Store, connect

if TYPE_CHECKING:
    from tests.clusterutil import ValkeyCluster

scripts.CHECK_SLOTS = True

# A test (or a parameter) that runs on a real Valkey cluster: in the slow tier.
ON_CLUSTER = (pytest.mark.slow, pytest.mark.cluster)


@pytest.hookimpl(hookwrapper=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> Generator[None]:
    """pytest-timeout (pyproject.toml: `timeout`) fails a test that hangs, with every
    thread's stack; most of ours hang in an asyncio task while the thread idles in the
    selector, so its alarm first prints where each task of the running loop waits."""
    yield
    handler = signal.getsignal(signal.SIGALRM)
    if not callable(handler):
        return  # the thread method: it has no loop of this thread to look at

    def dump_then_fail(signum: int, frame: FrameType | None) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            terminal = item.config.get_terminal_writer()
            terminal.sep("+", title="asyncio tasks at the timeout")
            terminal.write(stacks.task_stacks(loop))
        handler(signum, frame)

    signal.signal(signal.SIGALRM, dump_then_fail)


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


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    """3 primaries, no replicas: shared by the tests, each on a prefix of its own."""
    from tests.clusterutil import running  # clusterutil imports this module

    with running(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


# Test modules whose `store` tests run on the 3-primary cluster too, in the slow tier: the
# dispatch, lifecycle, webhook, intake-free CLI and ops paths a cluster serves as one server
# does. (Modules of `any_store` and `api` tests have those fixtures' cluster parameter.)
STORE_ON_CLUSTER = frozenset(
    {
        "test_dispatch_engine",
        "test_dispatch_recovery",
        "test_senders_api",
        "test_senders_budget",
        "test_senders_channels",
        "test_senders_dispatch",
        "test_senders_inbound",
        "test_dispatch_slow_channel",
        "test_idempotency_key",
        "test_importer",
        "test_intake",
        "test_intake_split",
        "test_lifecycle_email",
        "test_lifecycle_sms",
        "test_lifecycle_status",
        "test_lifecycle_suppressions",
        "test_lifecycle_unsubscribe",
        "test_ops_health",
        "test_ops_status",
        "test_store_groups",
        "test_webhooks_delivery",
    }
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rpartition(".")[2]
    if "store_url" in metafunc.fixturenames and module in STORE_ON_CLUSTER:
        metafunc.parametrize(
            "store_url", ["valkey", pytest.param("cluster", marks=ON_CLUSTER)], indirect=True
        )


@pytest.fixture
def store_url(request: pytest.FixtureRequest) -> str:
    """The `store` fixture's server: the session's valkey-server, or (a module in
    STORE_ON_CLUSTER, slow tier) the session's cluster."""
    on = getattr(request, "param", "valkey")
    server: ValkeyProcess | ValkeyCluster = request.getfixturevalue(
        "valkey" if on == "valkey" else "valkey_cluster"
    )
    return server.url


@pytest.fixture
async def store(store_url: str, prefix: str) -> AsyncIterator[Store]:
    s = await Store.open(connect(store_url), prefix, 4)
    yield s
    await s.close()


@pytest.fixture
async def cluster_store(valkey_cluster: ValkeyCluster, prefix: str) -> AsyncIterator[Store]:
    s = await Store.open(connect(valkey_cluster.url), prefix, 4)
    yield s
    await s.close()


@pytest.fixture
async def fake_store(prefix: str) -> AsyncIterator[Store]:
    import fakeredis

    client = fakeredis.FakeAsyncRedis(decode_responses=True)
    s = await Store.open(client, prefix, 4)
    yield s
    await s.close()


@pytest.fixture(
    params=["valkey", "fakeredis", pytest.param("cluster", marks=ON_CLUSTER)],
)
def any_store(request: pytest.FixtureRequest) -> Store:
    """Each test on a real valkey-server and on fakeredis (the scripts run there too), and in
    the slow tier on a 3-primary Valkey cluster."""
    fixture = {"valkey": "store", "fakeredis": "fake_store", "cluster": "cluster_store"}
    store: Store = request.getfixturevalue(fixture[request.param])
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


@pytest.fixture(params=["valkey", pytest.param("cluster", marks=ON_CLUSTER)])
def api_store(request: pytest.FixtureRequest) -> Store:
    """The `api` fixture's store: a real valkey-server, and in the slow tier the cluster."""
    store: Store = request.getfixturevalue(
        "store" if request.param == "valkey" else "cluster_store"
    )
    return store


@pytest.fixture
async def api(api_store: Store) -> AsyncIterator[Api]:
    from aiohttp.test_utils import TestClient, TestServer

    from seqd.api.app import create_app
    from seqd.config import Config

    store = api_store
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
