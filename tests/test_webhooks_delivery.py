"""Webhook delivery end to end: outbox -> reader -> deliverer -> a real local receiver.

Signatures are checked with the `standardwebhooks` package (not seqd's own code); time is
an injected clock, so retries hours apart take no time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import msgspec
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from seqd.events import ssrf
from seqd.events.deliverer import Deliverer
from seqd.store.db import Store
from tests.webhookutil import (
    SCHEDULE,
    TENANT,
    Clock,
    api_client,
    emit,
    endpoint,
    pending,
    pipeline,
    receiving,
    settings,
    until,
)


async def test_delivery_is_signed_and_verifies_with_standardwebhooks(store: Store) -> None:
    async with receiving() as rx, pipeline(store) as p:
        _, secret = await endpoint(store, rx.url())
        await emit(store, "contact.opted_in", {"contact_id": "con_1", "channel": "sms"})
        assert await p.step() == 1
        [got] = rx.requests
        payload = Webhook(secret).verify(got.body, got.headers)
        assert payload["type"] == "contact.opted_in"
        assert payload["id"] == got.id and got.id.startswith("evt_")
        assert payload["data"] == {"contact_id": "con_1", "channel": "sms"}
        assert got.headers["Content-Type"] == "application/json"
        assert got.headers["User-Agent"].startswith("seqd/")
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(got.body + b" ", got.headers)
        # The event in the log is the one delivered, same id.
        event = await store.events.get(TENANT, got.id)
        assert msgspec.json.encode(event) == got.body
        # Delivered: nothing left scheduled, outbox empty.
        assert await store.deliveries.next_due() is None
        assert await store.outbox.backlog() == 0


async def test_enrollment_event_reaches_the_receiver_in_api_shape(store: Store) -> None:
    from tests.dispatchutil import contacts, enroll, sequence, sms

    async with receiving() as rx, pipeline(store) as p:
        await endpoint(store, rx.url(), ["sequence.enrollment.created"])
        seq = await sequence(store, sms(wait=5))
        [cid] = await contacts(store, 1)
        [enr] = await enroll(store, seq, [cid])
        await p.step()
        [got] = rx.requests
        body = got.json()
        assert body["type"] == "sequence.enrollment.created"
        assert body["data"]["id"] == enr.id and body["data"]["contact_id"] == cid
        assert body["data"]["status"] == "active" and "fields" not in body["data"]


async def test_503_is_retried_on_schedule_until_success(store: Store) -> None:
    clock = Clock()
    async with receiving() as rx, pipeline(store, clock=clock) as p:
        await endpoint(store, rx.url())
        rx.plan["/hook"] = [503, 503, 503]
        await emit(store)
        assert await p.step() == 1
        # Second attempt SCHEDULE[1] seconds after the failure (plus the request's own
        # milliseconds), not before.
        clock.advance(SCHEDULE[1] - 1)
        assert await p.step() == 0
        clock.advance(2)
        assert await p.step() == 1
        clock.advance(SCHEDULE[2] + 1)
        assert await p.step() == 1
        clock.advance(SCHEDULE[3] + 1)
        assert await p.step() == 1
        assert len(rx.requests) == 4
        assert len({r.id for r in rx.requests}) == 1, "webhook-id is stable across retries"
        assert await store.deliveries.next_due() is None


async def test_jitter_spreads_retries_within_bounds(store: Store) -> None:
    clock = Clock()
    config = settings(jitter=0.5, retry_schedule_seconds=[0, 100], concurrency_per_endpoint=50)
    async with receiving() as rx, pipeline(store, config, clock) as p:
        await endpoint(store, rx.url())
        rx.plan["/hook"] = [500] * 20
        for _ in range(20):
            await emit(store)
        await p.step()
        due = await store.client.zrange(
            store.keys.delivery_due(0), 0, -1, withscores=True
        )  # the endpoint's earliest retry
        queue = await store.client.zrange(
            store.keys.delivery_queue(0, due[0][0]), 0, -1, withscores=True
        )
        waits = {int(score) - clock.now for _, score in queue}
        assert all(50_000 <= w <= 150_500 for w in waits)
        assert len(waits) > 5


async def test_dead_letter_after_last_attempt_then_manual_retry(store: Store) -> None:
    clock = Clock()
    async with receiving() as rx, pipeline(store, clock=clock) as p, api_client(store) as api:
        status, body = await api.call(
            "POST", "/webhook-endpoints", {"url": rx.url(), "events": ["*"]}
        )
        assert status == 201
        eid = body["webhook_endpoint"]["id"]
        rx.plan["/hook"] = [500] * len(SCHEDULE)
        await emit(store)
        for wait in SCHEDULE:
            clock.advance(wait + 1)
            assert await p.step() == 1
        clock.advance(10_000)
        assert await p.step() == 0, "no attempt after the last one"
        status, listing = await api.call("GET", f"/webhook-endpoints/{eid}/failed-deliveries")
        assert status == 200 and listing["total"] == 1
        [dead] = listing["data"]
        assert dead["status"] == "failed" and dead["attempts"] == len(SCHEDULE)
        assert dead["last_status"] == 500 and dead["last_error"].startswith("HTTP 500")
        assert dead["event_id"] == rx.requests[0].id and dead["failed_at"]

        status, retried = await api.call(
            "POST", f"/webhook-endpoints/{eid}/failed-deliveries/{dead['id']}/retry"
        )
        assert status == 202 and retried["delivery"]["status"] == "pending"
        assert retried["delivery"]["attempts"] == 0
        # Retrying it again while pending is a conflict.
        status, problem = await api.call(
            "POST", f"/webhook-endpoints/{eid}/failed-deliveries/{dead['id']}/retry"
        )
        assert status == 409 and problem["current_status"] == "pending"
        # Due now by the store's clock: the deliverer's clock is hours ahead, so it is due.
        assert await p.step() == 1
        assert rx.requests[-1].id == dead["event_id"]
        status, listing = await api.call("GET", f"/webhook-endpoints/{eid}/failed-deliveries")
        assert listing["total"] == 0 and listing["data"] == []


async def test_410_disables_the_endpoint(store: Store) -> None:
    async with receiving() as rx, pipeline(store) as p:
        ep, _ = await endpoint(store, rx.url())
        rx.plan["/hook"] = [410]
        await emit(store)
        await p.step()
        record = await store.webhooks.get(TENANT, ep.id)
        assert not record.enabled and record.disabled_reason == "gone"
        [failed], _, _ = await store.deliveries.list_failed(TENANT, ep.id, limit=10, after=None)
        assert failed.last_status == 410 and failed.attempts == 1
        # New events are not scheduled for a disabled endpoint.
        await emit(store)
        await p.step()
        assert await store.deliveries.next_due() is None
        assert len(rx.requests) == 1


async def test_disabled_endpoint_fails_pending_deliveries_without_requests(store: Store) -> None:
    async with receiving() as rx, pipeline(store) as p:
        ep, _ = await endpoint(store, rx.url())
        await emit(store)
        await p.read()
        await store.webhooks.update(
            TENANT, ep.id, lambda r: msgspec.structs.replace(r, enabled=False)
        )
        await p.step()
        assert rx.requests == []
        [failed], _, _ = await store.deliveries.list_failed(TENANT, ep.id, limit=10, after=None)
        assert failed.attempts == 0 and "disabled" in (failed.last_error or "")


async def test_restart_between_attempts_resumes_where_it_stopped(store: Store) -> None:
    clock = Clock()
    async with receiving() as rx:
        await endpoint(store, rx.url())
        rx.plan["/hook"] = [503]
        async with pipeline(store, clock=clock) as first:
            await emit(store)
            assert await first.step() == 1
        # "Restart": new reader and deliverer instances, same store, nothing in memory.
        clock.advance(SCHEDULE[1] + 1)
        async with pipeline(store, clock=clock) as second:
            assert await second.step() == 1
            assert await second.step() == 0
        assert [r.id for r in rx.requests] == [rx.requests[0].id] * 2


async def test_a_crashed_deliverer_claim_is_taken_over_after_the_lease(store: Store) -> None:
    clock = Clock()
    async with receiving() as rx, pipeline(store, clock=clock) as p:
        await endpoint(store, rx.url())
        await emit(store)
        await p.read()
        # A process claims and dies before sending.
        [shard] = [s for s, h in enumerate(await store.deliveries.heads()) if h is not None]
        claimed = await store.deliveries.claim(
            shard, now=clock.now, lease_ms=5000, limit=10, per_endpoint=8, free={}
        )
        assert len(claimed) == 1
        assert await p.step() == 0, "claimed by the dead process until its lease ends"
        clock.advance(5)
        assert await p.step() == 1
        # The dead claim's late finish is refused (fenced).
        recorded, _ = await store.deliveries.finish(claimed[0], "delivered", now=clock.now)
        assert not recorded


async def test_a_round_that_fails_after_claiming_frees_its_slots(store: Store) -> None:
    """Redis lost between two shards' claims: the first shard's claims are not sent, and
    their slots are freed, or an endpoint whose slots were all held that way would never
    be claimed again."""
    clock = Clock()
    async with receiving() as rx, pipeline(store, settings(), clock) as p:
        await endpoint(store, rx.url())
        for shard in (0, 1):
            await emit(store, shard=shard)
        await p.read()
        claim = store.deliveries.claim
        calls = 0

        async def second_fails(*args: Any, **kwargs: Any) -> list[Any]:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise ConnectionError("redis went away")
            return await claim(*args, **kwargs)

        store.deliveries.claim = second_fails  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            await p.deliverer.run_once()
        assert calls == 2 and p.deliverer.in_flight == {}
        store.deliveries.claim = claim  # type: ignore[method-assign]
        clock.advance(5_001)  # the first shard's claim comes back after its lease
        assert await p.step() == 2
        assert len(rx.requests) == 2


async def test_two_processes_deliver_each_event_once(store: Store) -> None:
    config = settings(batch_size=7)
    events = 60
    async with receiving() as rx:
        await endpoint(store, rx.url("/a"))
        await endpoint(store, rx.url("/b"), ["contact.opted_in"])
        for i in range(events):
            await emit(store, shard=i % store.shards)
        async with pipeline(store, config) as one, pipeline(store, config) as two:
            one.reader.start()
            two.reader.start()
            one.deliverer.start()
            two.deliverer.start()
            try:
                await until(lambda: len(rx.requests) >= 2 * events, seconds=15)
            finally:
                # Requests in flight finish (and reach the receiver) before stop returns.
                for part in (one.reader, two.reader, one.deliverer, two.deliverer):
                    await part.stop()
        # Every delivery is finished: none is scheduled to be sent (again).
        assert await store.deliveries.heads() == [None] * store.shards
        for path in ("/a", "/b"):
            ids = [r.id for r in rx.at(path)]
            assert len(ids) == events and len(set(ids)) == events, path
        assert await store.outbox.backlog() == 0


async def test_secret_rotation_signs_with_both_then_only_the_new(store: Store) -> None:
    clock = Clock()
    async with receiving() as rx, pipeline(store, clock=clock) as p, api_client(store) as api:
        _, created = await api.call(
            "POST", "/webhook-endpoints", {"url": rx.url(), "events": ["*"]}
        )
        eid, old = created["webhook_endpoint"]["id"], created["secret"]
        status, rotated = await api.call("POST", f"/webhook-endpoints/{eid}/rotate-secret")
        assert status == 200 and rotated["secret"] != old
        assert rotated["webhook_endpoint"]["previous_secret_expires_at"]
        new = rotated["secret"]
        await emit(store)
        await p.step()
        first = rx.requests[-1]
        assert len(first.headers["webhook-signature"].split(" ")) == 2
        Webhook(old).verify(first.body, first.headers)
        Webhook(new).verify(first.body, first.headers)
        # 24 hours later the old secret no longer signs.
        clock.advance(24 * 3600 + 1)
        await emit(store)
        await p.step()
        later = rx.requests[-1]
        assert len(later.headers["webhook-signature"].split(" ")) == 1
        Webhook(new).verify(later.body, later.headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(old).verify(later.body, later.headers)


async def test_ssrf_guard_refuses_private_targets_at_delivery(store: Store) -> None:
    clock = Clock()
    guarded = settings(allow_private_targets=False, retry_schedule_seconds=[0])
    async with receiving() as rx:
        # Saved while private targets were allowed; the delivery-time check still refuses.
        ep, _ = await endpoint(store, rx.url())
        named, _ = await endpoint(store, f"http://localhost:{rx.port}/named")
        async with pipeline(store, guarded, clock) as p:
            await emit(store)
            await p.step()
        assert rx.requests == []
        for target in (ep, named):
            [failed], _, _ = await store.deliveries.list_failed(
                TENANT, target.id, limit=5, after=None
            )
            assert failed.last_status is None
            assert "not a public address" in (failed.last_error or "")


async def test_slow_endpoint_does_not_hold_back_others(store: Store) -> None:
    config = settings(concurrency_per_endpoint=2, timeout_seconds=3.0, lease_seconds=10.0)
    async with receiving() as rx, pipeline(store, config) as p:
        await endpoint(store, rx.url("/slow"))
        await endpoint(store, rx.url("/fast"))
        rx.delay["/slow"] = 1.0
        for i in range(10):
            await emit(store, shard=i % store.shards)
        await p.read()
        # Rounds while the slow receiver holds its two slots: the fast one gets everything.
        for _ in range(5):
            await p.deliverer.run_once()
            await asyncio.sleep(0.05)
        await until(lambda: len(rx.at("/fast")) == 10, seconds=3)
        assert len(rx.at("/slow")) == 2, "at most concurrency_per_endpoint in flight"
        await p.deliverer.drain()


async def test_timeout_and_connection_errors_are_retried(store: Store) -> None:
    clock = Clock()
    config = settings(timeout_seconds=0.2, lease_seconds=1.0)
    async with receiving() as rx, pipeline(store, config, clock) as p:
        slow, _ = await endpoint(store, rx.url("/slow"))
        closed, _ = await endpoint(store, "http://127.0.0.1:1/nothing-listens")
        rx.delay["/slow"] = 1.0
        await emit(store)
        assert await p.step() == 2
        [timed_out] = await pending(store, slow.id)
        [refused] = await pending(store, closed.id)
        assert timed_out["le"].startswith("timeout") and timed_out["a"] == "1"
        assert refused["le"].startswith("connection failed") and refused["a"] == "1"
        assert "lc" not in timed_out and "lc" not in refused


async def test_deleted_endpoint_takes_its_deliveries_along(store: Store) -> None:
    async with receiving() as rx, pipeline(store) as p:
        ep, _ = await endpoint(store, rx.url())
        for i in range(5):
            await emit(store, shard=i % store.shards)
        await p.read()
        await store.webhooks.delete(TENANT, ep.id)
        assert await store.deliveries.next_due() is None
        assert await p.step() == 0 and rx.requests == []


async def test_guarded_resolver_is_used_unless_private_targets_are_allowed() -> None:
    assert isinstance(ssrf.resolver(allow_private=False), ssrf.GuardedResolver)
    assert not isinstance(ssrf.resolver(allow_private=True), ssrf.GuardedResolver)
    with pytest.raises(ssrf.ForbiddenTarget):
        await ssrf.GuardedResolver().resolve("localhost", 80)


async def test_the_service_runs_reader_and_deliverer_in_the_background(store: Store) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from seqd.config import Config, DispatchConfig, IntakeConfig
    from seqd.service import build_app
    from tests.conftest import Api

    config = Config(
        webhooks=settings(),
        dispatch=DispatchConfig(enabled=False),
        intake=IntakeConfig(enabled=False),
    )
    _, key = await store.tenants.create_key(TENANT)
    async with receiving() as rx, TestClient(TestServer(build_app(config, store))) as client:
        api = Api(client, key, store)
        status, created = await api.call(
            "POST", "/webhook-endpoints", {"url": rx.url(), "events": ["contact.deleted"]}
        )
        assert status == 201
        status, contact = await api.call("POST", "/contacts", {"phone": "+14155550123"})
        status, _ = await api.call("DELETE", f"/contacts/{contact['contact']['id']}")
        assert status == 204
        await until(lambda: len(rx.requests) == 1)
        body = Webhook(created["secret"]).verify(rx.requests[0].body, rx.requests[0].headers)
        assert body["type"] == "contact.deleted"
        assert body["data"]["id"] == contact["contact"]["id"]


async def test_stop_is_bounded_when_a_round_is_stuck(store: Store) -> None:
    # A round that never reaches its next check of the stop flag (a Redis call that hangs,
    # say) is cancelled after the request timeout: a stop never waits without bound.
    async with aiohttp.ClientSession() as http:
        deliverer = Deliverer(store, settings(timeout_seconds=0.2), http)
        entered = asyncio.Event()

        async def stuck() -> bool:
            entered.set()
            await asyncio.sleep(3600)
            return False

        deliverer.run_once = stuck  # type: ignore[method-assign]
        deliverer.start()
        await asyncio.wait_for(entered.wait(), 5)
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(deliverer.stop(), 5)
        assert asyncio.get_running_loop().time() - started < 1.0
