"""Logs: one JSON line per event, one access line per request, no secret or body ever."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer

from seqd import logs, redact
from seqd.api.app import create_app
from seqd.config import Config, LogConfig
from seqd.store.db import Store


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logs.setup(LogConfig(format="auto"), stream=out)
    yield out
    logs.setup(LogConfig(), stream=io.StringIO())


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


@pytest.fixture
async def client(store: Store, captured: io.StringIO) -> AsyncIterator[tuple[TestClient, str]]:
    _, key = await store.tenants.create_key("acme")
    async with TestClient(TestServer(create_app(Config(), store))) as c:
        yield c, key


def test_json_lines_off_a_terminal_console_on_one(captured: io.StringIO) -> None:
    structlog.get_logger("t").info("thing.happened", count=3)
    (line,) = lines(captured)
    assert line["event"] == "thing.happened"
    assert line["count"] == 3
    assert line["level"] == "info"
    assert "timestamp" in line

    tty = Tty()
    logs.setup(LogConfig(format="auto"), stream=tty)
    structlog.get_logger("t").info("thing.happened", count=3)
    text = tty.getvalue()
    assert "thing.happened" in text and "count=3" in text
    assert not text.lstrip().startswith("{")


def test_stdlib_logging_goes_through_the_same_chain(captured: io.StringIO) -> None:
    logging.getLogger("some.library").warning("connection lost to %s", "redis://u:pw@h:6379")
    (line,) = lines(captured)
    assert line["event"] == "connection lost to redis://u:***@h:6379"
    assert line["level"] == "warning"


async def test_every_request_logged_once_with_route_template(
    client: tuple[TestClient, str], captured: io.StringIO
) -> None:
    c, key = client
    auth = {"Authorization": f"Bearer {key}"}
    resp = await c.post(
        "/v1/contacts", json={"first_name": "Secretbody", "phone": "+14155550100"}, headers=auth
    )
    assert resp.status == 201
    contact_id = (await resp.json())["contact"]["id"]
    await c.get(f"/v1/contacts/{contact_id}", headers=auth)
    await c.get("/v1/contacts/con_nope", headers=auth)
    await c.get("/nowhere")
    access = [e for e in lines(captured) if e["event"] == "http.request"]
    assert [(e["method"], e["route"], e["status"]) for e in access] == [
        ("POST", "/v1/contacts", 201),
        ("GET", "/v1/contacts/{id}", 200),
        ("GET", "/v1/contacts/{id}", 404),
        ("GET", "unmatched", 404),
    ]
    for e in access:
        assert isinstance(e["duration_ms"], float)
        assert len(str(e["request_id"])) == 32
    text = captured.getvalue()
    assert key not in text and key[:12] not in text
    assert "Secretbody" not in text and "14155550100" not in text
    assert contact_id not in json.dumps([e["route"] for e in access])


async def test_request_id_accepted_generated_and_returned(
    client: tuple[TestClient, str], captured: io.StringIO
) -> None:
    c, _ = client
    resp = await c.get("/healthz", headers={"X-Request-Id": "lb-7f3a.1:2"})
    assert resp.headers["X-Request-Id"] == "lb-7f3a.1:2"
    resp = await c.get("/healthz", headers={"X-Request-Id": "bad id\twith spaces"})
    generated = resp.headers["X-Request-Id"]
    assert generated != "bad id\twith spaces" and len(generated) == 32
    resp = await c.get("/healthz", headers={"X-Request-Id": "x" * 500})
    assert len(resp.headers["X-Request-Id"]) == 32
    resp = await c.get("/healthz")
    assert len(resp.headers["X-Request-Id"]) == 32
    ids = [e["request_id"] for e in lines(captured) if e["event"] == "http.request"]
    assert ids[:2] == ["lb-7f3a.1:2", generated]


async def test_request_id_on_error_responses(client: tuple[TestClient, str]) -> None:
    c, _ = client
    resp = await c.get("/v1/contacts", headers={"X-Request-Id": "req-401"})
    assert resp.status == 401
    assert resp.headers["X-Request-Id"] == "req-401"
    resp = await c.post("/v1/contacts", data=b"{not json", headers={"X-Request-Id": "req-400"})
    assert resp.headers["X-Request-Id"] == "req-400"


async def test_lines_logged_while_handling_carry_the_request_id(
    client: tuple[TestClient, str], captured: io.StringIO
) -> None:
    from aiohttp import web

    from seqd.api.access import access_middleware
    from seqd.appkeys import METRICS
    from seqd.metrics import Metrics

    async def handler(request: web.Request) -> web.Response:
        structlog.get_logger("t").info("inner.work")
        return web.Response(text="ok")

    app = web.Application(middlewares=[access_middleware])
    app[METRICS] = Metrics()
    app.router.add_get("/x", handler)
    async with TestClient(TestServer(app)) as c:
        await c.get("/x", headers={"X-Request-Id": "abc"})
    inner = next(e for e in lines(captured) if e["event"] == "inner.work")
    assert inner["request_id"] == "abc"


def test_redaction_processor(captured: io.StringIO) -> None:
    log = structlog.get_logger("t")
    log.info(
        "call",
        authorization="Bearer sk_live_x",
        api_key="sk_live_y",
        auth_token="tok",
        password="pw",
        secret="whsec_z",
        body="Hello Ada",
        subject="Your invoice",
        headers={"X-Api-Key": "sk_live_w", "Accept": "json"},
        url="https://user:pw2@example.com/hook?token=t0k&x=1",
        count=2,
        empty_token="",
    )
    (line,) = lines(captured)
    for key in ("authorization", "api_key", "auth_token", "password", "secret", "body", "subject"):
        assert line[key] == "***", key
    assert line["headers"] == {"X-Api-Key": "***", "Accept": "json"}
    assert line["url"] == "https://user:***@example.com/hook?token=***&x=1"
    assert line["count"] == 2
    assert line["empty_token"] == ""
    text = captured.getvalue()
    for leaked in ("sk_live", 'tok"', 'pw"', "whsec", "Hello Ada", "invoice", "pw2", "t0k"):
        assert leaked not in text, leaked


def test_secret_names() -> None:
    for name in (
        "auth_token",
        "password",
        "X-Api-Key",
        "api_key",
        "header_value",
        "Authorization",
        "signing_secret",
        "smtp.password",
        "Cookie",
    ):
        assert redact.is_secret_name(name), name
    for name in ("account_sid", "header_name", "username", "key_id", "tokens_used", "url"):
        assert not redact.is_secret_name(name), name


def test_log_file_level_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "seqd.log"
    logs.setup(LogConfig(file=str(path), level="info"))
    try:
        log = structlog.get_logger("t")
        log.info("one")
        log.debug("hidden")
        path.rename(tmp_path / "seqd.log.1")
        logs.reopen()
        log.info("two")
        logs.set_level("debug")
        log.debug("three")
        logs.set_level("error")
        log.warning("hidden.too")
        assert [
            json.loads(x)["event"] for x in (tmp_path / "seqd.log.1").read_text().splitlines()
        ] == ["one"]
        assert [json.loads(x)["event"] for x in path.read_text().splitlines()] == ["two", "three"]
    finally:
        logs.setup(LogConfig(), stream=io.StringIO())


class Writes(io.StringIO):
    """A stderr that keeps each write call apart, as the OS sees them (stderr writes through)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def test_each_record_reaches_stderr_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    # Workers share the service's stderr: a record written in pieces could be cut into.
    err = Writes()
    monkeypatch.setattr("sys.stderr", err)
    logs.setup(LogConfig(format="json"))
    try:
        structlog.get_logger("t").error("boom", detail="x" * 5000)
        logging.getLogger("lib").warning("from a library")
    finally:
        logs.setup(LogConfig(), stream=io.StringIO())
    assert len(err.calls) == 2
    assert all(call.endswith("\n") and call.count("\n") == 1 for call in err.calls)
    assert json.loads(err.calls[0])["detail"] == "x" * 5000
