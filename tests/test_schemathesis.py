"""Every operation of the served OpenAPI document, fuzzed by schemathesis against the real
app (a real listener on a free port, a real valkey): no 5xx, and every answer's status,
content type and body are the ones the document declares.

A bounded number of examples per operation (`EXAMPLES`, both valid and invalid inputs)
keeps it in CI; `SEQD_FUZZ_EXAMPLES` raises it for a longer hunt.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from seqd.api.app import create_app
from seqd.config import Config, HttpConfig, LifecycleConfig
from seqd.store.db import Store, connect
from tests.conftest import ValkeyProcess, free_port

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("SEQD_FUZZ_EXAMPLES", "12"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@schemathesis.serializer("message/rfc822")
def _raw_email(_ctx: Any, value: Any) -> bytes:
    """The inbound email routes take a raw message; anything generated goes in as text."""
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogatepass")


class Server:
    """The app on its own event loop in a thread, as a separate process would serve it."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.redis_url = redis_url
        self.prefix = prefix
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.key = ""
        self.store: Store | None = None

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> None:
        from aiohttp import web

        self.store = await Store.open(connect(self.redis_url), self.prefix, 4)
        _, self.key = await self.store.tenants.create_key("acme")
        config = Config(
            http=HttpConfig(public_url=self.base_url),
            lifecycle=LifecycleConfig(unsubscribe_secret="s" * 32),
        )
        self.runner = web.AppRunner(create_app(config, self.store), access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        async def _stop() -> None:
            await self.runner.cleanup()
            assert self.store is not None
            await self.store.close()

        asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def server(valkey: ValkeyProcess, prefix: str) -> Iterator[Server]:
    srv = Server(valkey.url, prefix)
    srv.start()
    yield srv
    srv.stop()


def _operations(server: Server) -> list[Any]:
    document = requests.get(server.base_url + "/v1/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    return [result.ok() for result in schema.get_all_operations()]


def _summary(failure: BaseException) -> str:
    text = str(failure)
    return text if len(text) < 1500 else text[:1500] + " ..."


class Fuzzer:
    """Runs each operation's strategy through the checks and collects what fails."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.headers = {"Authorization": f"Bearer {server.key}"}
        self.session = requests.Session()
        self.failures: list[str] = []
        self.calls = 0

    def run(self, operation: Any, path_parameters: dict[str, str] | None = None) -> None:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                # The same requests every CI run; SEQD_FUZZ_RANDOM=1 draws new ones.
                derandomize=os.environ.get("SEQD_FUZZ_RANDOM") != "1",
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def run(case: Any) -> None:
                self.calls += 1
                case.call_and_validate(
                    base_url=self.server.base_url,
                    session=self.session,
                    headers=self.headers,
                    checks=CHECKS,
                )

            try:
                run()
            except Unsatisfiable:
                # No invalid input exists (an operation without parameters or body).
                assert mode is GenerationMode.NEGATIVE, operation.label
            except (Exception, BaseExceptionGroup) as exc:
                found = getattr(exc, "exceptions", [exc])
                where = f"{operation.label} ({mode.value}, {path_parameters or 'random ids'})"
                self.failures += [f"{where}: {_summary(f)}" for f in found]

    def post(self, path: str, body: object) -> Any:
        resp = self.session.post(
            self.server.base_url + "/v1" + path, json=body, headers=self.headers, timeout=10
        )
        assert resp.status_code == 201, resp.text
        return resp.json()


def _existing(fuzz: Fuzzer) -> dict[str, str]:
    """Objects that exist, by the path prefix of the routes about them."""
    contact = fuzz.post("/contacts", {"phone": "+14155550100", "email": "a@example.com"})
    steps = [{"kind": "sms", "body": "hi"}, {"kind": "sms", "body": "again", "wait_minutes": 60}]
    sequence = fuzz.post("/sequences", {"name": "S", "status": "active", "steps": steps})
    sid, cid = sequence["sequence"]["id"], contact["contact"]["id"]
    enrollment = fuzz.post(f"/sequences/{sid}/enrollments", {"contact_id": cid})
    endpoint = fuzz.post(
        "/webhook-endpoints", {"url": "https://93.184.216.34/hook", "events": ["*"]}
    )
    sender = fuzz.post("/senders", {"channel": "sms", "address": "+14155550177"})
    return {
        "/v1/senders/": sender["sender"]["id"],
        "/v1/contacts/": cid,
        "/v1/sequences/": sid,
        "/v1/enrollments/": enrollment["enrollment"]["id"],
        "/v1/webhook-endpoints/": endpoint["webhook_endpoint"]["id"],
    }


def test_every_operation_answers_as_documented(server: Server) -> None:
    """Every operation with random input and ids; then every `{id}` operation again on an
    object that exists (deletes last), so the found-object paths are fuzzed too."""
    fuzz = Fuzzer(server)
    operations = _operations(server)
    for operation in operations:
        fuzz.run(operation)
    existing = _existing(fuzz)
    with_ids = [o for o in operations if "{id}" in o.path]
    for operation in sorted(with_ids, key=lambda o: o.method.upper() == "DELETE"):
        prefix = next((p for p in existing if operation.path.startswith(p)), None)
        if prefix is not None:
            fuzz.run(operation, {"id": existing[prefix]})
    assert len(operations) > 30
    print(f"schemathesis: {len(operations)} operations, {fuzz.calls} requests")
    assert not fuzz.failures, "\n\n".join(fuzz.failures)
