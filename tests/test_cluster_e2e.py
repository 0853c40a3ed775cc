"""The seed flow end to end on a 3-primary cluster, through two `seqd serve` processes: an
API-only node (`dispatch.enabled = false`, no webhook deliverer, no intake) that clients
call, and a dispatching node that sends and delivers webhooks. Create, enroll twice, list,
the first step sent, a reply (Twilio's signed webhook) pauses the enrollment, and the
webhooks arrive signed as Standard Webhooks says (checked here from the spec, not with
seqd's code)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from seqd.store.db import Store, connect
from tests.clusterutil import ValkeyCluster
from tests.conftest import free_port
from tests.faultutil import LogTail, wait_for
from tests.opsutil import Daemon

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

TOKEN, NUMBER, PUBLIC = "e2e-twilio-token", "+14155550000", "https://seqd.example.com"
PHONE = "+14155550123"
SEQUENCE = {
    "name": "Nurture",
    "status": "active",
    "steps": [
        {"kind": "sms", "wait_minutes": 0, "body": "Hi {{first_name|there}}!"},
        {"kind": "sms", "wait_minutes": 1440, "body": "Still there?"},
    ],
}


def _twilio_signature(url: str, params: dict[str, str]) -> str:
    """Twilio's X-Twilio-Signature: HMAC-SHA1 of the URL and the sorted form fields."""
    data = url + "".join(k + v for k, v in sorted(params.items()))
    return base64.b64encode(hmac.new(TOKEN.encode(), data.encode(), hashlib.sha1).digest()).decode()


def _signed(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>"> under the
    base64 key after `whsec_`; any of the space-separated signatures may match."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    content = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(sig.removeprefix("v1,"), expected)
        for sig in headers["webhook-signature"].split()
    )


class Receiver:
    """A webhook endpoint on a free port, keeping what it was sent."""

    def __init__(self) -> None:
        self.port = free_port()
        self.got: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.got.append((headers, await request.read()))
        return web.Response(status=204)

    def types(self) -> list[str]:
        return [json.loads(body)["type"] for _, body in self.got]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", r.port).start()
    yield r
    await runner.cleanup()


async def test_the_seed_flow_through_an_api_only_node_and_a_dispatching_one(
    valkey_cluster: ValkeyCluster, prefix: str, tmp_path: Path, receiver: Receiver
) -> None:
    store = await Store.open(connect(valkey_cluster.url), prefix, 16)
    _, key = await store.tenants.create_key("acme")
    provider = LogTail(tmp_path / "provider.log")
    common = {
        "SEQD_CHANNELS_LOG_PATH": str(provider.path),
        "SEQD_CHANNELS_TWILIO_AUTH_TOKEN": TOKEN,
        "SEQD_CHANNELS_TWILIO_FROM_NUMBER": NUMBER,
        "SEQD_HTTP_PUBLIC_URL": PUBLIC,
        "SEQD_WEBHOOKS_ALLOW_PRIVATE_TARGETS": "true",
    }
    api_node = Daemon(
        valkey_cluster.url,
        prefix,
        tmp_path / "api",
        SEQD_DISPATCH_ENABLED="false",
        SEQD_WEBHOOKS_ENABLED="false",
        SEQD_INTAKE_ENABLED="false",
        **common,
    ).start()
    worker = Daemon(valkey_cluster.url, prefix, tmp_path / "worker", **common).start()
    headers = {"Authorization": f"Bearer {key}"}
    try:
        await asyncio.to_thread(api_node.wait_healthy)
        await asyncio.to_thread(worker.wait_healthy)
        async with aiohttp.ClientSession(api_node.url, headers=headers) as http:

            async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
                async with http.request(method, "/v1" + path, json=body) as resp:
                    return resp.status, await resp.json()

            status, made = await call(
                "POST",
                "/webhook-endpoints",
                {"url": f"http://127.0.0.1:{receiver.port}/hook", "events": ["*"]},
            )
            assert status == 201, made
            secret = made["secret"]
            status, seq = await call("POST", "/sequences", SEQUENCE)
            assert status == 201, seq
            sid = seq["sequence"]["id"]
            status, contact = await call("POST", "/contacts", {"phone": PHONE, "first_name": "Ada"})
            assert status == 201, contact
            cid = contact["contact"]["id"]
            status, first = await call("POST", f"/sequences/{sid}/enrollments", {"contact_id": cid})
            assert status == 201, first
            status, again = await call("POST", f"/sequences/{sid}/enrollments", {"contact_id": cid})
            assert (status, again["idempotent"]) == (200, True), again
            eid = first["enrollment"]["id"]
            assert again["enrollment"]["id"] == eid
            status, listed = await call("GET", f"/sequences/{sid}/enrollments")
            assert status == 200 and listed["total"] == 1, listed
            assert [e["id"] for e in listed["data"]] == [eid]

            async def first_step_sent() -> bool:
                provider.read()
                return provider.sent[(eid, 0)] == 1

            # Sent by the dispatching node: the API-only one dispatches nothing.
            await wait_for(first_step_sent, 30, "the first step at the provider")
            params = {"From": PHONE, "To": NUMBER, "Body": "Thanks!", "MessageSid": "SM" + "1" * 32}
            url = PUBLIC + "/v1/inbound/twilio/sms"
            async with http.post(
                "/v1/inbound/twilio/sms",
                data=params,
                headers={"X-Twilio-Signature": _twilio_signature(url, params)},
            ) as resp:
                assert resp.status == 200, await resp.text()

            async def paused() -> bool:
                status, got = await call("GET", f"/enrollments/{eid}")
                assert status == 200, got
                return bool(got["enrollment"]["status"] == "paused")

            await wait_for(paused, 10, "the reply to pause the enrollment")
            wanted = {
                "sequence.enrollment.created",
                "sequence.step.sent",
                "sequence.enrollment.paused",
            }

            async def delivered() -> bool:
                return wanted <= set(receiver.types())

            await wait_for(delivered, 30, f"webhooks {sorted(wanted)}")
        for hook_headers, body in receiver.got:
            assert _signed(secret, hook_headers, body), hook_headers
        for daemon in (api_node, worker):
            daemon.signal(signal.SIGTERM)
            assert daemon.wait() == 0, daemon.stderr()[-4000:]
    finally:
        api_node.stop()
        worker.stop()
        await store.close()
    provider.read()
    assert set(provider.sent) == {(eid, 0)}  # the second step waits a day; paused now
    assert "dispatch.started" not in api_node.stderr() + api_node.stdout()
