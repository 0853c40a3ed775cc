"""claimDue and advance called directly (through their facade), on valkey and on fakeredis."""

from __future__ import annotations

import json

import msgspec
import pytest

from seqd import ids, models
from seqd.store import codec, event_types
from seqd.store.claims import ClaimBatch, Claimed, Leased
from seqd.store.db import Store
from seqd.store.dispatch import Dispatch
from seqd.store.enrollments import EnrollItem
from seqd.store.scripts import ScriptError
from seqd.store.settles import Sent, Settled, Skipped
from seqd.times import now_ms, to_rfc3339
from tests.dispatchutil import (
    TENANT,
    WORKER,
    contacts,
    contacts_in_shard,
    due_score,
    email,
    enroll,
    events,
    raw,
    sequence,
    settled,
    sms,
)
from tests.dispatchutil import claim as claim_leased
from tests.dispatchutil import peek as peek_at

LEASE = 60_000


def shard(store: Store, eid: str) -> int:
    return ids.shard_of(eid, store.shards)


async def claim(
    store: Store, sh: int, now: int, limit: int = 100, on_unknown: str = "resend"
) -> ClaimBatch:
    """A peek and the lease of what it found, as the dispatcher claims a batch."""
    return await claim_leased(store, sh, now, limit=limit, lease_ms=LEASE, on_unknown=on_unknown)


async def advance(store: Store, sh: int, now: int, *items: Settled, claimed=None):  # type: ignore[no-untyped-def]
    """`claimed` (id -> fields as claimed): the dispatcher's way, with the step events built
    in Python (`step_event`) and no read of the hash in the script."""
    if claimed is None:
        return await Dispatch(store).advance(sh, list(items), now=now, max_attempts=3)
    done = await Dispatch(store).advance_many(
        {sh: list(items)}, now=now, max_attempts=3, claimed=claimed
    )
    return done[sh]


def settle(eid: str, token: str, step: int, at: int, outcome: str, **kw: object) -> Settled:
    return settled(id=eid, token=token, step=step, kind="sms", at=at, outcome=outcome, **kw)


async def one(store: Store, *steps, **contact):  # type: ignore[no-untyped-def]
    seq = await sequence(store, *(steps or (sms(), sms(wait=10))))
    cid = (await contacts(store, 1, **contact))[0]
    (e,) = await enroll(store, seq, [cid], {"source": "test"})
    return seq, e, shard(store, e.id), int((await raw(store, e.id))["n"])


async def test_claim_leases_with_a_token_and_returns_what_the_sender_needs(
    any_store: Store,
) -> None:
    s = any_store
    seq, e, sh, due = await one(s)
    before = await raw(s, e.id)
    assert (await claim(s, sh, due - 1)).items == []
    batch = await claim(s, sh, due)
    assert batch.seen == 1
    (item,) = batch.items
    assert item.id == e.id
    # The token is the lease: due again half a ms before now + lease (the half marks an
    # unsettled claim); the enrollment hash itself is not written.
    assert item.enrollment.token == f"{due + LEASE - 1}.5" and item.enrollment.index == "0"
    assert await due_score(s, e.id) == due + LEASE - 0.5
    assert await raw(s, e.id) == before
    assert item.enrollment.metadata == '{"source":"test"}'
    assert item.contact["first_name"] == "n0" and item.contact["phone"].startswith("+1415555")
    assert batch.m == {seq.id: f"active:1:{len(seq.steps)}"}
    # Leased: not claimable again before the lease passes, claimable after.
    assert (await claim(s, sh, due + LEASE - 1)).items == []
    again = await claim(s, sh, due + LEASE)
    assert again.items[0].enrollment.token == f"{due + 2 * LEASE - 1}.5"


async def test_heads_report_a_lease_due_from_the_ms_it_can_be_claimed(any_store: Store) -> None:
    s = any_store
    _seq, e, sh, due = await one(s)
    await claim(s, sh, due)
    head, count = (await Dispatch(s).heads(due + LEASE))[sh]
    assert (head, count) == (due + LEASE, 1)
    assert (await claim(s, sh, head)).items[0].id == e.id


async def test_claim_takes_earliest_first_up_to_the_limit(any_store: Store) -> None:
    s = any_store
    seq = await sequence(s, sms())
    enrolled = await enroll(s, seq, await contacts(s, 12))
    by_shard: dict[int, list[str]] = {}
    for e in enrolled:
        by_shard.setdefault(shard(s, e.id), []).append(e.id)
    sh, mine = max(by_shard.items(), key=lambda kv: len(kv[1]))
    assert len(mine) >= 3
    # Distinct due times, in the reverse of id order.
    for n, eid in enumerate(reversed(mine)):
        await s.client.zadd(s.keys.queue(sh, seq.id), {eid: 1000 + n})
    await s.client.zadd(s.keys.heads(sh), {seq.id: 1000})
    batch = await claim(s, sh, 5000, limit=2)
    assert batch.seen == 2
    assert [i.id for i in batch.items] == [mine[-1], mine[-2]]


async def test_a_claim_larger_than_one_lease_command_leases_every_member(
    store: Store,
) -> None:
    # claimDue writes its leases in ZADDs of BULK members: a claim of 2 BULK + 100 takes
    # three, and every member ends on the token, none left due.
    from seqd.store.scripts import BULK

    seq = await sequence(store, sms(), sms(wait=10))
    n = 2 * BULK + 100
    cids = await contacts_in_shard(store, n, shard=0)
    for start in range(0, n, 1000):
        await store.enrollments.enroll(
            TENANT, seq, [EnrollItem(c, {}) for c in cids[start : start + 1000]], full=False
        )
    now = now_ms() + 1
    batch = await claim(store, 0, now, limit=n)
    assert batch.seen == n and len(batch.items) == n
    tokens = {item.enrollment.token for item in batch.items}
    assert len(tokens) == 1
    scores = await store.client.zrange(store.keys.queue(0, seq.id), 0, -1, withscores=True)
    assert len(scores) == n and {score for _, score in scores} == {float(tokens.pop())}
    assert (await claim(store, 0, now, limit=n)).items == []


async def test_a_paused_sequences_queue_waits_without_a_head_until_it_resumes(
    any_store: Store,
) -> None:
    from seqd.models import SequenceStatus

    s = any_store
    seq, e, sh, due = await one(s)
    await s.sequences.change(TENANT, seq.id, status=SequenceStatus.PAUSED)
    assert await s.client.zscore(s.keys.heads(sh), seq.id) is None
    assert (await claim(s, sh, due)).items == []
    assert await due_score(s, e.id) == due
    await s.sequences.change(TENANT, seq.id, status=SequenceStatus.ACTIVE)
    assert await s.client.zscore(s.keys.heads(sh), seq.id) == due
    assert (await claim(s, sh, due)).items[0].id == e.id


async def test_a_claim_takes_out_the_head_of_a_sequence_paused_in_the_mirror_only(
    any_store: Store,
) -> None:
    # A head can outlive the pause that syncSequence took it out for (an advance of a step
    # in flight puts it back): the claim that finds it takes it out, sends nothing, and
    # leaves the queue as it is.
    s = any_store
    seq, e, sh, due = await one(s)
    await s.client.hset(s.keys.mirrors(sh), seq.id, "paused:9:2")
    batch = await claim(s, sh, due)
    assert batch.items == [] and batch.seen == 0
    assert await s.client.zscore(s.keys.heads(sh), seq.id) is None
    assert await due_score(s, e.id) == due
    assert (await raw(s, e.id))["st"] == "active"


async def test_claim_cancels_when_the_sequence_is_archived(any_store: Store) -> None:
    s = any_store
    seq, e, sh, due = await one(s)
    # The mirror alone says archived (the sweep has not reached this enrollment yet).
    await s.client.hset(s.keys.mirrors(sh), seq.id, "archived:9:2")
    assert (await claim(s, sh, due)).items == []
    h = await raw(s, e.id)
    assert h["st"] == "cancelled" and h["cr"] == "sequence_archived"
    assert await due_score(s, e.id) is None
    assert await s.client.hget(s.keys.counts(sh, seq.id), "cancelled") == "1"


async def test_claim_completes_an_enrollment_past_the_last_step(any_store: Store) -> None:
    s = any_store
    _seq, e, sh, due = await one(s)
    await s.client.hset(s.keys.enrollment(sh, e.id), "i", 2)
    assert (await claim(s, sh, due)).items == []
    h = await raw(s, e.id)
    assert h["st"] == "completed" and "ca" in h


async def test_claim_drops_a_stale_member(any_store: Store) -> None:
    s = any_store
    _seq, e, sh, due = await one(s)
    await s.enrollments.transition(TENANT, e.id, "cancel", "manual")
    await s.client.zadd(s.keys.queue(sh, _seq.id), {e.id: due})
    await s.client.zadd(s.keys.heads(sh), {_seq.id: due})
    batch = await claim(s, sh, due)
    assert batch.items == [] and batch.seen == 1
    assert await due_score(s, e.id) is None


async def test_reclaim_after_a_lost_worker_counts_attempts_then_fails(any_store: Store) -> None:
    s = any_store
    _seq, e, sh, due = await one(s)
    now = due
    for attempt in (1, 2, 3):
        batch = await claim(s, sh, now)
        # An absent `a` means no attempt yet (enroll does not write it).
        assert (batch.items[0].enrollment.attempts or "0") == str(attempt - 1)
        now += LEASE  # the worker died: the lease passes
    # Three attempts lost (max_attempts = 3): the next claim ends it.
    assert (await claim(s, sh, now)).items == []
    h = await raw(s, e.id)
    assert h["st"] == "cancelled" and h["cr"] == "failed"
    types = [ev["type"] for ev in await events(s, sh)]
    assert types[-2:] == ["sequence.step.failed", "sequence.enrollment.cancelled"]


async def test_reclaim_with_on_unknown_hold_pauses(any_store: Store) -> None:
    s = any_store
    _seq, e, sh, due = await one(s)
    await claim(s, sh, due, on_unknown="hold")
    assert (await claim(s, sh, due + LEASE, on_unknown="hold")).items == []
    h = await raw(s, e.id)
    assert h["st"] == "paused" and h["pr"] == "delivery_unknown"
    last = (await events(s, sh))[-1]
    assert last["type"] == "sequence.enrollment.paused" and last["step"] == 0


@pytest.mark.parametrize("built", [False, True], ids=["script-built", "python-built"])
async def test_advance_sent_schedules_the_next_step_then_completes(
    any_store: Store, built: bool
) -> None:
    s = any_store
    seq, e, sh, due = await one(s)
    item = (await claim(s, sh, due)).items[0]
    at = due + 150
    done = await advance(
        s,
        sh,
        at,
        settle(e.id, item.enrollment.token, 0, at, "sent", provider_id="SM1", wait=600_000),
        claimed={e.id: item.enrollment} if built else None,
    )
    assert (done.applied, done.late, done.stale) == (1, 0, [])
    h = await raw(s, e.id)
    assert h["i"] == "1" and h["p0"] == "SM1" and h["sm"] == "1"
    assert h["n"] == str(at + 600_000) and h.get("a", "0") == "0"
    assert await due_score(s, e.id) == at + 600_000
    sent = (await events(s, sh))[-1]
    assert sent["type"] == "sequence.step.sent"
    assert sent["step"] == 0 and sent["provider_id"] == "SM1" and sent["sent_at"] == at
    item = (await claim(s, sh, at + 600_000)).items[0]
    end = at + 600_100
    await advance(
        s, sh, end, settle(e.id, item.enrollment.token, 1, end, "sent", provider_id="SM2", wait=-1)
    )
    h = await raw(s, e.id)
    assert h["st"] == "completed" and h["ca"] == str(end) and h["p1"] == "SM2"
    assert await due_score(s, e.id) is None
    types = [ev["type"] for ev in await events(s, sh)]
    assert types[-2:] == ["sequence.step.sent", "sequence.enrollment.completed"]
    counts = await s.client.hgetall(s.keys.counts(sh, seq.id))
    assert counts == {"active": "0", "completed": "1"}
    assert await s.client.zcard(s.keys.status_index(sh, seq.id, "active")) == 0
    assert await s.client.hget(s.keys.contact(sh, e.contact_id), f"e:{seq.id}") is None


async def test_advance_batches_the_fast_paths_events_one_entry_per_type(
    any_store: Store,
) -> None:
    """A call's events go out as one outbox entry per type, the steps' before the
    enrollments' (a failed step's `step.failed` before its `enrollment.cancelled`): each
    enrollment's events keep their order."""
    s = any_store
    seq = await sequence(s, sms(), sms(wait=10))
    es = await enroll(s, seq, await contacts(s, 24))
    sh = max(range(s.shards), key=lambda k: sum(shard(s, e.id) == k for e in es))
    due = max([int((await raw(s, e.id))["n"]) for e in es])
    claimed = (await claim(s, sh, due)).items
    assert len(claimed) >= 4
    before = len(await s.client.xrange(s.keys.outbox(sh)))
    at = due + 1
    outcomes = ["failed"] + ["sent", "skipped"] * len(claimed)
    extra = {
        "failed": {"error": "x"},
        "sent": {"wait": 60_000},
        "skipped": {"reason": "r", "wait": 0},
    }
    items = [
        settle(c.id, c.enrollment.token, 0, at, outcome, **extra[outcome])
        for c, outcome in zip(claimed, outcomes, strict=False)
    ]
    done = await advance(s, sh, at, *items)
    assert done.applied == len(claimed)
    rows = (await s.client.xrange(s.keys.outbox(sh)))[before:]
    assert [f["type"] for _, f in rows] == [
        "sequence.step.failed",
        "sequence.step.sent",
        "sequence.step.skipped",
        "sequence.enrollment.cancelled",
    ]
    failed, sent, skipped, cancelled = (json.loads(f["items"]) for _, f in rows)
    assert [d["id"] for d in failed] == [d["id"] for d in cancelled] == [items[0].id]
    assert [d["id"] for d in sent] == [i.id for i in items if isinstance(i, Sent)]
    assert [d["id"] for d in skipped] == [i.id for i in items if isinstance(i, Skipped)]
    assert {d["step"] for d in sent + skipped} == {0}


@pytest.mark.parametrize("path", ["script-built", "python-built", "general"])
async def test_step_events_carry_the_enrollment_as_stored(any_store: Store, path: str) -> None:
    # Sent and skipped steps with a step after them take advance's fast path, which spells
    # the event out by hand (in the script, or in Python when the caller passes what it
    # claimed); the general path builds it from the hash (a send recorded after a pause
    # took the enrollment over): each must read back as the enrollment the API shows.
    s = any_store
    built = path == "python-built"
    _seq, e, sh, due = await one(s, sms(), sms(wait=10), email(wait=10), sms(wait=10))

    async def check(at: int, **extra: object) -> dict[str, object]:
        ev = (await events(s, sh))[-1]
        data = {k: v for k, v in ev.items() if k != "type"}
        assert set(data["fields"]) <= {"s", "c", "st", "i", "n", "ua", "md", "pr", "cr"}
        shaped = event_types.shape(ev["type"], data)
        stored = codec.enrollment(e.id, await raw(s, e.id))
        assert shaped["enrollment"] == msgspec.to_builtins(stored)
        for key, value in extra.items():
            assert shaped[key] == value, key
        return shaped

    async def sent(at: int, item: Claimed, step: int, **extra: object) -> None:
        if path == "general":
            await s.enrollments.transition(TENANT, e.id, "pause", "manual")
        c = {e.id: item.enrollment} if built else None
        outcome = settle(e.id, item.enrollment.token, step, at, "sent", wait=10, **extra)
        done = await advance(s, sh, at, outcome, claimed=c)
        assert (done.applied, done.late) == ((0, 1) if path == "general" else (1, 0))
        if path == "general":
            assert (await events(s, sh))[-1]["fields"]["st"] == "paused"

    item = (await claim(s, sh, due)).items[0]
    assert item.enrollment.attempts is None and item.enrollment.status == "active"
    at = due + 5
    odd = 'SM"1\\é'
    await sent(at, item, 0, provider_id=odd)
    await check(at, provider_id=odd, step=0, kind="sms", sent_at=to_rfc3339(at))
    at += 10
    if path == "general":
        await s.enrollments.transition(TENANT, e.id, "resume", "")
        at = max(at, int(await due_score(s, e.id) or 0))
    item = (await claim(s, sh, at)).items[0]
    await sent(at, item, 1)
    await check(at, provider_id=None, step=1)
    if path == "general":
        return  # (a skipped step is only ever recorded while its claim holds)
    item = (await claim(s, sh, at + 10)).items[0]
    at += 10
    skip = settled(
        id=e.id,
        token=item.enrollment.token,
        step=2,
        kind="email",
        at=at,
        outcome="skipped",
        reason="suppressed",
        wait=10,
    )
    await advance(s, sh, at, skip, claimed={e.id: item.enrollment} if built else None)
    shaped = await check(at, reason="suppressed", step=2, kind="email")
    assert (await events(s, sh))[-1]["type"] == "sequence.step.skipped"
    assert shaped["enrollment"]["current_step"] == 3 and shaped["enrollment"]["metadata"] == {
        "source": "test"
    }


async def test_python_built_step_events_equal_the_scripts(any_store: Store) -> None:
    """The same outcomes, advanced with and without the claimed fields, write the same
    event data and the same hash (the built path writes `sm` on every SMS step, the script
    on the first only: the same value)."""
    s = any_store
    seq = await sequence(s, sms(), email(wait=1), sms(wait=1))
    es = await enroll(s, seq, await contacts(s, 12), {"source": "x", "n": 1})
    sh = max(range(s.shards), key=lambda k: sum(shard(s, e.id) == k for e in es))
    mine = [e for e in es if shard(s, e.id) == sh][:2]
    assert len(mine) == 2
    due = max([int((await raw(s, e.id))["n"]) for e in mine])
    got = {c.id: c for c in (await claim(s, sh, due)).items}
    at = due + 7

    async def step(outcome: str, **extra: object) -> list[tuple[dict[str, object], dict[str, str]]]:
        out = []
        for n, e in enumerate(mine):
            c = got[e.id]
            item = settle(e.id, c.enrollment.token, int(c.enrollment.index), at, outcome, **extra)
            await advance(s, sh, at, item, claimed={e.id: c.enrollment} if n else None)
            ev = (await events(s, sh))[-1]
            h = await raw(s, e.id)
            # Two enrollments of two contacts: all else must be equal.
            assert ev.pop("id") == e.id and ev["fields"].pop("c") == h.pop("c") == e.contact_id
            out.append((ev, h))
        return out

    for outcome, extra in (
        ("sent", {"provider_id": 'S"M\\1', "wait": 60_000}),
        ("skipped", {"reason": "suppressed", "wait": 60_000}),
        ("sent", {"wait": 60_000}),
    ):
        (script, hs), (python, hp) = await step(outcome, **extra)
        assert (python, hp) == (script, hs)
        due = at + 60_000
        got = {c.id: c for c in (await claim(s, sh, due)).items}
        at = due + 7


@pytest.mark.parametrize("built", [False, True], ids=["script-built", "python-built"])
async def test_advance_of_an_enrollment_whose_hash_is_gone_writes_nothing(
    any_store: Store, built: bool
) -> None:
    """A hash deleted by hand under a claim: reported stale, not recreated, no script error,
    no event (the Python-built path writes without reading first, and undoes it)."""
    s = any_store
    _seq, e, sh, due = await one(s)
    item = (await claim(s, sh, due)).items[0]
    await s.client.delete(s.keys.enrollment(sh, e.id))
    before = await events(s, sh)
    c = {e.id: item.enrollment} if built else None
    for outcome, extra in (("sent", {"wait": 5}), ("retry", {"delay": 5, "error": "503"})):
        done = await advance(
            s, sh, due, settle(e.id, item.enrollment.token, 0, due, outcome, **extra), claimed=c
        )
        assert done.stale == [e.id]
    assert await raw(s, e.id) == {}
    assert await events(s, sh) == before


async def test_a_call_that_repeats_an_item_advances_it_once(any_store: Store) -> None:
    # advance defers its fast path's ZADDs only while a call's ids are distinct: the same
    # item twice must find the token gone the second time, not move the step twice.
    s = any_store
    _seq, e, sh, due = await one(s, sms(), sms(wait=10), sms(wait=10))
    item = (await claim(s, sh, due)).items[0]
    sent = settle(e.id, item.enrollment.token, 0, due, "sent", wait=10)
    for claimed in (None, {e.id: item.enrollment}):
        done = await advance(s, sh, due, sent, sent, claimed=claimed)
        assert (done.applied, done.stale) == ((1, [e.id]) if claimed is None else (0, [e.id, e.id]))
    assert (await raw(s, e.id))["i"] == "1"
    assert await due_score(s, e.id) == due + 10


async def test_advance_ignores_a_stale_token_and_reports_it(any_store: Store) -> None:
    s = any_store
    _seq, e, sh, due = await one(s)
    first = (await claim(s, sh, due)).items[0]
    second = (await claim(s, sh, due + LEASE)).items[0]  # the first worker's lease passed
    done = await advance(
        s, sh, due + LEASE, settle(e.id, first.enrollment.token, 0, due, "sent", wait=5)
    )
    assert (done.applied, done.stale) == (0, [e.id])
    assert (await raw(s, e.id))["i"] == "0"
    done = await advance(
        s, sh, due + LEASE, settle(e.id, second.enrollment.token, 0, due + LEASE, "sent", wait=5)
    )
    assert done.applied == 1
    assert (await raw(s, e.id))["i"] == "1"


@pytest.mark.parametrize("built", [False, True], ids=["script-built", "python-built"])
async def test_a_send_that_raced_a_pause_is_still_recorded(any_store: Store, built: bool) -> None:
    s = any_store
    _seq, e, sh, due = await one(s)
    item = (await claim(s, sh, due)).items[0]
    await s.enrollments.transition(TENANT, e.id, "pause", "reply_received")
    done = await advance(
        s,
        sh,
        due + 5,
        settle(e.id, item.enrollment.token, 0, due + 5, "sent", provider_id="SM9", wait=600_000),
        claimed={e.id: item.enrollment} if built else None,
    )
    assert (done.applied, done.late, done.stale) == (0, 1, [])
    h = await raw(s, e.id)
    assert h["st"] == "paused" and h["i"] == "1" and h["p0"] == "SM9" and h["sm"] == "1"
    assert h["n"] == str(due + 5 + 600_000)
    (sent,) = [ev for ev in await events(s, sh) if ev["type"] == "sequence.step.sent"]
    assert sent["sent_at"] == due + 5 and sent["provider_id"] == "SM9"
    assert await due_score(s, e.id) is None
    # A retry outcome racing the pause changes nothing.
    done = await advance(
        s, sh, due + 5, settle(e.id, item.enrollment.token, 1, due + 5, "retry", delay=1)
    )
    assert done.stale == [e.id]


async def test_passed_steps_of_several_groups_are_each_judged_by_their_own_score(
    any_store: Store,
) -> None:
    # advance reads the passed steps' scores per group (one ZMSCORE per claim): steps of two
    # groups interleaved, the first one's claim taken by a pause, must each get their own.
    s = any_store
    seq = await sequence(s, sms(), sms(wait=10))
    a, b, c = (e.id for e in await enroll(s, seq, await contacts_in_shard(s, 3)))
    due = int((await raw(s, a))["n"])
    batch = await claim(s, 0, due)
    claimed = {item.id: item.enrollment for item in batch.items}
    token = claimed[a].token
    await s.enrollments.transition(TENANT, a, "pause", "reply_received")
    done = await advance(
        s,
        0,
        due + 5,
        settle(a, token, 0, due + 5, "sent", provider_id="SMa", wait=10),
        settle(b, token, 0, due + 5, "skipped", reason="no_phone", wait=10),
        settle(c, token, 0, due + 5, "sent", provider_id="SMc", wait=10),
        claimed=claimed,
    )
    assert (done.applied, done.late, done.stale) == (2, 1, [])
    assert await due_score(s, a) is None and (await raw(s, a))["st"] == "paused"
    assert await due_score(s, b) == await due_score(s, c) == due + 15
    assert [(await raw(s, eid)).get("p0") for eid in (a, b, c)] == ["SMa", None, "SMc"]


async def command_calls(store: Store) -> dict[str, int]:
    """Commands run so far on the session's valkey-server, the scripts' own included."""
    got = await store.client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in got.items()}


async def test_passed_steps_are_judged_with_one_score_read_per_group(store: Store) -> None:
    # The claims of a call's passed steps are read per group, one ZMSCORE for all of its
    # steps, not a ZSCORE per step (valkey's cost per step is what bounds a burst); the
    # steps whose claim was taken are still told apart.
    s = store
    seq = await sequence(s, sms(), sms(wait=10))
    eids = [e.id for e in await enroll(s, seq, await contacts_in_shard(s, 5))]
    due = int((await raw(s, eids[0]))["n"])
    batch = await claim(s, 0, due)
    claimed = {item.id: item.enrollment for item in batch.items}
    token = claimed[eids[0]].token
    await s.enrollments.transition(TENANT, eids[1], "pause", "reply_received")
    before = await command_calls(s)
    done = await advance(
        s,
        0,
        due + 5,
        *(settle(eid, token, 0, due + 5, "sent", provider_id="SM", wait=10) for eid in eids),
        claimed=claimed,
    )
    after = await command_calls(s)
    assert (done.applied, done.late, done.stale) == (4, 1, [])
    assert after.get("zmscore", 0) - before.get("zmscore", 0) == 1
    assert after.get("zscore", 0) - before.get("zscore", 0) == 0
    assert [await due_score(s, eid) for eid in eids] == [
        due + 15,
        None,
        due + 15,
        due + 15,
        due + 15,
    ]


@pytest.mark.parametrize("built", [False, True], ids=["script-built", "python-built"])
async def test_a_sticky_pin_is_written_with_its_steps_outcome(
    any_store: Store, built: bool
) -> None:
    # The sender a sticky rotation picked goes in the kind's field (`ys` for SMS) in the
    # step's own advance, whatever came of the send; a step without a pin leaves it alone.
    s = any_store
    seq = await sequence(s, sms(), sms(wait=10))
    a, b, c, d = (e.id for e in await enroll(s, seq, await contacts_in_shard(s, 4)))
    due = int((await raw(s, a))["n"])
    batch = await claim(s, 0, due)
    claimed = {item.id: item.enrollment for item in batch.items}
    token = claimed[a].token
    at = due + 5
    done = await advance(
        s,
        0,
        at,
        settle(a, token, 0, at, "sent", provider_id="SMa", wait=10, pin="snd_x"),
        settle(b, token, 0, at, "sent", provider_id="SMb", wait=10, pin="snd_y"),
        settle(c, token, 0, at, "sent", provider_id="SMc", wait=10),
        settle(d, token, 0, at, "retry", error="503", delay=5, pin="snd_x"),
        claimed=claimed if built else None,
    )
    assert (done.applied, done.late, done.stale) == (4, 0, [])
    stored = [await raw(s, eid) for eid in (a, b, c, d)]
    assert [h.get("ys") for h in stored] == ["snd_x", "snd_y", None, "snd_x"]
    assert [h["i"] for h in stored] == ["1", "1", "1", "0"]
    assert [h.get("p0") for h in stored] == ["SMa", "SMb", "SMc", None]
    # A send whose claim was taken meanwhile (stale) still pins: the provider may have it.
    _seq, e, sh, due = await one(s)
    first = (await claim(s, sh, due)).items[0]
    await claim(s, sh, due + LEASE)
    done = await advance(
        s,
        sh,
        due + LEASE,
        settle(e.id, first.enrollment.token, 0, due, "sent", wait=5, pin="snd_z"),
        claimed={e.id: first.enrollment} if built else None,
    )
    assert done.stale == [e.id]
    assert (await raw(s, e.id))["ys"] == "snd_z"


async def test_advance_retry_backs_off_then_fails_when_attempts_run_out(any_store: Store) -> None:
    s = any_store
    _seq, e, sh, due = await one(s)
    now = due
    for attempt in (1, 2):
        item = (await claim(s, sh, now)).items[0]
        await advance(
            s,
            sh,
            now,
            settle(e.id, item.enrollment.token, 0, now, "retry", error="503", delay=30_000),
        )
        assert (await raw(s, e.id))["a"] == str(attempt)
        assert await due_score(s, e.id) == now + 30_000
        ev = (await events(s, sh))[-1]
        assert ev["type"] == "sequence.step.failed" and ev["retrying"] is True
        assert ev["attempts"] == attempt and ev["error"] == "503"
        now += 30_000
    item = (await claim(s, sh, now)).items[0]
    await advance(
        s, sh, now, settle(e.id, item.enrollment.token, 0, now, "retry", error="503", delay=30_000)
    )
    h = await raw(s, e.id)
    assert h["st"] == "cancelled" and h["cr"] == "failed"
    failed, cancelled = (await events(s, sh))[-2:]
    assert failed["type"] == "sequence.step.failed" and failed["retrying"] is False
    assert cancelled["cancel_reason"] == "failed" and cancelled["error"] == "503"


async def test_advance_permanent_failure_cancels(any_store: Store) -> None:
    s = any_store
    _seq, e, sh, due = await one(s)
    item = (await claim(s, sh, due)).items[0]
    await advance(
        s,
        sh,
        due,
        settle(e.id, item.enrollment.token, 0, due, "failed", error="twilio 400 code 21211"),
    )
    h = await raw(s, e.id)
    assert h["st"] == "cancelled" and h["cr"] == "failed"
    assert await due_score(s, e.id) is None
    assert (await events(s, sh))[-1]["error"] == "twilio 400 code 21211"


async def test_advance_pause_names_the_missing_variable(any_store: Store) -> None:
    s = any_store
    _seq, e, sh, due = await one(s)
    item = (await claim(s, sh, due)).items[0]
    await advance(
        s,
        sh,
        due,
        settle(
            e.id,
            item.enrollment.token,
            0,
            due,
            "pause",
            reason="missing_variable",
            variable="first_name",
        ),
    )
    h = await raw(s, e.id)
    assert h["st"] == "paused" and h["pr"] == "missing_variable"
    ev = (await events(s, sh))[-1]
    assert ev["type"] == "sequence.enrollment.paused"
    assert ev["paused_reason"] == "missing_variable" and ev["variable"] == "first_name"


async def test_advance_skip_cancel_complete(any_store: Store) -> None:
    s = any_store
    _, e, sh, due = await one(s, sms(), email(wait=3))
    item = (await claim(s, sh, due)).items[0]
    await advance(
        s,
        sh,
        due,
        settle(e.id, item.enrollment.token, 0, due, "skipped", reason="suppressed", wait=180_000),
    )
    h = await raw(s, e.id)
    assert h["i"] == "1" and "sm" not in h and "p0" not in h
    assert await due_score(s, e.id) == due + 180_000
    assert (await events(s, sh))[-1]["type"] == "sequence.step.skipped"
    item = (await claim(s, sh, due + 180_000)).items[0]
    await advance(
        s, sh, due, settle(e.id, item.enrollment.token, 1, due, "cancel", reason="bounced")
    )
    h = await raw(s, e.id)
    assert h["st"] == "cancelled" and h["cr"] == "bounced"

    _seq, e, sh, due = await one(s, sms())
    item = (await claim(s, sh, due)).items[0]
    await advance(s, sh, due, settle(e.id, item.enrollment.token, 0, due, "complete"))
    assert (await raw(s, e.id))["st"] == "completed"


async def test_advance_release_makes_the_step_due_now(any_store: Store) -> None:
    s = any_store
    _seq, e, sh, due = await one(s)
    item = (await claim(s, sh, due)).items[0]
    now = due + 10
    await advance(s, sh, now, settle(e.id, item.enrollment.token, 0, now, "release", started=False))
    h = await raw(s, e.id)
    assert h["st"] == "active" and h["i"] == "0" and h.get("a", "0") == "0"
    assert await due_score(s, e.id) == now
    # Released and not started: claimed again as a fresh step, no attempt counted.
    item = (await claim(s, sh, now)).items[0]
    assert (item.enrollment.attempts or "0") == "0"
    await advance(s, sh, now, settle(e.id, item.enrollment.token, 0, now, "release", started=True))
    # A started send may have reached the provider: due now, still an unsettled claim,
    # so the next claim counts it as an attempt (resend) or holds it.
    assert await due_score(s, e.id) == now - 0.5
    assert (await claim(s, sh, now + 1)).items[0].enrollment.attempts == "1"
    # The released claim's token no longer applies.
    done = await advance(s, sh, now, settle(e.id, item.enrollment.token, 0, now, "sent", wait=5))
    assert done.stale == [e.id]


async def test_advance_rejects_malformed_items_and_writes_nothing(any_store: Store) -> None:
    s = any_store
    _seq, e, sh, due = await one(s)
    item = (await claim(s, sh, due)).items[0]
    keys = [s.keys.heads(sh), s.keys.outbox(sh)]
    tag = s.keys.shard_tag(sh)
    good = {
        "id": e.id,
        "token": item.enrollment.token,
        "step": 0,
        "kind": "sms",
        "at": due,
        "outcome": "sent",
        "wait": 5,
    }
    bad = [
        "not json",
        json.dumps({"id": e.id}),
        json.dumps([good, {**good, "outcome": "exploded"}]),
        json.dumps([good, {**good, "wait": None}]),
        json.dumps([good, 7]),
    ]
    for text in bad:
        with pytest.raises(ScriptError) as info:
            await s.runner.call("advance", keys, [tag, due, 3, text], tag=tag)
        assert info.value.code == "BAD_ITEMS"
    # Passed steps: their groups (PASSED_GROUP) as JSON, then five values each (PASSED_STEP).
    group = [
        item.enrollment.token,
        item.enrollment.sequence,
        0,
        "sms",
        "sent",
        item.enrollment.tenant,
        "",
        5,
    ]
    step = [e.id, 1, due + 5, "", json.dumps({"id": e.id})]
    groups = json.dumps([group])

    def grouped(g: list[object]) -> str:
        return json.dumps([g])

    bad_passed: list[tuple[str, list[object]]] = [
        ("not json", step),
        (json.dumps({"g": [group]}), step),  # groups not an array
        (groups, step[:4]),  # no event
        (groups, [*step, e.id]),  # a value too many
        (groups, [*step[:4], ""]),  # an empty event
        (groups, ["", *step[1:]]),  # no id
        (groups, [e.id, 2, *step[2:]]),  # no such group
        (groups, [e.id, "first", *step[2:]]),  # a group not a number
        (groups, [e.id, 1, "soon", *step[3:]]),  # a due time not a number
        (groups, [e.id, 1, due + 5.5, *step[3:]]),  # a due time not a whole ms
        (grouped([*group[:2], "0", *group[3:]]), step),  # the step as text
        (grouped([*group[:4], "failed", *group[5:]]), step),  # not sent or skipped
        (grouped([*group[:5], "", *group[6:]]), step),  # no tenant
        (grouped([*group[:7], -1]), step),  # the last step's wait
        (grouped(group[:7]), step),  # no wait
        (grouped([*group, "", 7]), step),  # a pin not text
        (grouped([*group, "", ""]), step),  # an empty pin
    ]
    for text, values in bad_passed:
        with pytest.raises(ScriptError) as info:
            await s.runner.call("advance", keys, [tag, due, 3, "[]", text, *values], tag=tag)
        assert info.value.code == "BAD_ITEMS", (text, values)
    assert (await raw(s, e.id))["i"] == "0"
    assert await due_score(s, e.id) == due + LEASE - 0.5
    # The same values, well formed, are applied.
    await s.runner.call("advance", keys, [tag, due, 3, "[]", groups, *step], tag=tag)
    assert (await raw(s, e.id))["i"] == "1"
    assert await due_score(s, e.id) == due + 5


async def test_enrollment_without_token_attempts_or_updated_at_reads_as_their_defaults(
    any_store: Store,
) -> None:
    # `k`, `a` and `ua` cost memory on every active enrollment: absent, they read as 0, 0
    # and `ea`, and the dispatch scripts write `a` back only where a retry left some.
    s = any_store
    _seq, e, sh, due = await one(s, sms(), sms(wait=10), sms(wait=10))
    await s.client.hdel(s.keys.enrollment(sh, e.id), "k", "a", "ua")
    item = (await claim(s, sh, due)).items[0]
    assert item.enrollment.attempts is None
    at = due + 5
    await advance(s, sh, at, settle(e.id, item.enrollment.token, 0, at, "sent", wait=600_000))
    h = await raw(s, e.id)
    assert h["i"] == "1" and "a" not in h and h["ua"] == str(at)
    sent = (await events(s, sh))[-1]
    assert sent["type"] == "sequence.step.sent" and "a" not in sent["fields"]
    # A retry counts an attempt; the next step's send resets it to 0.
    at += 600_000
    item = (await claim(s, sh, at)).items[0]
    await advance(
        s, sh, at, settle(e.id, item.enrollment.token, 1, at, "retry", error="503", delay=5)
    )
    assert (await raw(s, e.id))["a"] == "1"
    item = (await claim(s, sh, at + 5)).items[0]
    await advance(s, sh, at + 5, settle(e.id, item.enrollment.token, 1, at + 5, "sent", wait=0))
    assert (await raw(s, e.id))["a"] == "0"
    # A step that fails for good reports its attempts even when none were counted.
    _seq, e, sh, due = await one(s)
    await s.client.hdel(s.keys.enrollment(sh, e.id), "k", "a", "ua")
    item = (await claim(s, sh, due)).items[0]
    await advance(
        s, sh, due, settle(e.id, item.enrollment.token, 0, due, "failed", error="bad number")
    )
    failed = [ev for ev in await events(s, sh) if ev["type"] == "sequence.step.failed"]
    assert failed[-1]["attempts"] == 0 and failed[-1]["retrying"] is False
    assert (await s.enrollments.get(TENANT, e.id)).updated_at is not None


async def test_claim_reads_only_the_contact_fields_the_sequences_messages_use(
    any_store: Store,
) -> None:
    s = any_store
    full = {"last_name": "Lovelace", "timezone": "Europe/London"}
    attributes = {"attributes": {"company": "Acme"}}
    _seq, _e, sh, due = await one(s, **full, **attributes, external_id="x1")
    item = (await claim(s, sh, due)).items[0]
    # The steps send SMS and name first_name: the owner, the phone, first_name, and the
    # zone SMS quiet hours are read in.
    assert item.contact == {
        "tenant": TENANT,
        "first_name": "n0",
        "phone": item.contact["phone"],
        "timezone": "Europe/London",
    }
    _seq, _e, sh, due = await one(
        s, email("For {{attributes.company}}", "Dear {{last_name|you}}"), **full, **attributes
    )
    item = (await claim(s, sh, due)).items[0]
    assert set(item.contact) == {"tenant", "email", "attributes", "last_name"}
    assert (
        item.contact["last_name"] == "Lovelace"
        and json.loads(item.contact["attributes"])["company"]
    )
    # Unset fields are absent, and the contact's bookkeeping fields are never read.
    _seq, _e, sh, due = await one(s, sms("{{first_name}} {{last_name|x}}"), last_name=None)
    item = (await claim(s, sh, due)).items[0]
    assert set(item.contact) == {"tenant", "first_name", "phone"}


async def test_without_fields_of_the_mirrors_version_every_field_a_message_can_use_is_read(
    any_store: Store,
) -> None:
    # A seqd from before the `sf` fields writes none, and one of them sharing the store may
    # write a newer mirror beside fields of an older version: those fields are not used.
    s = any_store
    seq, _e, sh, due = await one(s, last_name="Lovelace", timezone="Europe/London")
    fields = s.keys.sequence_fields(sh)
    assert await s.client.hget(fields, seq.id) == "1:tenant,first_name,phone,timezone"
    await s.client.hset(s.keys.mirrors(sh), seq.id, f"active:2:{len(seq.steps)}")
    for state in ("fields of an older version", "no fields"):
        (item,) = (await claim(s, sh, due)).items
        assert (
            item.contact["last_name"] == "Lovelace" and item.contact["timezone"] == "Europe/London"
        )
        assert item.contact["email"] and item.contact["first_name"] == "n0", state
        assert not any(f.startswith("e:") for f in item.contact)
        assert "created_at" not in item.contact
        await Dispatch(s).release(
            [(item.id, item.enrollment.token, item.enrollment.sequence)], now=due
        )
        await s.client.hdel(fields, seq.id)


async def two_in_a_shard(s: Store) -> tuple[list[str], int, int]:
    """Two enrollments due at the same ms in shard 0: (ids, shard, due)."""
    seq = await sequence(s, sms(), sms(wait=10))
    enrolled = await enroll(s, seq, await contacts_in_shard(s, 2))
    eids = [e.id for e in enrolled]
    assert {shard(s, eid) for eid in eids} == {0}
    due = int((await raw(s, eids[0]))["n"])
    return eids, 0, due


async def test_a_trip_settles_one_batch_leases_the_next_and_peeks_at_the_one_after(
    any_store: Store,
) -> None:
    s = any_store
    eids, sh, due = await two_in_a_shard(s)
    first = (await claim(s, sh, due, limit=1)).items[0]
    (second,) = [i for i in (await peek(s, sh, due)).items if i.id != first.id]
    sent = settle(first.id, first.enrollment.token, 0, due + 1, "sent", provider_id="SM1", wait=10)
    calls = []
    real = s.runner.call_many

    async def counted(batch, reads=()):  # type: ignore[no-untyped-def]
        calls.append(([name for name, *_ in batch], [r[0] for r in reads]))
        return await real(batch, reads)

    s.runner.call_many = counted  # type: ignore[method-assign]
    await s.client.hset(s.keys.suppressions(TENANT, "sms"), "+15550000001", '{"reason": "x"}')
    lookups = {(TENANT, "sms"): ["+15550000001", "+15550000002"]}
    seq = second.enrollment.sequence
    mirror = await s.client.hget(s.keys.mirrors(sh), seq)
    trip = Dispatch(s).trip(now=due + 1, max_attempts=3)
    advanced = trip.advance({sh: [sent]}, {first.id: first.enrollment})
    leased = trip.lease(
        {sh: {seq: (mirror, [(second.id, second.enrollment.token)])}},
        lease_ms=LEASE,
        worker=WORKER,
        lookups=lookups,
    )
    peeked = trip.peek([sh], now=due + 1, limit=10, on_unknown="resend")
    await trip.run()
    # The advance runs first, then the lease, then the peek, then the suppression reads:
    # one pipeline.
    assert calls == [(["advance", "leasePeeked", "claimDue"], ["HMGET"])]
    assert (advanced.done[sh].applied, advanced.done[sh].stale) == (1, [])
    assert (await raw(s, first.id))["i"] == "1"
    assert list(leased.found) == [(TENANT, "sms")]
    assert list(leased.found[(TENANT, "sms")]) == ["+15550000001"]
    assert leased.found[(TENANT, "sms")]["+15550000001"].reason == "x"
    assert leased.leased[sh].lost == [] and second.id in eids
    assert await due_score(s, second.id) == due + 1 + LEASE - 0.5
    # The peek ran after the lease: nothing of the shard is due now.
    assert peeked.claims[sh].items == []


async def peek(store: Store, sh: int, at: int, on_unknown: str = "resend") -> ClaimBatch:
    """claimDue (it only reads), as the dispatcher calls it."""
    return await peek_at(store, sh, at, limit=10, on_unknown=on_unknown)


async def lease_peeked(
    store: Store, sh: int, at: int, batch: ClaimBatch, members: list[tuple[str, str]]
) -> Leased:
    """leasePeeked of `members` (id, score as peeked) of the one sequence of `batch`."""
    (seq,) = batch.m
    trip = Dispatch(store).trip(now=at, max_attempts=3)
    handle = trip.lease({sh: {seq: (batch.m[seq], members)}}, lease_ms=LEASE, worker=WORKER)
    await trip.run()
    return handle.leased[sh]


async def test_a_peek_leases_nothing_and_its_lease_takes_only_what_did_not_change(
    any_store: Store,
) -> None:
    # The dispatcher peeks at a batch ahead of its send (nothing written: a worker that
    # dies holding it left nothing to undo) and leases it in the round trip before the
    # send, only where the member's score is still the one the peek saw.
    s = any_store
    eids, sh, due = await two_in_a_shard(s)
    batch = await peek(s, sh, due, "hold")
    items = batch.items
    assert {i.id for i in items} == set(eids)
    assert {i.enrollment.token for i in items} == {str(due)}
    assert [await due_score(s, eid) for eid in eids] == [due, due]
    # A peek twice sees the same (nothing moved), and a claim still takes them.
    assert {i.id for i in (await peek(s, sh, due, "hold")).items} == set(eids)
    # One of them is paused meanwhile: the lease takes the other and reports it.
    paused, kept = items[0].id, items[1].id
    await s.enrollments.transition(TENANT, paused, "pause", "reply_received")
    members = [(i.id, i.enrollment.token) for i in items]
    token, lost, _ = await lease_peeked(s, sh, due + 5, batch, members)
    assert lost == [paused] and token == f"{due + 5 + LEASE - 1}.5"
    assert await due_score(s, kept) == due + 5 + LEASE - 0.5
    assert await due_score(s, paused) is None
    # A second lease of the same peek (another worker's) finds the score changed.
    again = await lease_peeked(s, sh, due + 6, batch, members)
    assert sorted(again.lost) == sorted([paused, kept])
    assert await due_score(s, kept) == due + 5 + LEASE - 0.5
    # Once its sends start, the lease is a send that may have happened: one that runs out
    # is held.
    await Dispatch(s).started({sh: [token]})
    assert (await claim(s, sh, due + 5 + LEASE, on_unknown="hold")).items == []
    assert (await raw(s, kept))["st"] == "paused"
    assert (await raw(s, kept))["pr"] == "delivery_unknown"


async def test_a_lease_takes_nothing_of_a_sequence_changed_since_the_peek(
    any_store: Store,
) -> None:
    s = any_store
    eids, sh, due = await two_in_a_shard(s)
    batch = await peek(s, sh, due)
    members = [(i.id, i.enrollment.token) for i in batch.items]
    await s.sequences.change(
        TENANT, batch.items[0].enrollment.sequence, status=models.SequenceStatus.PAUSED
    )
    leased = await lease_peeked(s, sh, due + 1, batch, members)
    assert sorted(leased.lost) == sorted(eids)
    assert [await due_score(s, eid) for eid in eids] == [due, due]


async def test_a_lease_of_changed_scores_takes_each_member_on_its_own(any_store: Store) -> None:
    # Where the scores differ from the peek's (the fast path compares them as one text),
    # each member is compared on its own: the unchanged one is leased.
    s = any_store
    _, sh, due = await two_in_a_shard(s)
    batch = await peek(s, sh, due)
    members = [(i.id, i.enrollment.token) for i in batch.items]
    moved = members[0][0]
    await s.client.zadd(s.keys.queue(sh, batch.items[0].enrollment.sequence), {moved: due - 7})
    # A score spelled another way (as a float) is the same number: leased.
    members[1] = (members[1][0], f"{due}.0")
    token, lost, _ = await lease_peeked(s, sh, due + 1, batch, members)
    assert lost == [moved]
    assert await due_score(s, members[1][0]) == float(token)
    assert await due_score(s, moved) == due - 7


@pytest.mark.parametrize(
    "args",
    [
        ["seq_x", "m"],  # no count
        ["seq_x", "m", "two", ""],  # not a number
        ["seq_x", "m", "2", "1,2", "enr_a"],  # one id short
        ["seq_x", "m", "-1", ""],
    ],
)
async def test_lease_peeked_refuses_malformed_groups_and_writes_nothing(
    any_store: Store, args: list[str]
) -> None:
    s = any_store
    sh = 0
    tag = s.keys.shard_tag(sh)
    keys = [s.keys.heads(sh), s.keys.outbox(sh), s.keys.mirrors(sh)]
    with pytest.raises(ScriptError) as err:
        await s.runner.call("leasePeeked", keys, [tag, 1000, LEASE, 3, WORKER, *args], tag=tag)
    assert err.value.code == "BAD_ITEMS"
    assert await s.client.exists(s.keys.queue(sh, "seq_x")) == 0


async def test_a_failed_advance_releases_what_its_round_trip_leased(any_store: Store) -> None:
    # The lease of a peeked batch that went with a failed advance is given back at once:
    # nothing of it was sent, and a lease left to run out would read as a send that may
    # have happened.
    s = any_store
    eids, sh, due = await two_in_a_shard(s)
    first = (await claim(s, sh, due, limit=1)).items[0]
    peeked = await peek(s, sh, due, "hold")
    (other,) = peeked.items
    seq = other.enrollment.sequence
    broken = Sent(id=first.id, token=first.enrollment.token, step=0, kind="sms", at=due, wait=None)  # type: ignore[arg-type]
    trip = Dispatch(s).trip(now=due + 1, max_attempts=3)
    trip.advance({sh: [broken]})
    members = [(other.id, other.enrollment.token)]
    trip.lease({sh: {seq: (peeked.m[seq], members)}}, lease_ms=LEASE, worker=WORKER)
    with pytest.raises(ScriptError):
        await trip.run()
    assert other.id in eids and await due_score(s, other.id) == due + 1
    (again,) = (await claim(s, sh, due + 1, limit=10, on_unknown="hold")).items
    assert again.id == other.id and (again.enrollment.attempts or "0") == "0"


@pytest.mark.parametrize("on_unknown", ["resend", "hold"])
async def test_a_lease_that_ran_out_has_its_attempt_counted_when_leased_not_when_peeked(
    any_store: Store, on_unknown: str
) -> None:
    # A lease that ran out is a send that may have happened. With hold, a peek pauses it as
    # a claim does. With resend, a peek leaves it as it is (a peek may come to nothing: a
    # worker that dies holding it must not have used up an attempt), and the lease right
    # before its send counts the attempt, once, and says so.
    s = any_store
    _, e, sh, due = await one(s)
    await claim(s, sh, due)
    later = due + LEASE
    await Dispatch(s).reclaim(later)  # its sends had started: a send that may have happened
    batch = await peek(s, sh, later, on_unknown)
    if on_unknown == "hold":
        assert batch.items == []
        assert (await raw(s, e.id))["pr"] == "delivery_unknown"
        return
    (item,) = batch.items
    assert (
        item.enrollment.token == f"{due + LEASE - 1}.5" and (item.enrollment.attempts or "0") == "0"
    )
    assert (await peek(s, sh, later + 1)).items[0].id == e.id  # again: nothing counted
    assert (await raw(s, e.id)).get("a", "0") == "0"
    leased = await lease_peeked(s, sh, later + 2, batch, [(item.id, item.enrollment.token)])
    assert leased == (f"{later + 2 + LEASE - 1}.5", [], {e.id: "1"})
    assert (await raw(s, e.id))["a"] == "1"
    assert await due_score(s, e.id) == later + 2 + LEASE - 0.5


async def test_a_lease_that_ran_out_with_attempts_used_up_is_cancelled_by_the_lease(
    any_store: Store,
) -> None:
    s = any_store
    _, e, sh, due = await one(s)
    await claim(s, sh, due)
    await s.client.hset(s.keys.enrollment(sh, e.id), "a", "2")
    later = due + LEASE
    await Dispatch(s).reclaim(later)
    batch = await peek(s, sh, later)
    (item,) = batch.items
    leased = await lease_peeked(s, sh, later + 1, batch, [(item.id, item.enrollment.token)])
    assert leased.lost == [e.id]
    h = await raw(s, e.id)
    assert (h["st"], h["cr"], h["a"]) == ("cancelled", "failed", "3")
    assert await due_score(s, e.id) is None
    failed = [ev for ev in await events(s) if ev["type"] == "sequence.step.failed"]
    assert failed and "attempts exhausted" in failed[-1]["error"]


async def test_a_failed_advance_leaves_what_its_round_trip_only_peeked_at(
    any_store: Store,
) -> None:
    # A peek leased nothing, so a failed trip gives nothing of it back: a lease run out
    # that the peek saw stays one (a send that may have happened), not made a fresh step.
    s = any_store
    _, e, sh, due = await one(s)
    first = (await claim(s, sh, due)).items[0]
    later = due + LEASE
    broken = Sent(id=first.id, token=first.enrollment.token, step=0, kind="sms", at=due, wait=None)  # type: ignore[arg-type]
    trip = Dispatch(s).trip(now=later, max_attempts=3)
    trip.advance({sh: [broken]})
    trip.peek([sh], now=later, limit=10, on_unknown="resend")
    with pytest.raises(ScriptError):
        await trip.run()
    assert await due_score(s, e.id) == due + LEASE - 0.5
    assert (await raw(s, e.id)).get("a", "0") == "0"


async def test_a_failed_suppression_read_releases_what_its_round_trip_leased(
    any_store: Store,
) -> None:
    # The screening is read in the round trip that leases the batch: when it fails, the
    # lease is given back before the error goes on (no send may follow an unscreened lease).
    s = any_store
    eids, sh, due = await two_in_a_shard(s)
    batch = await peek(s, sh, due)
    seq = batch.items[0].enrollment.sequence
    await s.client.set(s.keys.suppressions(TENANT, "sms"), "not a hash")
    trip = Dispatch(s).trip(now=due + 1, max_attempts=3)
    trip.lease(
        {sh: {seq: (batch.m[seq], [(i.id, i.enrollment.token) for i in batch.items])}},
        lease_ms=LEASE,
        worker=WORKER,
        lookups={(TENANT, "sms"): ["+15550000001"]},
    )
    with pytest.raises(Exception, match="WRONGTYPE"):
        await trip.run()
    assert [await due_score(s, eid) for eid in eids] == [due + 1, due + 1]
    assert {(await raw(s, eid)).get("a", "0") for eid in eids} == {"0"}


# -- deferSteps: the batched deferral ----------------------------------------------------
def _defer(eid: str, token: str, at: int, until: int, zone: str | None = "phone:UTC") -> Settled:
    return settle(eid, token, 0, at, "defer", until=until, reason="quiet_hours", zone=zone)


async def test_deferred_steps_built_in_python_equal_advances_deferral(any_store: Store) -> None:
    """A peeked step deferred with its event built in Python (deferSteps) writes the same
    hash, queue score, head and event data as advance's general path; neither counts an
    attempt, and both are fenced by the score the peek saw."""
    s = any_store
    eids, sh, due = await two_in_a_shard(s)
    batch = await peek(s, sh, due)
    got = {c.id: c for c in batch.items}
    until = due + 3_600_000
    out = []
    for n, eid in enumerate(eids):
        item = _defer(eid, got[eid].enrollment.token, due + 3, until)
        done = await advance(
            s, sh, due + 3, item, claimed={eid: got[eid].enrollment} if n else None
        )
        assert (done.applied, done.stale) == (1, [])
        ev = (await events(s, sh))[-1]
        h = await raw(s, eid)
        assert ev.pop("id") == eid and ev["fields"].pop("c") == h.pop("c")
        assert h["dr"] == "0:quiet_hours" and h["z"] == "phone:UTC" and "a" not in h
        assert await due_score(s, eid) == until
        out.append((ev, h))
    assert out[0] == out[1]
    assert out[0][0]["until"] == until and out[0][0]["reason"] == "quiet_hours"
    # The head is a lower bound of the queue's first score.
    head = await s.client.zscore(s.keys.heads(sh), batch.items[0].enrollment.sequence)
    assert head is not None and head <= until
    # Both events went batched (an `items` entry): deferSteps' and advance's, which batches
    # every event of a call.
    entries = [
        "items" in fields
        for _, fields in await s.client.xrange(s.keys.outbox(sh))
        if fields["type"] == "sequence.step.deferred"
    ]
    assert entries == [True, True]


async def test_deferred_steps_moved_since_their_peek_are_left_alone(any_store: Store) -> None:
    s = any_store
    eids, sh, due = await two_in_a_shard(s)
    batch = await peek(s, sh, due)
    got = {c.id: c for c in batch.items}
    # Another process leases both after this peek.
    await lease_peeked(s, sh, due + 1, batch, [(c.id, c.enrollment.token) for c in batch.items])
    items = [_defer(eid, got[eid].enrollment.token, due + 2, due + 99_000) for eid in eids]
    done = await advance(s, sh, due + 2, *items, claimed={eid: got[eid].enrollment for eid in eids})
    assert done.applied == 0 and sorted(done.stale) == sorted(eids)
    for eid in eids:
        assert "dr" not in await raw(s, eid)
        assert await due_score(s, eid) == due + 1 + LEASE - 0.5


async def test_defer_steps_refuses_malformed_values_and_writes_nothing(any_store: Store) -> None:
    s = any_store
    _, sh, due = await two_in_a_shard(s)
    batch = await peek(s, sh, due)
    c = batch.items[0]
    keys = [s.keys.heads(sh), s.keys.outbox(sh)]
    tag = s.keys.shard_tag(sh)
    group = [c.enrollment.sequence, TENANT, 0, "window"]
    groups = json.dumps([group])
    step = [c.id, 1, c.enrollment.token, due + 60_000, "", json.dumps({"id": c.id})]
    bad: list[tuple[str, list[object]]] = [
        ("not json", step),
        (json.dumps({"g": [group]}), step),
        (groups, step[:5]),  # no event
        (groups, [*step[:5], ""]),  # an empty event
        (groups, ["", *step[1:]]),  # no id
        (groups, [c.id, 2, *step[2:]]),  # no such group
        (groups, [*step[:3], "soon", *step[4:]]),  # until not a number
        (groups, [*step[:3], due + 0.5, *step[4:]]),  # until not a whole ms
        (json.dumps([[*group[:3], ""]]), step),  # no reason
        (json.dumps([["", *group[1:]]]), step),  # no sequence
        (json.dumps([[*group[:2], "0", group[3]]]), step),  # the step as text
    ]
    for text, values in bad:
        with pytest.raises(ScriptError) as info:
            await s.runner.call("deferSteps", keys, [tag, due, text, *values], tag=tag)
        assert info.value.code == "BAD_ITEMS", (text, values)
    assert "dr" not in await raw(s, c.id) and await due_score(s, c.id) == due
    await s.runner.call("deferSteps", keys, [tag, due, groups, *step], tag=tag)
    assert (await raw(s, c.id))["dr"] == "0:window"
    assert await due_score(s, c.id) == due + 60_000
