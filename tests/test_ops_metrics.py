"""GET /metrics: Prometheus text with the process's counters and Redis-side backlogs."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from seqd import models
from seqd.api.app import create_app
from seqd.appkeys import METRICS
from seqd.config import Config, MetricsConfig
from seqd.metrics import Metrics
from seqd.service import build_app
from seqd.store import backlog
from seqd.store.db import Store, connect
from seqd.store.enrollments import EnrollItem
from seqd.store.rates import KEEP_SECONDS, SendRates, bucket_of
from seqd.times import now_ms
from tests.conftest import ValkeyProcess, free_port
from tests.opsutil import Daemon


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


@pytest.fixture
async def client(store: Store) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(Config(), store))) as c:
        yield c


async def enroll(store: Store, n: int, wait_minutes: int = 0, first: int = 0) -> str:
    await store.tenants.create_key("acme")
    seq = await store.sequences.create(
        "acme",
        models.SequenceCreate(
            name="Nurture",
            status="active",
            steps=[models.StepIn(kind="sms", wait_minutes=wait_minutes, body="hi")],
        ),
    )
    items = []
    for i in range(first, first + n):
        contact = await store.contacts.create("acme", {"phone": f"+1415555{i:04d}"})
        items.append(EnrollItem(contact_id=contact.id, metadata={}))
    await store.enrollments.enroll("acme", seq, items)
    return seq.id


async def test_metrics_page_has_every_family(client: TestClient) -> None:
    app_metrics = client.app[METRICS]  # type: ignore[index]
    app_metrics.step_sent("sms", "sent")
    app_metrics.step_sent("sms", "sent")
    app_metrics.step_sent("email", "failed")
    app_metrics.step_sent("sms", "retry")
    app_metrics.lateness(0.03)
    app_metrics.lateness(2.0)
    app_metrics.claimed(5)
    app_metrics.settled(2)
    app_metrics.webhook_delivery("delivered")
    app_metrics.webhook_delivery("retry")
    await client.get("/healthz")
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await resp.text()
    assert value(text, "seqd_steps_total", channel="sms", outcome="sent") == 2
    assert value(text, "seqd_steps_total", channel="email", outcome="failed") == 1
    assert value(text, "seqd_steps_total", channel="sms", outcome="retry") == 1
    assert value(text, "seqd_dispatch_lateness_seconds_count") == 2
    assert value(text, "seqd_dispatch_lateness_seconds_bucket", le="0.05") == 1
    assert value(text, "seqd_dispatch_in_flight") == 3
    assert value(text, "seqd_webhook_deliveries_total", outcome="delivered") == 1
    assert (
        value(text, "seqd_http_requests_total", method="GET", route="/healthz", status="200") == 1
    )
    assert (
        value(text, "seqd_http_request_duration_seconds_count", method="GET", route="/healthz") == 1
    )
    assert value(text, "seqd_store_up") == 1
    for shard in range(4):
        assert value(text, "seqd_due_backlog", shard=str(shard)) == 0
        assert value(text, "seqd_due_scheduled", shard=str(shard)) == 0
    assert value(text, "seqd_intake_backlog") == 0
    assert value(text, "seqd_webhook_backlog") == 0
    assert value(text, "seqd_due_oldest_overdue_seconds") == 0


async def test_http_metrics_use_route_templates(client: TestClient) -> None:
    await client.get("/v1/contacts/con_a")
    await client.get("/v1/contacts/con_b")
    await client.get("/no/such/path/123")
    text = await (await client.get("/metrics")).text()
    assert (
        value(
            text, "seqd_http_requests_total", method="GET", route="/v1/contacts/{id}", status="401"
        )
        == 2
    )
    assert (
        value(text, "seqd_http_requests_total", method="GET", route="unmatched", status="404") == 1
    )
    assert "con_a" not in text and "/no/such" not in text


async def test_due_backlog_per_shard_from_redis(client: TestClient, store: Store) -> None:
    before = now_ms()
    await enroll(store, 6)
    await enroll(store, 3, wait_minutes=60, first=100)
    text = await (await client.get("/metrics")).text()
    due = sum(value(text, "seqd_due_backlog", shard=str(s)) for s in range(4))
    scheduled = sum(value(text, "seqd_due_scheduled", shard=str(s)) for s in range(4))
    assert (due, scheduled) == (6, 9)
    # Due since they were enrolled: overdue by no more than the time since then.
    overdue = value(text, "seqd_due_oldest_overdue_seconds")
    assert 0 <= overdue <= (now_ms() - before) / 1000
    snap = await backlog.read(store, now_ms() + 5000)
    assert snap.due == 6 and snap.oldest_overdue_seconds >= 5


async def test_a_paused_sequences_steps_leave_the_backlog_until_it_resumes(
    store: Store,
) -> None:
    sid = await enroll(store, 6)
    later = await enroll(store, 3, wait_minutes=60, first=100)
    await store.sequences.change("acme", sid, status=models.SequenceStatus.PAUSED)
    snap = await backlog.read(store, now_ms() + 5000)
    assert (snap.due, snap.scheduled) == (0, 3) and snap.oldest_overdue_seconds == 0
    await store.sequences.change("acme", sid, status=models.SequenceStatus.ACTIVE)
    await store.sequences.change("acme", later, status=models.SequenceStatus.PAUSED)
    snap = await backlog.read(store, now_ms() + 5000)
    assert (snap.due, snap.scheduled) == (6, 6) and snap.oldest_overdue_seconds >= 5


async def test_intake_backlog_is_the_consumer_group_lag(client: TestClient, store: Store) -> None:
    stream = store.keys.intake()
    for i in range(5):
        await store.client.xadd(stream, {"n": str(i)})
    text = await (await client.get("/metrics")).text()
    assert value(text, "seqd_intake_backlog") == 5  # no group yet: nothing consumed
    await store.client.xgroup_create(stream, "enrollers", id="0")
    await store.client.xreadgroup("enrollers", "c1", {stream: ">"}, count=2)
    text = await (await client.get("/metrics")).text()
    assert value(text, "seqd_intake_backlog") == 5  # 3 unread + 2 read, not acknowledged
    read = await store.client.xreadgroup("enrollers", "c1", {stream: ">"}, count=10)
    entry_ids = [entry_id for entry_id, _ in read[0][1]]
    await store.client.xack(stream, "enrollers", *entry_ids)
    text = await (await client.get("/metrics")).text()
    assert value(text, "seqd_intake_backlog") == 2


async def test_store_down_is_reported_not_fatal(valkey_factory: type[ValkeyProcess]) -> None:
    server = valkey_factory()
    server.start()
    store = await Store.open(connect(server.url, socket_timeout=1.0), "m", 2)
    try:
        async with TestClient(TestServer(create_app(Config(), store))) as c:
            c.app[METRICS].step_sent("sms", "sent")  # type: ignore[index]
            server.kill()
            resp = await c.get("/metrics")
            assert resp.status == 200
            text = await resp.text()
            assert value(text, "seqd_store_up") == 0
            assert value(text, "seqd_steps_total", channel="sms", outcome="sent") == 1
    finally:
        await store.close()


async def test_separate_listener(store: Store) -> None:
    port = free_port()
    config = Config(metrics=MetricsConfig(listen=f"127.0.0.1:{port}"))
    async with TestClient(TestServer(create_app(config, store))) as c:
        assert (await c.get("/metrics")).status == 404
        await c.get("/healthz")
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            assert resp.status == 200
            text = await resp.text()
        assert (
            value(text, "seqd_http_requests_total", method="GET", route="/healthz", status="200")
            == 1
        )
        doc = await (await c.get("/v1/openapi.json")).json()
        assert "/metrics" not in doc["paths"]


async def test_metrics_can_be_disabled(store: Store) -> None:
    config = Config(metrics=MetricsConfig(enabled=False))
    async with TestClient(TestServer(create_app(config, store))) as c:
        assert (await c.get("/metrics")).status == 404


async def test_registries_are_per_app(store: Store) -> None:
    a, b = Metrics(), Metrics()
    a.step_sent("sms", "sent")
    assert 'seqd_steps_total{channel="sms"' not in b.render().decode()


async def test_send_rates_across_processes(store: Store) -> None:
    # Two processes' recorders add to the same buckets.
    one, two = Metrics(), Metrics()
    one.step_sent("sms", "sent", 30)
    two.step_sent("sms", "sent", 30)
    two.step_sent("email", "failed", 2)
    two.webhook_delivery("delivered")
    await one.rates.flush(store)
    await two.rates.flush(store)
    assert not one.rates.pending
    window = await SendRates(store).window(now_ms())
    assert window.counts["sms"]["sent"] == 60
    assert window.counts["email"]["failed"] == 2
    assert window.counts["webhook"]["delivered"] == 1
    assert 60 <= window.seconds <= 70
    assert window.per_second("sms") == pytest.approx(60 / window.seconds)
    ttl = await store.client.ttl(store.keys.sends(bucket_of(now_ms())))
    assert 0 < ttl <= KEEP_SECONDS  # long enough for the dashboard's hour, no longer
    assert KEEP_SECONDS >= 3600


async def test_old_buckets_leave_the_window(store: Store) -> None:
    rates = SendRates(store)
    now = now_ms()
    await rates.add({("sms", "sent"): 5}, now - 120_000)
    await rates.add({("sms", "sent"): 7}, now - 30_000)
    window = await rates.window(now)
    assert window.counts["sms"]["sent"] == 7


async def test_failed_flush_keeps_the_counts(valkey_factory: type[ValkeyProcess]) -> None:
    server = valkey_factory()
    server.start()
    store = await Store.open(connect(server.url, socket_timeout=1.0), "m", 2)
    try:
        metrics = Metrics()
        metrics.step_sent("sms", "sent", 4)
        server.kill()
        with pytest.raises(Exception):  # noqa: B017 - any connection error
            await metrics.rates.flush(store)
        assert metrics.rates.pending[("sms", "sent")] == 4
    finally:
        await store.close()


async def test_serving_app_flushes_rates(store: Store) -> None:
    app = build_app(Config(), store)
    async with TestClient(TestServer(app)) as c:
        c.app[METRICS].step_sent("sms", "sent", 3)  # type: ignore[index]
    # Closing the app flushed what was pending.
    window = await SendRates(store).window(now_ms())
    assert window.counts["sms"]["sent"] == 3


async def test_a_running_daemon_counts_what_it_sends(
    store: Store, valkey: ValkeyProcess, prefix: str, tmp_path: Path
) -> None:
    await enroll(store, 2)
    d = Daemon(valkey.url, prefix, tmp_path / "d", SEQD_CHANNELS_LOG_PATH=str(tmp_path / "out"))
    d.start()
    try:
        d.wait_healthy()
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            text = d.get("/metrics")[1].decode()
            if ("seqd_steps_total", (("channel", "sms"), ("outcome", "sent"))) in samples(text):
                # Counted when sent; out of flight once the batch is settled, just after.
                sent = value(text, "seqd_steps_total", channel="sms", outcome="sent")
                if sent == 2 and value(text, "seqd_dispatch_in_flight") == 0:
                    break
            await asyncio.sleep(0.05)
        assert value(text, "seqd_steps_total", channel="sms", outcome="sent") == 2, text
        assert value(text, "seqd_dispatch_lateness_seconds_count") == 2
        assert value(text, "seqd_dispatch_in_flight") == 0
        status, body = d.get("/readyz")
        assert status == 200 and json.loads(body)["checks"]["dispatcher"] == "ok"
        # The rate recorder adds the sends to Redis within a second, for `seqd status`.
        while time.monotonic() < deadline:
            window = await SendRates(store).window(now_ms())
            if window.counts.get("sms", {}).get("sent") == 2:
                break
            await asyncio.sleep(0.1)
        assert window.counts["sms"]["sent"] == 2
        d.signal(signal.SIGTERM)
        assert d.wait() == 0
    finally:
        d.stop()
