"""An enrollment's last step settled by advance: its fast path (complete_read, one call's
completions counted once) leaves the store exactly as the general path (settle: the hash
read whole, pass_step then finish) does.

Each case completes two like enrollments, each alone in its shard, at the same times: one
through a call of its own (the fast path where it applies), one through a call that names
it twice (an id repeated in a call turns the fast paths off; the repeat is stale). Their
hashes, contacts, counts, completed indexes, per-step counters and events must match, ids
aside."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis.asyncio

from seqd import ids, models
from seqd.store.db import Store
from seqd.store.dispatch import Dispatch
from seqd.store.enrollments import EnrollItem
from seqd.store.settles import Settled
from tests.dispatchutil import TENANT, claim, contacts_in_shard, email, raw, settled, sms

AT = 1_800_000_000_000
# (steps, the outcome of each step but the last, the last step's outcome fields, metadata)
CASES: dict[str, tuple[list[models.StepIn], list[dict[str, Any]], dict[str, Any]]] = {
    "sent": ([sms()], [], {"outcome": "sent", "provider_id": "SM1"}),
    "sent, variant, pool sender and pin": (
        [sms()],
        [],
        {"outcome": "sent", "provider_id": "SM1", "variant": "b", "sender": "snd", "pin": "snd"},
    ),
    "sent without a provider id": ([sms()], [], {"outcome": "sent"}),
    "email": ([email()], [], {"outcome": "sent", "provider_id": "<m@x>"}),
    "skipped": ([sms()], [], {"outcome": "skipped", "reason": "suppressed"}),
    "skipped after a sent step": (
        [sms(), sms()],
        [{"outcome": "sent", "provider_id": "SM0", "wait": 0}],
        {"outcome": "skipped", "reason": "suppressed"},
    ),
    "sent after a retry": (
        [sms(), sms()],
        [{"outcome": "sent", "provider_id": "SM0", "wait": 0}, {"outcome": "retry", "delay": 0}],
        {"outcome": "sent", "provider_id": "SM1"},
    ),
}


def settle(item: Any, step: int, kind: str, at: int, fields: dict[str, Any]) -> Settled:
    base = {"wait": -1} if fields["outcome"] in ("sent", "skipped") else {}
    return settled(
        **{"id": item.id, "token": item.enrollment.token, "step": step, "kind": kind, "at": at,
           **base, **fields}
    )  # fmt: skip


async def new_sequence(store: Store, steps: list[models.StepIn], exclusive: bool) -> Any:
    body = models.SequenceCreate(name="s", status="active", steps=steps, exclusive=exclusive)
    return await store.sequences.create(TENANT, body)


async def run_side(
    store: Store,
    shard: int,
    seq: Any,
    before: list[dict[str, Any]],
    last: dict[str, Any],
    route: str,
    waiting_in: Any = None,
) -> dict[str, Any]:
    """Enroll a contact of `shard` (with metadata), settle `before` and then `last`; what
    the store holds of it afterwards, its ids replaced by names."""
    (cid,) = await contacts_in_shard(store, 1, shard)
    meta = {"k": 'a "quoted"/text'}
    (res,) = await store.enrollments.enroll(TENANT, seq, [EnrollItem(cid, meta, due=AT)])
    eid = res.id
    names = {eid: "E", cid: "C"}
    if waiting_in is not None:
        (queued,) = await store.enrollments.enroll(
            TENANT, waiting_in, [EnrollItem(cid, {}, queue=True)]
        )
        names[queued.id] = "W"
    at, step = AT, 0
    dispatch = Dispatch(store)
    for fields in before:
        (item,) = (await claim(store, shard, at)).items
        await dispatch.advance(
            shard, [settle(item, step, seq.steps[step].kind, at, fields)], now=at, max_attempts=3
        )
        step += fields["outcome"] != "retry"
    (item,) = (await claim(store, shard, at)).items
    outcome = settle(item, step, seq.steps[step].kind, at + 5, last)
    cells = await store.stats.cells(seq.id, [at // 86_400_000])
    outbox = len(await store.client.xrange(store.keys.outbox(shard)))
    reads = await whole_reads(store)
    if route == "passed":
        (done,) = (
            await dispatch.advance_many(
                {shard: [outcome]}, now=at + 5, max_attempts=3, claimed={eid: item.enrollment}
            )
        ).values()
    else:
        done = await dispatch.advance(
            shard, [outcome, outcome] if route == "repeated" else [outcome], now=at + 5,
            max_attempts=3,
        )  # fmt: skip
    assert (done.applied, done.stale) == (1, [eid] if route == "repeated" else [])
    reads = await whole_reads(store) - reads if reads >= 0 else -1
    after = await store.stats.cells(seq.id, [at // 86_400_000])
    counted: dict[str, int] = {}
    for sign, got in ((-1, cells), (1, after)):
        for cell in got:
            for name, n in cell.counts.items():
                key = f"{cell.step}:{cell.variant}:{cell.sender}:{name}"
                counted[key] = counted.get(key, 0) + sign * n
    keys = store.keys
    state = {
        "hash": await raw(store, eid),
        "contact": await store.client.hgetall(keys.contact(shard, cid)),
        "counts": await store.client.hgetall(keys.counts(shard, seq.id)),
        "completed": await store.client.zrange(
            keys.status_index(shard, seq.id, "completed"), 0, -1
        ),
        "queue": await store.client.zrange(keys.queue(shard, seq.id), 0, -1),
        "stats": {k: v for k, v in counted.items() if v},
        "events": [
            (f["type"], f.get("items") or f.get("data"))
            for _, f in (await store.client.xrange(keys.outbox(shard)))[outbox:]
        ],
    }
    if waiting_in is not None:
        state["waiting_counts"] = await store.client.hgetall(keys.counts(shard, waiting_in.id))
        state["waiting_queue"] = await store.client.zrange(keys.queue(shard, waiting_in.id), 0, -1)
    text = json.dumps(state, sort_keys=True)
    # (Not compared: how the side read the hash.)
    state_reads[0] = reads
    for real, name in names.items():
        text = text.replace(real, name)
    named = json.loads(text)
    # (The events' JSON key order is the script's own: compared decoded.)
    named["events"] = [(t, json.loads(data)) for t, data in named["events"]]
    return dict(named)


async def whole_reads(store: Store) -> int:
    """HGETALLs the server ran so far, scripts' included (-1 but on one valkey-server:
    fakeredis counts no script's commands, a cluster's are per node)."""
    client = store.client
    if (
        not isinstance(client, redis.asyncio.Redis)
        or type(client).__module__ != "redis.asyncio.client"
    ):
        return -1
    got = await client.info("commandstats")
    return int(got.get("cmdstat_hgetall", {}).get("calls", 0))


# The last run_side's HGETALLs during its final advance call.
state_reads = [0]
# Cases the general path takes even alone in its call: the completion is credited to an
# earlier step.
GENERAL = {"skipped after a sent step"}


@pytest.mark.parametrize("route", ["items", "passed"])
@pytest.mark.parametrize("case", list(CASES))
async def test_a_last_step_settles_as_the_general_path_settles_it(
    any_store: Store, case: str, route: str
) -> None:
    """`items`: the outcome in advance's JSON items (a caller that claimed nothing);
    `passed`: as the dispatcher passes it, a passed step's values (store/settles.py)."""
    steps, before, last = CASES[case]
    seq = await new_sequence(any_store, steps, exclusive=False)
    fast = await run_side(any_store, 0, seq, before, last, route)
    # The fast path read no hash whole (on valkey, whose INFO counts commands).
    assert state_reads[0] in ((-1, 0) if case not in GENERAL else (-1, 1))
    general = await run_side(any_store, 1, seq, before, last, "repeated")
    assert state_reads[0] in (-1, 2)
    assert fast == general
    assert fast["hash"]["st"] == "completed" and fast["queue"] == []
    assert fast["completed"] == ["E"] and fast["counts"]["completed"] == "1"
    assert "e:" + seq.id not in fast["contact"] and fast["contact"]["x:" + seq.id] == "E"
    types = [t for t, _ in fast["events"]]
    step_type = "sequence.step." + last["outcome"]
    assert types == [step_type, "sequence.enrollment.completed"]
    (sent,), (ended,) = (data for _, data in fast["events"])
    assert sent["fields"]["st"] == "active" and ended["fields"]["st"] == "completed"
    assert ended["fields"]["md"] == json.dumps({"k": 'a "quoted"/text'}, separators=(",", ":"))
    step = len(steps) - 1
    credited = 0 if case == "skipped after a sent step" else step
    variant = last.get("variant", "-")
    assert fast["stats"][f"{credited}:{variant if credited == step else '-'}:None:completed"] == 1
    assert fast["stats"][f"{step}:{variant}:None:{last['outcome']}"] == 1


async def test_a_completion_makes_the_contacts_waiting_exclusive_enrollment(
    any_store: Store,
) -> None:
    one = await new_sequence(any_store, [sms()], exclusive=True)
    other = await new_sequence(any_store, [sms()], exclusive=True)
    last = {"outcome": "sent", "provider_id": "SM1"}
    fast = await run_side(any_store, 0, one, [], last, "passed", waiting_in=other)
    general = await run_side(any_store, 1, one, [], last, "repeated", waiting_in=other)
    assert fast == general
    assert fast["contact"]["ex"] == "W" and fast["contact"]["e:" + other.id] == "W"
    assert fast["waiting_queue"] == ["W"] and fast["waiting_counts"] == {"active": "1"}
    types = [t for t, _ in fast["events"]]
    # (The waiting one is made inside the other's finish, before its `completed` event.)
    assert types == [
        "sequence.step.sent",
        "sequence.enrollment.created",
        "sequence.enrollment.completed",
    ]


@pytest.mark.parametrize("route", ["items", "passed"])
async def test_one_calls_completions_are_each_counted(any_store: Store, route: str) -> None:
    """Completions of one call in two sequences: counts, index and counters written once
    per sequence hold every one of them, and the events keep step before end."""
    s = any_store
    seqs = [await new_sequence(s, [sms()], exclusive=False) for _ in range(2)]
    cids = await contacts_in_shard(s, 6, 0)
    eids = []
    for n, cid in enumerate(cids):
        (res,) = await s.enrollments.enroll(TENANT, seqs[n % 2], [EnrollItem(cid, {}, due=AT)])
        eids.append(res.id)
    items = (await claim(s, 0, AT)).items
    assert len(items) == 6
    outcomes = [
        settle(item, 0, "sms", AT, {"outcome": "sent", "provider_id": f"SM{n}", "variant": "a"})
        for n, item in enumerate(items)
    ]
    if route == "passed":
        claimed = {item.id: item.enrollment for item in items}
        done = (
            await Dispatch(s).advance_many({0: outcomes}, now=AT, max_attempts=3, claimed=claimed)
        )[0]
    else:
        done = await Dispatch(s).advance(0, outcomes, now=AT, max_attempts=3)
    assert done.applied == 6
    for seq in seqs:
        assert await s.client.hgetall(s.keys.counts(0, seq.id)) == {"active": "0", "completed": "3"}
        index = await s.client.zrange(s.keys.status_index(0, seq.id, "completed"), 0, -1)
        assert sorted(index) == sorted(e for n, e in enumerate(eids) if n % 2 == seqs.index(seq))
        cells = await s.stats.cells(seq.id, [AT // 86_400_000])
        assert {(c.step, c.variant): {k: v for k, v in c.counts.items() if v} for c in cells} == {
            ("0", "a"): {"sent": 3, "completed": 3}
        }  # (scheduled: on the day of the enroll)
    rows = await s.client.xrange(s.keys.outbox(0))
    ended = [r for r in rows if r[1]["type"] != "sequence.enrollment.created"]
    assert [f["type"] for _, f in ended] == ["sequence.step.sent", "sequence.enrollment.completed"]
    sent, completed = (json.loads(f["items"]) for _, f in ended)
    assert [d["id"] for d in sent] == [d["id"] for d in completed] == [o.id for o in outcomes]
    assert {ids.shard_of(e, s.shards) for e in eids} == {0}


@pytest.mark.parametrize("route", ["items", "passed"])
async def test_a_last_step_sent_while_a_pause_took_over_is_recorded_late(
    any_store: Store, route: str
) -> None:
    """A last step whose enrollment was paused mid-send (its claim no longer holds) is
    recorded on the enrollment, which stays paused: not completed, by either route."""
    s = any_store
    seq = await new_sequence(s, [sms()], exclusive=False)
    (cid,) = await contacts_in_shard(s, 1, 0)
    (res,) = await s.enrollments.enroll(TENANT, seq, [EnrollItem(cid, {}, due=AT)])
    (item,) = (await claim(s, 0, AT)).items
    await s.enrollments.transition(TENANT, res.id, "pause", "manual")
    outcome = settle(item, 0, "sms", AT + 5, {"outcome": "sent", "provider_id": "SM1"})
    claimed = {res.id: item.enrollment} if route == "passed" else None
    (done,) = (
        await Dispatch(s).advance_many({0: [outcome]}, now=AT + 5, max_attempts=3, claimed=claimed)
    ).values()
    assert (done.applied, done.late, done.stale) == (0, 1, [])
    h = await raw(s, res.id)
    assert h["st"] == "paused" and h["p0"] == "SM1" and h["i"] == "1" and "ca" not in h
    assert await s.client.hgetall(s.keys.counts(0, seq.id)) == {"active": "0", "paused": "1"}
    rows = await s.client.xrange(s.keys.outbox(0))
    assert rows[-1][1]["type"] == "sequence.step.sent"
    (sent,) = json.loads(rows[-1][1]["items"])
    assert sent["fields"]["st"] == "paused" and sent["sent_at"] == AT + 5
