"""GET /forecast over HTTP against a real valkey-server: the due index counted per bucket."""

from __future__ import annotations

from collections import Counter
from typing import Any

from seqd.times import from_rfc3339
from tests.conftest import Api
from tests.dispatchutil import Clock, Recorder, dispatcher, raw

HOUR = 3_600_000


async def _sequence(api: Api, steps: list[dict[str, Any]]) -> str:
    sequence = {"name": "s", "status": "active", "steps": steps}
    code, body = await api.call("POST", "/sequences", sequence)
    assert code == 201, body
    return body["sequence"]["id"]  # type: ignore[index,no-any-return]


async def _enroll(api: Api, sid: str, first: int, n: int) -> list[int]:
    """Enroll n new contacts; the due time (ms) of each one's first step."""
    items = [
        {"contact": {"phone": f"+1415555{first + i:04d}", "email": f"c{first + i}@x.io"}}
        for i in range(n)
    ]
    code, body = await api.call("POST", f"/sequences/{sid}/enrollments/batch", {"items": items})
    assert code == 200, body
    results = body["results"]  # type: ignore[index]
    assert all(r["outcome"] == "enrolled" for r in results), results
    return [from_rfc3339(r["enrollment"]["next_run_at"]) for r in results]


def _expected(due: list[int], answer: dict[str, Any]) -> tuple[int, list[int]]:
    """Overdue and per-bucket counts computed from the enrollments' own next_run_at."""
    now, until = from_rfc3339(answer["generated_at"]), from_rfc3339(answer["until"])
    starts = [from_rfc3339(b["start"]) for b in answer["buckets"]]
    width = HOUR if answer["group_by"] == "hour" else 24 * HOUR
    per = Counter(at - at % width for at in due if now <= at < until)
    return sum(1 for at in due if at < now), [per[s] for s in starts]


async def test_counts_match_the_enrollments_next_run_at(api: Api) -> None:
    sms_now = await _sequence(api, [{"kind": "sms", "body": "now"}])
    sms_later = await _sequence(api, [{"kind": "sms", "wait_minutes": 150, "body": "later"}])
    mixed = await _sequence(
        api,
        [
            {"kind": "email", "wait_minutes": 30 * 60, "subject": "s", "body": "b"},
            {"kind": "sms", "wait_minutes": 10, "body": "then"},
        ],
    )
    paused = await _sequence(api, [{"kind": "sms", "wait_minutes": 60, "body": "p"}])
    due = {
        sms_now: await _enroll(api, sms_now, 0, 4),
        sms_later: await _enroll(api, sms_later, 100, 6),
        mixed: await _enroll(api, mixed, 200, 5),
    }
    await _enroll(api, paused, 300, 3)
    code, body = await api.call("POST", f"/sequences/{paused}/pause")
    assert code == 200, body

    code, answer = await api.call("GET", "/forecast?hours=48")
    assert code == 200, answer
    everything = due[sms_now] + due[sms_later] + due[mixed]
    overdue, buckets = _expected(everything, answer)  # type: ignore[arg-type]
    assert answer["overdue"] == overdue == 4  # type: ignore[index]
    assert [b["count"] for b in answer["buckets"]] == buckets  # type: ignore[index]
    assert answer["total"] == 11 and len(answer["buckets"]) in (48, 49)  # type: ignore[index]

    code, sms = await api.call("GET", "/forecast?hours=48&channel=sms")
    overdue, buckets = _expected(due[sms_now] + due[sms_later], sms)  # type: ignore[arg-type]
    assert (sms["overdue"], [b["count"] for b in sms["buckets"]]) == (overdue, buckets)  # type: ignore[index]
    assert sms["total"] == 6  # type: ignore[index]

    # The mixed sequence's email steps are found enrollment by enrollment.
    code, email = await api.call("GET", "/forecast?hours=72&group_by=day&channel=email")
    overdue, buckets = _expected(due[mixed], email)  # type: ignore[arg-type]
    assert (email["overdue"], [b["count"] for b in email["buckets"]]) == (0, buckets)  # type: ignore[index]
    assert email["total"] == 5 and len(email["buckets"]) in (3, 4)  # type: ignore[index]

    code, one = await api.call("GET", f"/forecast?hours=1&sequence_id={sms_later}")
    assert (one["overdue"], one["total"]) == (0, 0)  # type: ignore[index]
    code, none = await api.call("GET", f"/forecast?sequence_id={paused}")
    assert code == 200 and none["total"] == none["overdue"] == 0  # type: ignore[index]


async def test_bad_queries_are_422_naming_the_field(api: Api) -> None:
    for query, field in [
        ("hours=0", "query.hours"),
        ("hours=745", "query.hours"),
        ("group_by=week", "query.group_by"),
        ("channel=fax", "query.channel"),
        ("bogus=1", "query.bogus"),
    ]:
        code, body = await api.call("GET", f"/forecast?{query}")
        assert code == 422, (query, body)
        assert body["errors"][0]["path"] == field, body  # type: ignore[index]
    code, body = await api.call("GET", "/forecast?sequence_id=seq_nope")
    assert code == 404, body


async def _sender(api: Api, channel: str, address: str) -> str:
    code, made = await api.call("POST", "/senders", {"channel": channel, "address": address})
    assert code == 201, made
    return made["sender"]["id"]  # type: ignore[index,no-any-return]


async def _pooled(api: Api, pool: list[str], rotation: str, waits: list[int]) -> str:
    steps = [{"kind": "sms", "wait_minutes": w, "body": f"step {n}"} for n, w in enumerate(waits)]
    body = {
        "name": "s",
        "status": "active",
        "steps": steps,
        "senders": {"sms": pool},
        "rotation": rotation,
    }
    code, made = await api.call("POST", "/sequences", body)
    assert code == 201, made
    return made["sequence"]["id"]  # type: ignore[index,no-any-return]


async def _enrolled(api: Api, sid: str, first: int, n: int) -> list[str]:
    items = [{"contact": {"phone": f"+1415555{first + i:04d}"}} for i in range(n)]
    code, body = await api.call("POST", f"/sequences/{sid}/enrollments/batch", {"items": items})
    assert code == 200, body
    return [r["enrollment"]["id"] for r in body["results"]]  # type: ignore[index]


async def test_a_senders_forecast_counts_the_steps_known_to_go_from_it(api: Api) -> None:
    # A step's sender is known ahead only when its pool has one sender or its contact is
    # pinned (sticky); the steps of a pool whose sender is picked when they go are
    # `unassigned` for each sender of the pool, in no bucket.
    a, b, c = [await _sender(api, "sms", f"+1312555{n:04d}") for n in (1, 2, 3)]
    mail = await _sender(api, "email", "ana@acme.io")
    sticky = await _pooled(api, [a, b], "sticky", [0, 60])
    pinned = await _enrolled(api, sticky, 0, 4)
    # The first steps go (each contact pinned to the sender it got), the second ones are
    # due an hour later.
    clock = Clock()
    recorder = Recorder()
    await dispatcher(api.store, recorder, clock).run_once(clock.at)
    assert len(recorder.messages) == 4
    pins = {eid: (await raw(api.store, eid))["ys"] for eid in pinned}
    assert sorted(Counter(pins.values()).values()) == [2, 2]
    unpinned = await _enrolled(api, sticky, 10, 1)  # its first step: either sender
    solo = await _pooled(api, [a], "sticky", [0, 90])
    await _enrolled(api, solo, 20, 3)  # due now: overdue, from a
    rr = await _pooled(api, [a, b], "round_robin", [30])
    await _enrolled(api, rr, 30, 3)  # either sender
    other = await _pooled(api, [c], "sticky", [45])
    await _enrolled(api, other, 40, 2)

    async def forecast(query: str) -> dict[str, Any]:
        code, answer = await api.call("GET", f"/forecast?hours=3&{query}")
        assert code == 200, answer
        return answer  # type: ignore[return-value]

    for sid, overdue in ((a, 3), (b, 0)):
        answer = await forecast(f"sender_id={sid}")
        due = [int((await raw(api.store, eid))["n"]) for eid in pinned if pins[eid] == sid]
        _, buckets = _expected(due, answer)
        assert [x["count"] for x in answer["buckets"]] == buckets
        assert (answer["overdue"], answer["total"]) == (overdue, 2)
        assert answer["unassigned"] == len(unpinned) + 3
    answer = await forecast(f"sender_id={c}&group_by=day")
    assert (answer["overdue"], answer["total"], answer["unassigned"]) == (0, 2, 0)
    # Another channel's sender, or another channel than the sender's: nothing.
    for query in (f"sender_id={mail}", f"sender_id={a}&channel=email"):
        answer = await forecast(query)
        assert (answer["overdue"], answer["total"], answer["unassigned"]) == (0, 0, 0)
    answer = await forecast(f"sender_id={a}&sequence_id={rr}")
    assert (answer["overdue"], answer["total"], answer["unassigned"]) == (0, 0, 3)
    # Without sender_id, every step counts and none is unassigned.
    answer = await forecast("")
    assert (answer["overdue"], answer["total"], answer["unassigned"]) == (4, 9, None)
    code, body = await api.call("GET", "/forecast?sender_id=snd_nope")
    assert code == 404, body
