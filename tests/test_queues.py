"""The sequence queues (schema 2): one entry per active enrollment that is both its place in
the time index and in the listing of active enrollments, found through the shard's heads.
On valkey and on fakeredis."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from seqd import ids, models
from seqd.api.pagination import encode_token
from seqd.store import migrate, sequences
from seqd.store.db import Store, connect
from seqd.store.dispatch import Dispatch
from seqd.store.keys import V1_PARKED, V1_SHARD_DUE
from tests.conftest import Api
from tests.dispatchutil import (
    TENANT,
    claim,
    contacts,
    contacts_in_shard,
    due_score,
    enroll,
    raw,
    sequence,
    settled,
    sms,
)

LEASE = 60_000
ALL = [s.value for s in models.EnrollmentStatus]


async def pages(store: Store, sid: str, limit: int, statuses: list[str]) -> list[list[str]]:
    """Every page of the listing, followed cursor by cursor."""
    out: list[list[str]] = []
    after = None
    while True:
        data, after, _ = await store.enrollments.list(
            TENANT, sid, limit=limit, after=after, statuses=statuses
        )
        out.append([e.id for e in data])
        if after is None:
            return out
        assert len(out) < 100


async def test_active_listing_pages_in_due_order_across_shards_and_ties(
    any_store: Store,
) -> None:
    s = any_store
    seq = await sequence(s, sms(), sms(wait=10))
    # One enroll call: every enrollment is due at the same ms (ties, in every shard).
    enrolled = await enroll(s, seq, await contacts(s, 12))
    due = int(await due_score(s, enrolled[0].id) or 0)
    assert len({ids.shard_of(e.id, s.shards) for e in enrolled}) > 1
    # Four are due a second earlier.
    for e in enrolled[8:]:
        sh = ids.shard_of(e.id, s.shards)
        await s.client.zadd(s.keys.queue(sh, seq.id), {e.id: due - 1000})
    expected = sorted((due - 1000 if e in enrolled[8:] else due, e.id) for e in enrolled)
    got = await pages(s, seq.id, 5, ["active"])
    assert [len(p) for p in got] == [5, 5, 2]
    assert [eid for page in got for eid in page] == [eid for _, eid in expected]
    _, _, total = await s.enrollments.list(TENANT, seq.id, limit=5, after=None, statuses=["active"])
    assert total == 12


async def test_the_cursor_holds_when_its_member_moved(any_store: Store) -> None:
    s = any_store
    seq = await sequence(s, sms(), sms(wait=10))
    enrolled = await enroll(s, seq, await contacts(s, 6))
    order = sorted(e.id for e in enrolled)  # all due at the same ms: id order
    first, after, _ = await s.enrollments.list(
        TENANT, seq.id, limit=3, after=None, statuses=["active"]
    )
    assert [e.id for e in first] == order[:3] and after is not None
    # The page's last member goes out and comes back due later (as a claim's lease does):
    # the next page still starts right after where the cursor was.
    moved = order[2]
    sh = ids.shard_of(moved, s.shards)
    due = await due_score(s, moved)
    assert due is not None
    await s.client.zadd(s.keys.queue(sh, seq.id), {moved: due + LEASE})
    second, after, _ = await s.enrollments.list(
        TENANT, seq.id, limit=3, after=after, statuses=["active"]
    )
    assert [e.id for e in second] == order[3:]
    # Moved past the cursor, it is listed again at its new place.
    third, after, _ = await s.enrollments.list(
        TENANT, seq.id, limit=3, after=after, statuses=["active"]
    )
    assert [e.id for e in third] == [moved] and after is None


async def test_the_full_listing_gives_the_active_first_then_the_rest_by_id(
    any_store: Store,
) -> None:
    s = any_store
    seq = await sequence(s, sms(), sms(wait=10))
    enrolled = await enroll(s, seq, await contacts(s, 5))
    by_id = sorted(e.id for e in enrolled)
    for eid in by_id[:2]:
        await s.enrollments.transition(TENANT, eid, "pause", "manual")
    await s.enrollments.transition(TENANT, by_id[2], "cancel", "manual")
    got = await pages(s, seq.id, 2, ALL)
    # Active ones (due at the same ms: by id), then paused and cancelled merged by id; a
    # page runs over from one part to the next.
    assert got == [by_id[3:5], by_id[0:2], by_id[2:3]]
    assert await pages(s, seq.id, 3, ["paused", "cancelled"]) == [by_id[0:3]]
    _, _, total = await s.enrollments.list(TENANT, seq.id, limit=2, after=None, statuses=ALL)
    assert total == 5


async def test_a_forged_active_cursor_is_refused_naming_the_page_token(api: Api) -> None:
    seq = await sequence(api.store, sms())
    for forged in ("a:nan:x", "a:12:not-an-id", "a:", "a:1e400:" + ids.new(ids.ENROLLMENT)):
        token = encode_token(forged)
        status, body = await api.call("GET", f"/sequences/{seq.id}/enrollments?page_token={token}")
        assert status == 422, forged
        assert body["errors"][0]["path"] == "query.page_token"  # type: ignore[index]


async def test_the_poll_counts_due_members_not_heads_left_early(any_store: Store) -> None:
    s = any_store
    seq = await sequence(s, sms(), sms(wait=10))
    cids = await contacts_in_shard(s, 4, shard=0)
    (gone,) = await enroll(s, seq, cids[:1])
    due = await due_score(s, gone.id)
    assert due is not None
    dispatch = Dispatch(s)
    assert (await dispatch.heads(int(due)))[0] == (due, 1)
    # Cancelled: out of its queue, while the head stays where it was (a lower bound).
    await s.enrollments.transition(TENANT, gone.id, "cancel", "manual")
    assert await s.client.zscore(s.keys.heads(0), seq.id) == due
    assert (await dispatch.heads(int(due) + 10**6))[0] == (None, 0)
    later = await enroll(s, seq, cids[1:])
    first = min([await due_score(s, e.id) or 0 for e in later])
    assert (await dispatch.heads(int(first) + 10**6))[0] == (first, 3)
    assert (await dispatch.heads(int(first) + 10**6, cap=2))[0] == (first, 2)
    # Before the early head is due, it stands for its queue (a lower bound: the poll wakes
    # then and finds the queue's own first score).
    assert (await dispatch.heads(int(due) - 1))[0] == (due, 0)


async def test_a_claim_sets_the_head_and_an_advance_lowers_it(any_store: Store) -> None:
    s = any_store
    seq = await sequence(s, sms(), sms(wait=10))
    (e,) = await enroll(s, seq, await contacts_in_shard(s, 1, shard=0))
    due = int(await due_score(s, e.id) or 0)
    dispatch = Dispatch(s)
    batch = await claim(s, 0, due, lease_ms=LEASE, limit=10)
    (item,) = batch.items
    token = item.enrollment.token
    assert await s.client.zscore(s.keys.heads(0), seq.id) == float(token)
    # The next step is due before the lease would end: the head comes down to it.
    done = settled(id=e.id, token=token, step=0, kind="sms", at=due + 5, outcome="sent", wait=1000)
    for claimed in (None, {e.id: item.enrollment}):
        if claimed is not None:  # the dispatcher's way (the bulk writes) on a second step
            (item,) = (
                await claim(s, 0, due + 1005, lease_ms=LEASE, limit=10)
            ).items  # fmt: skip
            done = settled(
                id=e.id, token=item.enrollment.token, step=1, kind="sms", at=due + 1010,
                outcome="sent", wait=1000,
            )  # fmt: skip
        advanced = await dispatch.advance_many(
            {0: [done]}, now=done.at, max_attempts=3, claimed=claimed
        )
        assert advanced[0].applied == 1
        assert await s.client.zscore(s.keys.heads(0), seq.id) == done.at + 1000


async def test_shrinking_a_sequence_completes_enrollments_past_its_new_end(
    any_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sequences, "SWEEP_BATCH", 3)
    s = any_store
    seq = await sequence(s, sms(), sms(wait=10), sms(wait=10))
    enrolled = await enroll(s, seq, await contacts(s, 10))
    past = enrolled[:7]
    for e in past:  # at the third step
        await s.client.hset(s.keys.enrollment(ids.shard_of(e.id, s.shards), e.id), "i", 2)
    await s.enrollments.transition(TENANT, past[0].id, "pause", "manual")
    # ("all": the live enrollments move to the new steps; by default they stay on theirs.)
    patch = models.SequencePatch(steps=[sms(), sms(wait=10)], apply_to="all")
    changed = await s.sequences.change(TENANT, seq.id, patch=patch)
    assert (changed.stats.completed, changed.stats.active, changed.stats.paused) == (7, 3, 0)
    for e in enrolled:
        assert (await raw(s, e.id))["st"] == ("completed" if e in past else "active")
        assert (await due_score(s, e.id) is None) == (e in past)
        assert (await raw(s, e.id)).get("sv") == (None if e in past else "2")


@pytest.fixture(params=["valkey", "fakeredis"])
def reopen(request: pytest.FixtureRequest) -> Callable[[], Redis]:
    """New clients of one server, to open a store again as a restarted process would."""
    if request.param == "valkey":
        url = request.getfixturevalue("valkey").url
        return lambda: connect(url)
    import fakeredis

    server = fakeredis.FakeServer()
    return lambda: fakeredis.FakeAsyncRedis(server=server, decode_responses=True)


async def test_a_schema_1_store_moves_into_queues_when_opened(
    reopen: Callable[[], Redis], prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrate, "STEP", 2)
    s = await Store.open(reopen(), prefix, 4)
    try:
        seq = await sequence(s, sms(), sms(wait=10))
        paused_seq = await sequence(s, sms(), sms(wait=10))
        enrolled = await enroll(s, seq, await contacts(s, 7))
        (parked,) = await enroll(s, paused_seq, (await contacts(s, 1)))
        await s.sequences.change(TENANT, paused_seq.id, status=models.SequenceStatus.PAUSED)
        scores = {e.id: await due_score(s, e.id) for e in enrolled}
        parked_score = await due_score(s, parked.id)
        # Rewrite them as schema 1 had them: the shard's due index, the parked items of the
        # paused sequence, an active listing per sequence.
        for e in [*enrolled, parked]:
            sh = ids.shard_of(e.id, s.shards)
            tag = s.keys.shard_tag(sh)
            sid = e.sequence_id
            score = scores.get(e.id, parked_score)
            await s.client.zrem(s.keys.queue(sh, sid), e.id)
            if e is parked:
                await s.client.zadd(V1_PARKED.format(tag=tag) + sid, {e.id: score})
            else:
                await s.client.zadd(V1_SHARD_DUE.format(tag=tag), {e.id: score})
            await s.client.zadd(f"{tag}:ix:{sid}:active", {e.id: 0})
        for sh in range(s.shards):
            await s.client.delete(s.keys.heads(sh))
        await s.client.hset(s.keys.meta(), "schema", 1)
    finally:
        await s.close()

    s = await Store.open(reopen(), prefix, 4)
    try:
        assert await s.client.hget(s.keys.meta(), "schema") == str(migrate.SCHEMA)
        for e in enrolled:
            assert await due_score(s, e.id) == scores[e.id]
        assert await due_score(s, parked.id) == parked_score
        for sh in range(s.shards):
            tag = s.keys.shard_tag(sh)
            assert await s.client.exists(V1_SHARD_DUE.format(tag=tag)) == 0
            assert await s.client.exists(V1_PARKED.format(tag=tag) + paused_seq.id) == 0
            assert await s.client.exists(f"{tag}:ix:{seq.id}:active") == 0
            # Heads for the active sequence's queues only: the paused one's waits.
            heads = dict(await s.client.zrange(s.keys.heads(sh), 0, -1, withscores=True))
            mine = [scores[e.id] for e in enrolled if ids.shard_of(e.id, s.shards) == sh]
            assert heads == ({seq.id: min(mine)} if mine else {})  # type: ignore[type-var]
        # And the dispatcher finds every step.
        now = int(max(v or 0 for v in scores.values()))
        claimed = [await claim(s, sh, now, lease_ms=LEASE) for sh in range(s.shards)]
        assert sorted(i.id for b in claimed for i in b.items) == sorted(scores)
        # A schema 1 process still running writes to its due index after the move: the
        # next start moves that too.
        straggler = enrolled[0]
        sh = ids.shard_of(straggler.id, s.shards)
        await s.client.zrem(s.keys.queue(sh, seq.id), straggler.id)
        await s.client.zadd(V1_SHARD_DUE.format(tag=s.keys.shard_tag(sh)), {straggler.id: 5})
    finally:
        await s.close()
    s = await Store.open(reopen(), prefix, 4)
    try:
        assert await due_score(s, straggler.id) == 5
        assert await s.client.exists(V1_SHARD_DUE.format(tag=s.keys.shard_tag(sh))) == 0
    finally:
        await s.close()


async def test_a_new_store_starts_at_the_current_schema(any_store: Store) -> None:
    assert await any_store.client.hget(any_store.keys.meta(), "schema") == str(migrate.SCHEMA)
