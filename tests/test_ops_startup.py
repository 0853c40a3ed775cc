"""`seqd serve`'s start: the listener is bound before anything else runs, so a busy port is
one line and leaves nothing behind; the first tenant's key is shown by the start that
completes, again if an earlier start created it and did not finish."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from seqd.config import Config, HttpConfig
from seqd.service import ListenError, bind
from seqd.store.db import Store
from seqd.store.tenants import DEFAULT_TENANT
from tests.conftest import ValkeyProcess, free_port
from tests.opsutil import Daemon


def _key(text: str) -> str | None:
    return next((w for w in text.split() if w.startswith("sk_live_")), None)


def test_busy_port_is_one_line_and_creates_no_key(
    valkey: ValkeyProcess, prefix: str, tmp_path: Path
) -> None:
    busy = Daemon(valkey.url, prefix, tmp_path / "busy", SEQD_DISPATCH_ENABLED="false")
    with socket.create_server(("127.0.0.1", busy.port)):
        busy.start()
        assert busy.wait(30) == 1
    lines = busy.stderr().strip().splitlines()
    assert len(lines) == 1, busy.stderr()
    assert lines[0].startswith(f"seqd: cannot listen on 127.0.0.1:{busy.port}:"), lines
    assert "in use" in lines[0] and "http.port" in lines[0]
    assert _key(busy.stdout()) is None

    # Nothing was created: the start that succeeds is the first, and shows the key.
    daemon = Daemon(valkey.url, prefix, tmp_path / "ok", SEQD_DISPATCH_ENABLED="false").start()
    try:
        daemon.wait_healthy()
        key = _key(daemon.wait_output("seqd listening"))
        assert key is not None, daemon.stdout()
        status, _ = daemon.get("/v1/contacts", {"Authorization": f"Bearer {key}"})
        assert status == 200
    finally:
        daemon.stop()


async def test_first_key_is_shown_again_until_a_start_completes(store: Store) -> None:
    secret = await store.tenants.bootstrap()
    assert secret is not None and secret.startswith("sk_live_")
    # That start died before it showed the key: the next shows the same key, not a new one.
    assert await store.tenants.bootstrap() == secret
    assert await store.tenants.authenticate(secret) == DEFAULT_TENANT
    assert len(await store.tenants.list_keys(DEFAULT_TENANT)) == 1
    await store.tenants.bootstrap_shown()
    assert await store.tenants.bootstrap() is None
    assert await store.tenants.authenticate(secret) == DEFAULT_TENANT


def test_bind_every_address_of_the_host_and_name_a_busy_one() -> None:
    port = free_port()
    config = Config(http=HttpConfig(host="localhost", port=port))
    sockets = bind(config)
    try:
        assert sockets and all(s.getsockname()[1] == port for s in sockets)
        with pytest.raises(ListenError, match=f"cannot listen on localhost:{port}: .*in use"):
            bind(config)
    finally:
        for s in sockets:
            s.close()
    unknown = Config(http=HttpConfig(host="no-such-host.invalid", port=1))
    with pytest.raises(ListenError, match=r"on no-such-host\.invalid:1: .*http\.host"):
        bind(unknown)
