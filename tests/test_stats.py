"""Per-step stats through the API: counters written by the scripts that change state,
summed over the shards, with the README's rates."""

from __future__ import annotations

import datetime as dt
from typing import Any

from seqd.store.db import Store
from tests.dispatchutil import Clock, enroll, sequence, sms
from tests.lifecycleutil import Client, client, contact, send_due
from tests.test_lifecycle_status import callback

PHONES = ["+14155550101", "+14155550102", "+14155550103"]


def by_step(body: Any) -> dict[int | None, dict[str, int]]:
    return {row["step"]: row["counts"] for row in body["rows"]}


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


async def stats(api: Client, sid: str, query: str = "", tenant: str = "acme") -> Any:
    status, body = await api.call("GET", f"/sequences/{sid}/stats{query}", tenant=tenant)
    assert status == 200, body
    return body


async def test_sends_replies_opt_outs_and_ends_are_counted_per_step(store: Store) -> None:
    seq = await sequence(store, sms(), sms(), sms())
    cids = [await contact(store, phone=p, email=None) for p in PHONES]
    _, b, c = await enroll(store, seq, cids)
    clock = Clock()
    async with client(store) as api:
        await send_due(store, clock)  # step 0 to all three
        assert (await api.sms("acme", PHONES[0], "sounds good"))[0] == 200  # a pauses
        await send_due(store, clock)  # step 1 to b and c
        assert await callback(api, b.id, 1, "delivered") == 204
        assert await callback(api, c.id, 1, "undelivered") == 204
        assert (await api.sms("acme", PHONES[1], "STOP"))[0] == 200  # b cancelled
        await send_due(store, clock)  # step 2 to c, who completes
        body = await stats(api, seq.id)
    steps = {step: nonzero(counts) for step, counts in by_step(body).items()}
    assert steps == {
        0: {"scheduled": 3, "sent": 3, "replied": 1},
        1: {
            "scheduled": 3,
            "sent": 2,
            "delivered": 1,
            "undelivered": 1,
            "opted_out": 1,
            "cancelled": 1,
        },
        2: {"scheduled": 2, "sent": 1, "completed": 1},
    }
    assert nonzero(body["totals"]["counts"]) == {
        "scheduled": 8,
        "sent": 6,
        "delivered": 1,
        "undelivered": 1,
        "replied": 1,
        "opted_out": 1,
        "cancelled": 1,
        "completed": 1,
    }
    rates = {row["step"]: row["rates"] for row in body["rows"]}
    # Step 0 had no delivery reports: its replies are over what was sent.
    assert rates[0]["reply_rate"] == round(1 / 3, 6) and rates[0]["delivery_rate"] is None
    # Step 1 had: its opt-outs are over what was delivered.
    assert rates[1]["delivery_rate"] == 0.5 and rates[1]["opt_out_rate"] == 1.0
    assert body["totals"]["step"] is None and body["group_by"] == "step"
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert body["to"] == today


async def test_group_by_day_and_variant_and_the_range(store: Store) -> None:
    seq = await sequence(store, sms(), sms(wait=10))
    await enroll(store, seq, [await contact(store)])
    async with client(store) as api:
        await send_due(store, Clock())
        today = dt.datetime.now(dt.UTC).date()
        by_day = await stats(api, seq.id, "?group_by=day")
        assert [(r["day"], r["counts"]["sent"]) for r in by_day["rows"]] == [(today.isoformat(), 1)]
        # No variants yet: one row, variant null.
        by_variant = await stats(api, seq.id, "?group_by=variant")
        assert [(r["variant"], r["counts"]["scheduled"]) for r in by_variant["rows"]] == [(None, 2)]
        before = (today - dt.timedelta(days=3)).isoformat()
        empty = await stats(api, seq.id, f"?from={before}&to={before}")
        assert empty["rows"] == [] and empty["totals"]["counts"]["sent"] == 0
        later = (today + dt.timedelta(days=1)).isoformat()
        query = f"?from={later}&to={today}"
        status, problem = await api.call("GET", f"/sequences/{seq.id}/stats{query}")
        assert status == 422 and problem["errors"][0]["path"] == "query.from"
        status, problem = await api.call("GET", f"/sequences/{seq.id}/stats?from=2020-01-01")
        assert status == 422 and "400 days" in problem["errors"][0]["message"]
        status, problem = await api.call("GET", f"/sequences/{seq.id}/stats?group_by=sender_x")
        assert status == 422 and problem["errors"][0]["path"] == "query.group_by"
        status, _ = await api.call("GET", f"/sequences/{seq.id}/stats", tenant="beta")
        assert status == 404


async def test_counter_hashes_expire_after_the_retention(store: Store) -> None:
    await store.stats.keep_for(2)
    seq = await sequence(store, sms())
    (e,) = await enroll(store, seq, [await contact(store)])
    from seqd import ids
    from seqd.store.counters import DAY_MS

    shard = ids.shard_of(e.id, store.shards)
    day = Clock()() // DAY_MS
    key = store.keys.stats(shard, seq.id, day)
    assert await store.client.hget(key, "0:-:sc") == "1"
    # Expires at the end of the day plus two days.
    assert await store.client.expiretime(key) == (day + 1 + 2) * 86_400


async def test_deferrals_and_failures_count_on_their_step(any_store: Store) -> None:
    from seqd import ids
    from seqd.store.counters import DAY_MS
    from seqd.store.dispatch import Dispatch
    from tests.dispatchutil import claim, raw, settled

    store = any_store
    seq = await sequence(store, sms(), sms(wait=10))
    (e,) = await enroll(store, seq, [await contact(store)])
    shard = ids.shard_of(e.id, store.shards)
    due = int((await raw(store, e.id))["n"])

    async def settle(at: int, outcome: str, **kw: object) -> None:
        (item,) = (await claim(store, shard, at)).items
        done = settled(
            id=e.id, token=item.enrollment.token, step=0, kind="sms", at=at, outcome=outcome, **kw
        )
        await Dispatch(store).advance(shard, [done], now=at, max_attempts=2)

    await settle(due, "defer", until=due + 60_000, reason="window")
    await settle(due + 60_000, "retry", delay=0, error="busy")
    await settle(due + 60_000, "retry", delay=0, error="busy")  # attempts run out: failed
    cells = await store.stats.cells(seq.id, [due // DAY_MS, due // DAY_MS + 1])
    counts: dict[str, dict[str, int]] = {}
    for cell in cells:
        for name, n in cell.counts.items():
            counts.setdefault(cell.step, {})[name] = counts.get(cell.step, {}).get(name, 0) + n
    # Nothing was sent: the enrollment's end is credited to no step ("-").
    assert counts == {"0": {"scheduled": 1, "deferred": 1, "failed": 1}, "-": {"cancelled": 1}}


async def test_the_batched_deferral_counts_too(any_store: Store) -> None:
    """A peeked step deferred with its event built in Python (deferSteps) is counted as
    advance's `defer` is."""
    from seqd import ids
    from seqd.store.counters import DAY_MS
    from seqd.store.dispatch import Dispatch
    from tests.dispatchutil import peek, raw, settled

    store = any_store
    seq = await sequence(store, sms(), sms(wait=10))
    cids = [await contact(store, phone=p, email=None) for p in PHONES[:2]]
    enrolled = await enroll(store, seq, cids)
    for e in enrolled:
        shard = ids.shard_of(e.id, store.shards)
        due = int((await raw(store, e.id))["n"])
        (item,) = [c for c in (await peek(store, shard, due)).items if c.id == e.id]
        defer = settled(
            id=e.id, token=item.enrollment.token, step=0, kind="sms", at=due, outcome="defer",
            until=due + 3_600_000, reason="quiet_hours",
        )  # fmt: skip
        done = await Dispatch(store).advance_many(
            {shard: [defer]}, now=due, max_attempts=3, claimed={e.id: item.enrollment}
        )
        assert done[shard].applied == 1
    cells = await store.stats.cells(seq.id, [due // DAY_MS])
    deferred = sum(c.counts.get("deferred", 0) for c in cells if c.step == "0")
    assert deferred == 2


async def test_an_out_of_office_reply_counts_as_auto_replied(store: Store) -> None:
    seq = await sequence(store, sms(), sms(wait=10))
    cid = await contact(store, phone=PHONES[0], email=None)
    (e,) = await enroll(store, seq, [cid])
    async with client(store) as api:
        await send_due(store, Clock())

        async def never(_: Any) -> int:
            return 0

        (reaction,) = await store.lifecycle.absent("acme", "sms", never, contact_id=cid)
        assert reaction.enrollment_id == e.id
        body = await stats(api, seq.id)
    assert by_step(body)[0]["auto_replied"] == 1 and by_step(body)[0]["sent"] == 1


async def test_scheduled_is_once_per_enrollment_and_step_reached(store: Store) -> None:
    """`scheduled`: the step became the enrollment's current one (put in the due index for
    the first time): once, whether it is then skipped by a condition, sent, a task, or
    re-timed by a pause and resume; and for an enrollment that waited its turn (exclusive)."""
    from tests.dispatchutil import Recorder

    steps = [
        {"kind": "sms", "body": "Hi"},
        {"kind": "sms", "body": "Thanks", "only_if": {"step": 0, "is": "replied"}},
        {"kind": "task", "title": "Call"},
        {"kind": "sms", "body": "Still there?", "skip_if": {"step": 0, "is": "replied"}},
    ]
    sender, clock = Recorder(), Clock()
    async with client(store) as api:
        made = []
        for name in ("s", "other"):
            body = {"name": name, "status": "active", "steps": steps, "exclusive": True}
            code, got = await api.call("POST", "/sequences", body)
            assert code == 201, got
            made.append(got["sequence"]["id"])
        sid, other = made
        cids = [await contact(store, phone=p, email=None) for p in PHONES]
        eids = []
        for cid in cids[:2]:
            code, got = await api.call("POST", f"/sequences/{sid}/enrollments", {"contact_id": cid})
            assert code == 201
            eids.append(got["enrollment"]["id"])
        # The third is live in the other sequence, and waits its turn for this one.
        _, busy = await api.call("POST", f"/sequences/{other}/enrollments", {"contact_id": cids[2]})
        code, queued = await api.call(
            "POST", f"/sequences/{sid}/enrollments", {"contact_id": cids[2], "if_busy": "queue"}
        )
        assert code in (200, 201, 202) and "queued" in queued, queued
        await api.call("POST", f"/enrollments/{busy['enrollment']['id']}/cancel")
        clock.advance(1_000)  # (enrolled after the clock was made)
        await send_due(store, clock, sender)  # step 0 to all three
        assert (await api.sms("acme", PHONES[0], "who is this?"))[0] == 200  # paused
        assert (await api.call("POST", f"/enrollments/{eids[0]}/resume"))[0] == 200
        clock.advance(60_000)
        for _ in range(6):
            await send_due(store, clock, sender)
        # Through the clock's day: a minute ahead of the real time, it may be tomorrow.
        last = dt.datetime.fromtimestamp(clock() / 1000, dt.UTC).date()
        body = await stats(api, sid, f"?to={last}")
    steps_seen = {step: nonzero(counts) for step, counts in by_step(body).items()}
    assert {step: c.get("scheduled") for step, c in steps_seen.items()} == {
        0: 3, 1: 3, 2: 3, 3: 3
    }  # fmt: skip
    # Skipped by a condition: step 1 for the two who did not answer, step 3 for the one who did.
    assert (steps_seen[1].get("skipped"), steps_seen[1].get("sent")) == (2, 1)
    assert (steps_seen[3].get("skipped"), steps_seen[3].get("sent")) == (1, 2)


async def test_a_reply_through_the_account_counts_as_replied(store: Store) -> None:
    """A colleague's answer stops an enrollment of a sequence with on_reply_scope "account":
    `replied` on the step it credits, as the replier's own reply counts on its step."""
    from seqd import models
    from tests.dispatchutil import email

    body = models.SequenceCreate(
        name="s", status="active", steps=[email(), email(wait=10)], on_reply_scope="account"
    )
    seq = await store.sequences.create("acme", body)
    cids = [await contact(store, phone=None, email=f"p{n}@bigco.example") for n in range(3)]
    enrolled = await enroll(store, seq, cids)
    async with client(store) as api:
        await send_due(store, Clock())
        reactions = await store.lifecycle.reply("acme", "email", enrollment_id=enrolled[0].id)
        reactions += await store.lifecycle.reply_account("acme", cids[0])
        assert sorted(r.outcome for r in reactions) == ["paused"] * 3
        counts = nonzero(by_step(await stats(api, seq.id))[0])
    assert counts == {"scheduled": 3, "sent": 3, "replied": 3}


async def test_group_by_sender_counts_what_each_pool_sender_sent_and_got(store: Store) -> None:
    """Round robin over three senders: per sender, what it sent, its delivery reports and
    the replies credited to its steps, each equal to a count of the messages; the rest
    (counted before a send) in the row whose sender is null."""
    from collections import Counter

    from tests.dispatchutil import Recorder, contacts, dispatcher
    from tests.test_senders_budget import ms
    from tests.test_senders_dispatch import add_sender, pooled

    clock = Clock(ms("2027-06-01T12:00:00"))
    pool = [await add_sender(store, clock.at, n) for n in range(3)]
    seq = await pooled(store, pool, sms("one"), sms("two"), rotation="round_robin")
    enrolled = await enroll(store, seq, await contacts(store, 6))
    recorder = Recorder()
    d = dispatcher(store, recorder, clock)
    await d.run_once(clock.at)
    await d.run_once(clock.at)
    assert len(recorder.messages) == 12
    sender_of = {(m.enrollment_id, m.step): m.sender.id for m in recorder.messages if m.sender}
    delivered: Counter[str] = Counter()
    for e in enrolled[:4]:
        await store.lifecycle.record_delivery(
            "acme", e.id, 1, "delivered", 3, "", event_type="message.delivered", event={}
        )
        delivered[sender_of[(e.id, 1)]] += 1
    async with client(store) as api:
        # (The sends on the clock's day, the delivery reports today.)
        today = dt.datetime.now(dt.UTC).date()
        body = await stats(api, seq.id, f"?group_by=sender&from={today}&to=2027-06-01")
    rows = {row["sender"]: nonzero(row["counts"]) for row in body["rows"]}
    sent = Counter(sender_of.values())
    assert set(rows) == {None} | {s.id for s in pool}
    for s in pool:
        # Both steps' ends (completed, credited to the last step sent) count for its sender.
        last = Counter(sender_of[(e.id, 1)] for e in enrolled)[s.id]
        want = {"sent": sent[s.id], "delivered": delivered[s.id], "completed": last}
        assert rows[s.id] == {k: v for k, v in want.items() if v}, s.id
    assert rows[None] == {"scheduled": 12}
    assert nonzero(body["totals"]["counts"]) == {
        "scheduled": 12, "sent": 12, "delivered": 4, "completed": 6
    }  # fmt: skip
    assert all(body["rows"][0][k] is None for k in ("step", "variant", "day", "sender"))


async def test_group_by_sender_with_a_sticky_pool(store: Store) -> None:
    """A sticky rotation's steps carry the pin and the sender in one passed group: each
    sender's `sent` is what it sent, and the contacts are pinned as before."""
    from collections import Counter

    from tests.dispatchutil import Recorder, contacts, dispatcher, raw
    from tests.test_senders_budget import ms
    from tests.test_senders_dispatch import add_sender, pooled

    clock = Clock(ms("2027-06-01T12:00:00"))
    pool = [await add_sender(store, clock.at, n) for n in range(2)]
    seq = await pooled(store, pool, sms("one"), sms("two"))
    enrolled = await enroll(store, seq, await contacts(store, 4))
    recorder = Recorder()
    d = dispatcher(store, recorder, clock)
    await d.run_once(clock.at)
    await d.run_once(clock.at)
    assert len(recorder.messages) == 8
    by = {m.enrollment_id: m.sender.id for m in recorder.messages if m.sender}
    for e in enrolled:
        assert (await raw(store, e.id))["ys"] == by[e.id]
    async with client(store) as api:
        body = await stats(api, seq.id, "?group_by=sender&from=2027-06-01&to=2027-06-01")
    got = {row["sender"]: row["counts"]["sent"] for row in body["rows"] if row["sender"]}
    assert got == dict(Counter(m.sender.id for m in recorder.messages if m.sender))
