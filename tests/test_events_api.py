"""/v1/events: the tenant's log after real state changes, filters, pages, isolation."""

from __future__ import annotations

from urllib.parse import quote

from seqd import event_ids, ids
from seqd.store.db import Store
from seqd.times import now_ms, to_rfc3339
from tests.dispatchutil import contacts, enroll, sequence, sms
from tests.webhookutil import Clock, api_client, emit, pipeline


async def _history(store: Store) -> tuple[list[str], list[str]]:
    """Two contacts enrolled; the first paused and cancelled. Returns (contacts, enrollments)."""
    seq = await sequence(store, sms(wait=60))
    cids = await contacts(store, 2)
    enrollments = [e.id for e in await enroll(store, seq, cids)]
    await store.enrollments.transition("acme", enrollments[0], "pause", "manual")
    await store.enrollments.transition("acme", enrollments[0], "cancel", "manual")
    async with pipeline(store) as p:
        await p.read()
    return cids, enrollments


async def test_events_list_in_api_shape_with_filters(store: Store) -> None:
    async with api_client(store) as api:
        cids, enrs = await _history(store)
        status, body = await api.call("GET", "/events")
        assert status == 200 and body["total"] == 4 and body["next_page_token"] is None
        types = [e["type"] for e in body["data"]]
        assert sorted(types) == sorted(
            [
                "sequence.enrollment.created",
                "sequence.enrollment.created",
                "sequence.enrollment.paused",
                "sequence.enrollment.cancelled",
            ]
        )
        cancelled = next(e for e in body["data"] if e["type"].endswith("cancelled"))
        assert cancelled["data"]["id"] == enrs[0] and cancelled["data"]["cancel_reason"] == "manual"
        assert cancelled["id"].startswith("evt_") and cancelled["created_at"].endswith("Z")

        status, body = await api.call("GET", f"/events?enrollment_id={enrs[0]}")
        assert len(body["data"]) == 3 and body["total"] is None
        status, body = await api.call("GET", f"/events?contact_id={cids[1]}")
        assert [e["data"]["id"] for e in body["data"]] == [enrs[1]]
        status, body = await api.call(
            "GET", "/events?type=sequence.enrollment.paused,sequence.enrollment.cancelled"
        )
        assert {e["type"] for e in body["data"]} == {
            "sequence.enrollment.paused",
            "sequence.enrollment.cancelled",
        }
        status, body = await api.call(
            "GET", "/events?type=sequence.enrollment.paused&type=sequence.enrollment.created"
        )
        assert len(body["data"]) == 3

        status, body = await api.call("GET", f"/events/{cancelled['id']}")
        assert status == 200 and body == {"event": cancelled}


async def test_since_and_pages(store: Store) -> None:
    async with api_client(store) as api:
        base = now_ms()
        for i in range(5):
            await emit(store, "contact.opted_in", {"contact_id": f"con_{i}"}, at=base + i * 1000)
        async with pipeline(store) as p:
            await p.read()
        since = quote(to_rfc3339(base + 2000))
        _status, body = await api.call("GET", f"/events?since={since}")
        assert [e["data"]["contact_id"] for e in body["data"]] == ["con_2", "con_3", "con_4"]
        seen = []
        token = None
        while True:
            path = "/events?limit=2" + (f"&page_token={token}" if token else "")
            _, body = await api.call("GET", path)
            seen += [e["data"]["contact_id"] for e in body["data"]]
            token = body["next_page_token"]
            if token is None:
                break
        assert seen == [f"con_{i}" for i in range(5)]


async def test_bad_filters_are_422_naming_the_parameter(store: Store) -> None:
    async with api_client(store) as api:
        for query, path in (
            ("type=sequence.nope", "query.type"),
            ("since=yesterday", "query.since"),
            ("since=2026-01-01T00:00:00", "query.since"),
            ("limit=0", "query.limit"),
            ("page_token=garbage", "query.page_token"),
            ("colour=red", "query.colour"),
        ):
            status, problem = await api.call("GET", f"/events?{query}")
            assert status == 422, query
            assert path in {e["path"] for e in problem["errors"]}, (query, problem)
        # A token that decodes but names no stream position.
        from seqd.api.pagination import encode_token

        status, problem = await api.call("GET", f"/events?page_token={encode_token('x')}")
        assert status == 422


async def test_tenants_see_only_their_own_events(store: Store) -> None:
    async with api_client(store) as api:
        await emit(store, "contact.opted_in", {"contact_id": "con_a"})
        await emit(store, "contact.opted_in", {"contact_id": "con_b"}, tenant="globex")
        async with pipeline(store) as p:
            await p.read()
        _, other = await store.tenants.create_key("globex")
        status, mine = await api.call("GET", "/events")
        status, theirs = await api.call("GET", "/events", key=other)
        assert [e["data"]["contact_id"] for e in mine["data"]] == ["con_a"]
        assert [e["data"]["contact_id"] for e in theirs["data"]] == ["con_b"]
        status, _ = await api.call("GET", f"/events/{mine['data'][0]['id']}", key=other)
        assert status == 404
        status, _ = await api.call("GET", "/events/evt_nonsense")
        assert status == 404


async def test_events_past_retention_are_gone(store: Store) -> None:
    async with api_client(store) as api:
        await emit(store)
        clock = Clock()
        async with pipeline(store, clock=clock) as p:
            await p.read()
        _status, body = await api.call("GET", "/events")
        [event] = body["data"]
        # Payloads expire with the retention; the log entry is skipped once it has.
        await store.client.delete(store.keys.event("acme", event["id"]))
        _, body = await api.call("GET", "/events")
        assert body["data"] == []


async def test_events_of_a_batched_entry_list_page_filter_and_get_one_by_one(
    store: Store,
) -> None:
    """Enrolling many at once logs their `created` events as batches (one payload each):
    the API still shows one event per enrollment, pages through them, filters them, and
    gets any one of them by its id."""
    async with api_client(store) as api:
        seq = await sequence(store, sms(wait=60))
        cids = await contacts(store, 30)
        enrollments = {e.contact_id: e.id for e in await enroll(store, seq, cids)}
        async with pipeline(store) as p:
            assert await p.read() == 30
        payloads = await store.client.keys(store.keys.event("acme", "*"))
        shards = {ids.shard_of(e, store.shards) for e in enrollments.values()}
        assert len(payloads) == len(shards), "one payload per batched entry (one per shard)"
        seen: list[dict] = []  # type: ignore[type-arg]
        token = None
        while True:
            page = "/events?limit=7" + (f"&page_token={token}" if token else "")
            status, body = await api.call("GET", page)
            assert status == 200 and body["total"] == 30
            seen += body["data"]
            token = body["next_page_token"]
            if token is None:
                break
        assert len(seen) == 30 and len({e["id"] for e in seen}) == 30
        assert {e["data"]["id"] for e in seen} == set(enrollments.values())
        assert {e["data"]["contact_id"] for e in seen} == set(cids)
        for e in seen[::5]:
            status, body = await api.call("GET", f"/events/{e['id']}")
            assert status == 200 and body == {"event": e}
            status, body = await api.call("GET", f"/events?contact_id={e['data']['contact_id']}")
            assert body["data"] == [e]
            status, body = await api.call("GET", f"/events?enrollment_id={e['data']['id']}")
            assert body["data"] == [e]
        # An id of the same batch past its last event is no event.
        last = max(seen, key=lambda e: e["id"])["id"]
        beyond = event_ids.batch_event_id(last, 1, store.shards)
        status, _ = await api.call("GET", f"/events/{beyond}")
        assert status == 404
