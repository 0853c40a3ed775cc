"""Single enrollment requests that arrive together go through the bulk path as a group
(seqd/api/coalesce.py): each is still answered from its own item, a group's failure reaches
every request in it, and none is lost when a group is cancelled, fails or overflows."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError

from seqd import bulk, ids, models
from seqd.api import coalesce
from seqd.api.coalesce import Coalescer
from seqd.store import upserts
from seqd.store.db import Store, connect
from tests.conftest import Api, ValkeyProcess

SEQUENCE = {
    "name": "Nurture",
    "status": "active",
    "steps": [{"kind": "sms", "wait_minutes": 60, "body": "Hi {{first_name|there}}"}],
}


class CountingTarget:
    """Calls the real `bulk.target`, counting the group reads; `gate` holds the first."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, hold_first: bool = False) -> None:
        self.calls = 0
        self.log_context: dict[str, Any] = {}
        self.real = bulk.target
        self.gate = asyncio.Event()
        if not hold_first:
            self.gate.set()
        monkeypatch.setattr(bulk, "target", self)

    async def __call__(self, store: Store, tenant: str, sid: str) -> bulk.Target:
        self.calls += 1
        self.log_context = structlog.contextvars.get_contextvars()
        if self.calls == 1:
            await self.gate.wait()
        return await self.real(store, tenant, sid)


async def _sequence(api: Api, **changes: Any) -> str:
    status, body = await api.call("POST", "/sequences", SEQUENCE | changes)
    assert status == 201, body
    return str(body["sequence"]["id"])  # type: ignore[index]


async def _contacts(store: Store, n: int, tenant: str = "acme") -> list[str]:
    rows = [{"phone": f"+1415555{i:04d}"} for i in range(n)]
    out = []
    for result in await upserts.upsert_many(store, tenant, rows):
        assert isinstance(result, upserts.Upserted)
        out.append(result.contact.id)
    return out


async def test_concurrent_requests_are_answered_each_from_its_own_item(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = await _sequence(api)
    c = await _contacts(api.store, 40)
    await api.store.client.hset(api.store.keys.suppressions("acme", "sms"), "+14155550002", "{}")
    target = CountingTarget(monkeypatch)
    path = f"/sequences/{sid}/enrollments"
    bodies: list[dict[str, Any]] = [
        {"contact_id": c[0], "metadata": {"n": 0}},
        {"contact_id": c[0], "metadata": {"n": 1}},  # the same contact: one enrollment
        {"contact_id": c[2]},  # suppressed on SMS, the sequence's only channel
        {"contact_id": ids.new(ids.CONTACT)},  # no such contact
        {"contact": {"external_id": "crm-9", "phone": "+14155559999"}},
        {"contact": {"phone": "12"}},  # refused before any group
        *({"contact_id": cid, "metadata": {"i": i}} for i, cid in enumerate(c[3:], 3)),
    ]
    answers = await asyncio.gather(*(api.call("POST", path, b) for b in bodies))

    statuses = [status for status, _ in answers]
    assert sorted(statuses[:2]) == [200, 201]
    first, second = answers[0][1], answers[1][1]
    assert first["enrollment"]["id"] == second["enrollment"]["id"]  # type: ignore[index]
    assert {first["idempotent"], second["idempotent"]} == {True, False}  # type: ignore[index]
    assert statuses[2] == 409 and answers[2][1]["contact_id"] == c[2]  # type: ignore[index]
    assert statuses[3] == 404 and answers[3][1]["field"] == "contact_id"  # type: ignore[index]
    assert statuses[4] == 201
    assert answers[4][1]["enrollment"]["contact_id"] != c[0]  # type: ignore[index]
    assert statuses[5] == 422
    for i, (status, body) in enumerate(answers[6:], 3):
        assert status == 201, body
        assert body["enrollment"]["contact_id"] == c[i]  # type: ignore[index]
        assert body["enrollment"]["metadata"] == {"i": i}  # type: ignore[index]
    stats = (await api.store.sequences.stats([sid]))[sid]
    assert stats.active == 1 + 1 + 37
    # The requests shared the sequence's reads: far fewer than one per request.
    assert 1 <= target.calls <= len(bodies) // 4


async def test_a_group_failure_answers_every_request_in_it(api: Api) -> None:
    c = await _contacts(api.store, 10)
    paused = await _sequence(api)
    status, body = await api.call("POST", f"/sequences/{paused}/pause")
    assert status == 200, body
    answers = await asyncio.gather(
        *(api.call("POST", f"/sequences/{paused}/enrollments", {"contact_id": x}) for x in c)
    )
    assert [status for status, _ in answers] == [409] * 10
    assert all(body["current_status"] == "paused" for _, body in answers)  # type: ignore[index]
    unknown = ids.new(ids.SEQUENCE)
    answers = await asyncio.gather(
        *(api.call("POST", f"/sequences/{unknown}/enrollments", {"contact_id": x}) for x in c)
    )
    assert [status for status, _ in answers] == [404] * 10


async def test_groups_of_different_sequences_and_tenants_stay_apart(api: Api) -> None:
    one, two = await _sequence(api), await _sequence(api)
    c = await _contacts(api.store, 6)
    _, other_key = await api.store.tenants.create_key("globex")
    answers = await asyncio.gather(
        *(api.call("POST", f"/sequences/{one}/enrollments", {"contact_id": x}) for x in c[:3]),
        *(api.call("POST", f"/sequences/{two}/enrollments", {"contact_id": x}) for x in c[3:]),
        # Another tenant naming acme's sequence and contact: not found, not enrolled.
        api.call("POST", f"/sequences/{one}/enrollments", {"contact_id": c[0]}, key=other_key),
    )
    assert [s for s, _ in answers] == [201] * 6 + [404]
    got = [(body["enrollment"]["sequence_id"], body["enrollment"]["contact_id"])  # type: ignore[index]
           for _, body in answers[:6]]  # fmt: skip
    assert got == [(one, x) for x in c[:3]] + [(two, x) for x in c[3:]]


@pytest.fixture
def sequence_create() -> models.SequenceCreate:
    return msgspec.convert(SEQUENCE, models.SequenceCreate)


@pytest.fixture
async def sid(store: Store, sequence_create: models.SequenceCreate) -> str:
    """An active sequence of acme in `store`."""
    return (await store.sequences.create("acme", sequence_create)).id


async def test_arrivals_while_groups_are_in_flight_go_together_after(
    store: Store, monkeypatch: pytest.MonkeyPatch, sid: str
) -> None:
    monkeypatch.setattr(coalesce, "MAX_IN_FLIGHT", 1)
    c = await _contacts(store, 6)
    target = CountingTarget(monkeypatch, hold_first=True)
    group = Coalescer(store)
    first = group.enroll("acme", sid, bulk.Item(contact_id=c[0]))
    later = []
    for cid in c[1:]:  # one per turn of the loop, while the first group waits
        await asyncio.sleep(0)
        later.append(group.enroll("acme", sid, bulk.Item(contact_id=cid)))
    assert target.calls == 1 and not first.done()
    target.gate.set()
    outcomes = await asyncio.gather(first, *later)
    assert [o.enrollment.contact_id for o in outcomes] == c  # type: ignore[union-attr]
    assert target.calls == 2  # the five later ones as one group


async def test_a_full_group_goes_at_once_and_the_rest_follow(
    store: Store, monkeypatch: pytest.MonkeyPatch, sid: str
) -> None:
    monkeypatch.setattr(coalesce, "MAX_GROUP", 4)
    c = await _contacts(store, 10)
    target = CountingTarget(monkeypatch)
    group = Coalescer(store)
    futures = [group.enroll("acme", sid, bulk.Item(contact_id=cid)) for cid in c]
    outcomes = await asyncio.gather(*futures)
    assert [o.enrollment.contact_id for o in outcomes] == c  # type: ignore[union-attr]
    assert target.calls == 3  # 4 + 4 + 2


async def test_a_cancelled_request_leaves_the_rest_of_its_group_alone(
    store: Store, sid: str
) -> None:
    c = await _contacts(store, 3)
    group = Coalescer(store)
    futures = [group.enroll("acme", sid, bulk.Item(contact_id=cid)) for cid in c]
    futures[1].cancel()  # its client went away
    done = await asyncio.gather(futures[0], futures[2])
    assert [o.enrollment.contact_id for o in done] == [c[0], c[2]]  # type: ignore[union-attr]
    await group.drain()
    # Its item was enrolled with the group (as it would have been had the request been
    # cancelled while its own script ran): the contact is in, once.
    assert (await store.sequences.stats([sid]))[sid].active == 3


async def test_redis_going_away_fails_every_waiting_request(
    valkey_factory: type[ValkeyProcess], prefix: str, sequence_create: models.SequenceCreate
) -> None:
    server = valkey_factory()  # type: ignore[call-arg]
    server.start()
    store = await Store.open(connect(server.url, socket_timeout=2), prefix, 4)
    try:
        sid = (await store.sequences.create("acme", sequence_create)).id
        c = await _contacts(store, 5)
        server.kill()
        group = Coalescer(store)
        futures = [group.enroll("acme", sid, bulk.Item(contact_id=cid)) for cid in c]
        results = await asyncio.wait_for(
            asyncio.gather(*futures, return_exceptions=True), timeout=20
        )
        assert all(isinstance(r, RedisConnectionError) for r in results), results
        assert not group._running  # nothing left behind
    finally:
        await store.close()


async def test_a_group_logs_under_no_request_s_id(
    store: Store, monkeypatch: pytest.MonkeyPatch, sid: str
) -> None:
    [cid] = await _contacts(store, 1)
    target = CountingTarget(monkeypatch)
    group = Coalescer(store)

    async def request() -> bulk.ItemOutcome:
        structlog.contextvars.bind_contextvars(request_id="first-request")
        return await group.enroll("acme", sid, bulk.Item(contact_id=cid))

    outcome = await asyncio.create_task(request())
    assert outcome.enrollment_id is not None
    assert target.calls == 1 and "request_id" not in target.log_context


async def test_a_fault_while_answering_still_answers_every_request(
    store: Store, monkeypatch: pytest.MonkeyPatch, sid: str
) -> None:
    """A bug past the scripts (here: one outcome short) fails the requests it leaves
    unanswered; none is left waiting forever."""
    c = await _contacts(store, 3)
    real = bulk.enroll

    async def one_short(*args: Any, **kwargs: Any) -> list[bulk.ItemOutcome]:
        return (await real(*args, **kwargs))[:-1]

    monkeypatch.setattr(bulk, "enroll", one_short)
    group = Coalescer(store)
    futures = [group.enroll("acme", sid, bulk.Item(contact_id=cid)) for cid in c]
    results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 10)
    # The items answered before the fault keep their outcomes; the rest get the error.
    assert isinstance(results[-1], ValueError), results
    assert all(isinstance(r, bulk.ItemOutcome | ValueError) for r in results), results
    assert not group._in_flight  # the next group of this sequence is not held back
