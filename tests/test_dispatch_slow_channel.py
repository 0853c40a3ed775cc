"""A provider that hangs holds up only its own channel: the others keep their pace."""

from __future__ import annotations

import asyncio

from seqd.channels.base import OutboundMessage, SendResult
from seqd.config import DispatchConfig
from seqd.engine.dispatcher import Dispatcher
from seqd.store.db import Store
from tests.dispatchutil import (
    Clock,
    Recorder,
    contacts,
    due_score,
    email,
    enroll,
    raw,
    read,
    sequence,
    sms,
    unsettled,
)


class HangingSms:
    """SMS sends wait until `release` is set; email goes straight through."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.sms = Recorder("sms")
        self.email = Recorder("email")
        self.started_sms = 0

    def get(self, tenant: str, kind: str) -> HangingSms | Recorder:
        return self if kind == "sms" else self.email

    name = "hanging"

    async def send(self, message: OutboundMessage) -> SendResult:
        self.started_sms += 1
        await self.release.wait()
        return await self.sms.send(message)

    async def close(self) -> None:
        pass


async def test_hanging_sms_does_not_hold_up_email_and_loses_nothing(store: Store) -> None:
    texts = await sequence(store, sms())
    mails = await sequence(store, email())
    source = HangingSms()
    config = DispatchConfig(send_wait_seconds=0.05, concurrency=4, max_attempts=2)
    sms_enrollments = await enroll(store, texts, await contacts(store, 10))
    mail_contacts = await contacts(store, 30)
    clock = Clock()
    d = Dispatcher(store, config, source, clock=clock)  # type: ignore[arg-type]

    # 4 SMS sends start and hang (4 slots), 6 wait for a slot; the round does not wait.
    await d.run_once(clock())
    assert source.started_sms == 4
    # Email enrolled meanwhile goes out round after round while SMS still hangs.
    for start in range(0, 30, 10):
        await enroll(store, mails, mail_contacts[start : start + 10])
        clock.advance(1_000)
        await d.run_once(clock())
    assert len(source.email.messages) == 30
    assert source.started_sms == 4, "no SMS is queued behind a provider that hangs"
    held = [await raw(store, e.id) for e in sms_enrollments]
    # Steps put back because the channel was full count no attempt.
    assert all(h.get("a", "0") == "0" for h in held)

    source.release.set()
    for _ in range(20):
        clock.advance(1_000)
        await d.run_once(clock())
        states = [(await read(store, e.id)).status for e in sms_enrollments]
        if len(source.sms.messages) == 10 and set(states) == {"completed"}:
            break
    assert sorted(m.enrollment_id for m in source.sms.messages) == sorted(
        e.id for e in sms_enrollments
    )
    for e in sms_enrollments:
        got = await read(store, e.id)
        assert got.status == "completed" and await due_score(store, e.id) is None


async def test_stop_records_background_sends_or_releases_them(store: Store) -> None:
    texts = await sequence(store, sms())
    source = HangingSms()
    config = DispatchConfig(send_wait_seconds=0.05, drain_timeout_seconds=0.2)
    enrollments = await enroll(store, texts, await contacts(store, 3))
    clock = Clock()
    d = Dispatcher(store, config, source, clock=clock)  # type: ignore[arg-type]
    await d.run_once(clock())
    assert source.started_sms == 3
    d.start()
    await d.stop()  # the sends never end: given up after the drain timeout, released
    for e in enrollments:
        assert (await read(store, e.id)).status == "active"
        # The provider may have the message: the claim stays marked as unsettled, so the
        # next claim applies dispatch.on_unknown.
        assert await unsettled(store, e.id)
    assert not d.sending.stragglers
