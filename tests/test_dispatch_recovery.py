"""Leases a process will not settle: taken back when its heartbeat stops, or when they end.

Only a step whose send had started is a send that may have happened (an attempt, or held
with on_unknown = hold); one leased and never handed to a channel comes back as it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from seqd.channels.base import OutboundMessage, SendResult
from seqd.config import ConfigError, DispatchConfig, load
from seqd.engine.dispatcher import Dispatcher
from seqd.engine.recovery import DEAD_AFTER, Recovery
from seqd.store.db import Store
from seqd.store.dispatch import Dispatch, Workers
from tests.dispatchutil import (
    WORKER,
    Clock,
    OneSender,
    Recorder,
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


async def sendable(s: Store) -> tuple[list[str], int]:
    """Two enrollments of contacts with phones, in any shard: (ids, latest due)."""
    seq = await sequence(s, sms(), sms(wait=10))
    eids = [e.id for e in await enroll(s, seq, await contacts(s, 2))]
    return eids, max([int((await raw(s, eid))["n"]) for eid in eids])


async def two(s: Store) -> tuple[list[str], int]:
    """Two enrollments due in shard 0: (ids, due)."""
    seq = await sequence(s, sms(), sms(wait=10))
    enrolled = await enroll(s, seq, await contacts_in_shard(s, 2))
    eids = [e.id for e in enrolled]
    return eids, int((await raw(s, eids[0]))["n"])


async def test_a_gone_workers_lease_never_started_comes_back_as_a_plain_step(
    any_store: Store,
) -> None:
    s = any_store
    eids, due = await two(s)
    batch = await claim(s, 0, due, lease_ms=LEASE, started=False)
    token = batch.items[0].enrollment.token
    got = await Dispatch(s).reclaim(due + 10, [WORKER])
    assert (got.leases, got.plain, got.unknown) == (1, 2, 0)
    # Due at once as plain steps (whole ms): not sends that may have happened.
    assert [await due_score(s, eid) for eid in eids] == [due + 10, due + 10]
    again = await claim(s, 0, due + 10, lease_ms=LEASE, on_unknown="hold")
    assert sorted(i.id for i in again.items) == sorted(eids)
    assert {i.enrollment.attempts for i in again.items} == {None}
    # The old token no longer holds: the gone worker's late outcome is stale.
    late = settled(id=eids[0], token=token, step=0, kind="sms", at=due, outcome="sent", wait=10)
    done = await Dispatch(s).advance(0, [late], now=due + 11, max_attempts=3)
    assert done.stale == [eids[0]]


@pytest.mark.parametrize("on_unknown", ["resend", "hold"])
async def test_a_gone_workers_started_lease_comes_back_as_a_send_that_may_have_happened(
    any_store: Store, on_unknown: str
) -> None:
    s = any_store
    eids, due = await two(s)
    await claim(s, 0, due, lease_ms=LEASE)  # started
    got = await Dispatch(s).reclaim(due + 10, [WORKER])
    assert (got.plain, got.unknown) == (0, 2)
    # Due now, as an unsettled claim (a lease score), long before the lease would end.
    assert [await due_score(s, eid) for eid in eids] == [due + 9.5, due + 9.5]
    again = await claim(s, 0, due + 10, lease_ms=LEASE, on_unknown=on_unknown)
    if on_unknown == "hold":
        assert again.items == []
        assert {(await raw(s, eid))["pr"] for eid in eids} == {"delivery_unknown"}
    else:
        assert {i.enrollment.attempts for i in again.items} == {"1"}


async def test_a_live_workers_lease_is_kept_until_it_ends(any_store: Store) -> None:
    s = any_store
    eids, due = await two(s)
    await claim(s, 0, due, lease_ms=LEASE, started=False)
    got = await Dispatch(s).reclaim(due + 10, ["another-worker"])
    assert got.leases == 0
    assert await due_score(s, eids[0]) == due + LEASE - 0.5
    # Past its end, with no record of a send it is a plain step again.
    got = await Dispatch(s).reclaim(due + LEASE)
    assert (got.leases, got.plain) == (1, 2)
    assert await due_score(s, eids[0]) == due + LEASE


async def test_a_peek_leaves_a_recorded_lease_past_its_end_to_the_reclaim(
    any_store: Store,
) -> None:
    # The peek cannot tell whether its sends had started: hold would pause it for nothing.
    s = any_store
    eids, due = await two(s)
    await claim(s, 0, due, lease_ms=LEASE, started=False)
    trip = Dispatch(s).trip(now=due + LEASE, max_attempts=3)
    peeked = trip.peek([0], now=due + LEASE, limit=10, on_unknown="hold")
    await trip.run()
    assert peeked.claims[0].items == []
    assert {(await raw(s, eid))["st"] for eid in eids} == {"active"}


async def test_leases_in_the_same_ms_by_two_workers_get_tokens_of_their_own(
    any_store: Store,
) -> None:
    s = any_store
    seq = await sequence(s, sms(), sms(wait=10))
    eids = [e.id for e in await enroll(s, seq, await contacts_in_shard(s, 2))]
    due = max([int((await raw(s, eid))["n"]) for eid in eids])
    batch = await claim(s, 0, due, lease_ms=LEASE, started=False, limit=100)
    assert len(batch.items) == 2
    # Release one, then lease it again for another worker in the same ms.
    first, second = batch.items
    await Dispatch(s).release(
        [(second.id, second.enrollment.token, second.enrollment.sequence)], now=due
    )
    other = await claim(s, 0, due, lease_ms=LEASE, started=False, worker="other")
    (mine,) = other.items
    assert mine.id == second.id
    assert mine.enrollment.token != first.enrollment.token
    # Taking back the first worker's lease leaves the other's alone.
    await Dispatch(s).reclaim(due + 1, [WORKER])
    assert await due_score(s, first.id) == due + 1
    assert await due_score(s, second.id) == float(mine.enrollment.token)


async def test_recovery_takes_back_the_leases_of_a_worker_whose_heartbeat_stopped(
    store: Store,
) -> None:
    eids, due = await two(store)
    clock = Clock(due)
    config = DispatchConfig(heartbeat_seconds=1)
    gone = Recovery(store, config, WORKER, clock=clock)
    await Workers(store).beat(WORKER, clock())
    await claim(store, 0, due, lease_ms=LEASE, started=False)
    alive = Recovery(store, config, "alive", clock=clock)
    clock.advance(DEAD_AFTER * 1000 - 1)
    assert (await alive.run_once()).leases == 0, "not before 3 heartbeats are missed"
    clock.advance(2)
    got = await alive.run_once()
    assert (got.leases, got.plain) == (1, 2)
    assert await Workers(store).dead(clock(), 1) == []  # forgotten once taken back
    # A process restarted under the gone one's id takes its leases back at once.
    await claim(store, 0, clock(), lease_ms=LEASE, started=True)
    await gone.start()
    try:
        assert [await due_score(store, eid) for eid in eids] == [clock() - 0.5] * 2
    finally:
        await gone.stop()


async def test_a_piece_leased_and_never_handed_to_a_channel_is_no_attempt(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The process dies between the lease of a piece and its first send (here: its mark of
    # the sends' start fails). With on_unknown = hold nothing is paused, and nothing counts
    # an attempt, once its heartbeat is gone.
    eids, due = await sendable(store)
    clock = Clock(due)
    sender = Recorder()
    config = DispatchConfig(on_unknown="hold")
    dying = Dispatcher(store, config, OneSender(sender), clock=clock, worker="dying")

    async def killed(self: Dispatch, tokens: object, **_: object) -> None:
        raise ConnectionError("killed")

    monkeypatch.setattr(Dispatch, "started", killed)
    with pytest.raises(ConnectionError):
        await dying.run_once(clock())
    monkeypatch.undo()
    assert sender.messages == []
    assert all([(await due_score(store, eid) or 0) > due for eid in eids])  # leased
    got = await Dispatch(store).reclaim(clock(), ["dying"])
    assert (got.plain, got.unknown) == (2, 0)
    survivor = Dispatcher(store, config, OneSender(sender), clock=clock, worker="survivor")
    await survivor.run_once(clock())
    assert sorted(m.enrollment_id for m in sender.messages) == sorted(eids)
    for eid in eids:
        h = await raw(store, eid)
        assert (h["st"], h.get("a", "0"), h["i"]) == ("active", "0", "1")


async def test_only_a_piece_whose_sends_started_is_held_after_a_crash(store: Store) -> None:
    # A send in flight (its piece marked started) when the process dies is held with
    # on_unknown = hold; the crash holds nothing that never reached a channel.
    eids, due = await sendable(store)
    clock = Clock(due)
    gate = asyncio.Event()

    class Hanging(Recorder):
        async def send(self, message: OutboundMessage) -> SendResult:
            self.messages.append(message)
            await gate.wait()
            return SendResult(outcome="sent", provider_id="x")

    sender = Hanging()
    config = DispatchConfig(on_unknown="hold", send_wait_seconds=10)
    dying = Dispatcher(store, config, OneSender(sender), clock=clock, worker="dying")
    round_ = asyncio.ensure_future(dying.run_once(clock()))
    await asyncio.wait_for(_until(lambda: len(sender.messages) == 2), 5)
    round_.cancel()  # the process dies mid-send
    await asyncio.wait({round_})
    await Dispatch(store).reclaim(clock(), ["dying"])
    await Dispatcher(store, config, OneSender(Recorder()), clock=clock).run_once(clock())
    assert {(await raw(store, eid)).get("pr") for eid in eids} == {"delivery_unknown"}


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 (a sender's list, no event to wait on)
        await asyncio.sleep(0.001)


def test_a_lease_shorter_than_the_longest_send_is_refused() -> None:
    env = {"SEQD_CHANNELS_SMS": "twilio", "SEQD_DISPATCH_LEASE_SECONDS": "3"}
    with pytest.raises(ConfigError, match=r"dispatch.lease_seconds \(3\).*twilio.timeout"):
        load(environ=env)
    tenant = {"SEQD_CONFIG": "", "SEQD_DISPATCH_LEASE_SECONDS": "20"}
    assert load(environ=tenant).dispatch.lease_seconds == 20  # the log channel: no timeout
    with pytest.raises(ConfigError, match=r"smtp\.timeout_seconds"):
        load(environ={"SEQD_CHANNELS_EMAIL": "smtp", "SEQD_DISPATCH_LEASE_SECONDS": "30"})
    assert load(environ={"SEQD_CHANNELS_EMAIL": "smtp"}).dispatch.lease_seconds == 60
