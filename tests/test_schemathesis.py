"""The served OpenAPI document fuzzed by schemathesis in all four phases (examples,
coverage, fuzzing, and the stateful phase that follows the document's links from created
objects to the operations on them) against the real app (a real listener on a free port, a
real valkey), with schemathesis's default checks: no 5xx, every answer's status, headers,
content type and body as documented, schema-valid input accepted (but for the rules beyond
a schema, `tests/schemathesis_hooks.py`) and schema-invalid input refused.

A bounded number of examples per operation (`EXAMPLES`) keeps it to a couple of minutes;
`SEQD_FUZZ_EXAMPLES` raises it for a longer hunt, `SEQD_FUZZ_RANDOM=1` draws new cases.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from seqd import logs
from seqd.config import Config, HttpConfig, LifecycleConfig, LogConfig, WebhooksConfig
from seqd.events import signing
from seqd.service import build_app
from seqd.store.db import Store, connect
from tests.conftest import ValkeyProcess, free_port

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("SEQD_FUZZ_EXAMPLES", "10"))
SEED = "20261207"
ROOT = Path(__file__).resolve().parent.parent
# Operations on a found object: reached only through the document's links, in the stateful
# phase (the other phases make up ids, which are 404s).
LINKED = (
    "/v1/contacts/{id}",
    "/v1/sequences/{id}",
    "/v1/enrollments/{id}",
    "/v1/webhook-endpoints/{id}",
    "/v1/events/{id}",
)
_REQUESTS = re.compile(
    r'^seqd_http_requests_total\{method="(\w+)",route="([^"]+)",status="(\d+)"\} (\S+)$'
)


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
            webhooks=WebhooksConfig(step_secret=signing.new_secret()),
        )
        # The whole daemon's app: the outbox reader records the event log /events serves.
        self.runner = web.AppRunner(build_app(config, self.store), access_log=None)
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

    def seed(self) -> None:
        """Objects the run can find by listing (a webhook endpoint needs a public URL, which
        no generated one is) and events about them; the stateful phase follows the list
        operations' links to them."""
        headers = {"Authorization": f"Bearer {self.key}"}

        def post(path: str, body: object) -> Any:
            resp = requests.post(
                self.base_url + "/v1" + path, json=body, headers=headers, timeout=10
            )
            assert resp.status_code == 201, resp.text
            return resp.json()

        post("/webhook-endpoints", {"url": "https://93.184.216.34/hook", "events": ["*"]})
        post("/senders", {"channel": "sms", "address": "+14155550177"})
        contact = post("/contacts", {"phone": "+14155550100", "email": "a@example.com"})
        steps = [
            {"kind": "sms", "body": "hi"},
            {"kind": "sms", "body": "again", "wait_minutes": 60},
        ]
        sequence = post("/sequences", {"name": "S", "status": "active", "steps": steps})
        post(
            f"/sequences/{sequence['sequence']['id']}/enrollments",
            {"contact_id": contact["contact"]["id"]},
        )
        deadline = time.monotonic() + 30
        while not requests.get(self.base_url + "/v1/events", headers=headers, timeout=10).json()[
            "data"
        ]:
            assert time.monotonic() < deadline, "no event was recorded"
            time.sleep(0.05)

    def answered(self) -> dict[str, set[int]]:
        """Route template -> the statuses it answered, from the app's own metrics."""
        text = requests.get(self.base_url + "/metrics", timeout=10).text
        seen: dict[str, set[int]] = {}
        for line in text.splitlines():
            if match := _REQUESTS.match(line):
                seen.setdefault(match.group(2), set()).add(int(match.group(3)))
        return seen


@pytest.fixture
def server(valkey: ValkeyProcess, prefix: str, tmp_path: Path) -> Iterator[Server]:
    # Logged as the daemon logs off a terminal (JSON lines), to a file: the console renderer
    # drew each logged traceback with its locals, seconds of the server's loop apiece, so a
    # long hunt's failing webhook deliveries starved the API (and then the Redis pool).
    with open(tmp_path / "seqd.log", "w") as log:
        logs.setup(LogConfig(format="json", level="info"), stream=log)
        srv = Server(valkey.url, prefix)
        srv.start()
        try:
            yield srv
        finally:
            srv.stop()
            logs.setup(LogConfig(), stream=io.StringIO())


# The run is bounded by its subprocess's own timeout (1800 s); the hang guard sits above it.
@pytest.mark.timeout(1900)
def test_every_operation_answers_as_documented(server: Server, tmp_path: Path) -> None:
    server.seed()
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    seed = [] if os.environ.get("SEQD_FUZZ_RANDOM") == "1" else ["--seed", SEED]
    result = subprocess.run(
        [
            st,
            "run",
            f"{server.base_url}/v1/openapi.json",
            "--header",
            f"Authorization: Bearer {server.key}",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            str(EXAMPLES),
            *seed,
            "--workers",
            "1",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
            "--output-truncate",
            "false",
        ],
        env={
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks",
            "PYTHONPATH": str(ROOT),
            "NO_COLOR": "1",
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    out = result.stdout
    print(out[out.find("SUMMARY") :])
    answered = server.answered()
    unreached = [r for r in LINKED if not any(200 <= s < 300 for s in answered.get(r, ()))]
    # The failures and errors (each with a curl line to reproduce it), then the summary.
    marks = [out.find(m) for m in ("=== ERRORS", "=== FAILURES", "SUMMARY") if m in out]
    summary = out[min(marks, default=0) :]
    assert result.returncode == 0, summary[-20000:] + result.stderr[-3000:]
    assert "Stateful" in out
    assert not unreached, f"the stateful phase never reached an existing object at {unreached}"
