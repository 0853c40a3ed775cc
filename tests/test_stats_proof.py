"""The stats' proof: over thousands of enrollments with sends, retries, failures, delivery
reports, replies, opt-outs and bounces in a random order, every counter of
GET /sequences/{id}/stats equals a count of the events the same scripts wrote, per step and
per A/B variant (the sent events name the variant; what is credited to a step counts under
the variant that step was sent as)."""

from __future__ import annotations

import contextlib
import datetime as dt
import random
from collections import Counter, defaultdict
from typing import Any

import pytest

from seqd import models
from seqd.channels.base import OutboundMessage, SendResult
from seqd.errors import Conflict
from seqd.lifecycle import optout
from seqd.store.counters import COUNTERS
from seqd.store.db import Store
from tests.dispatchutil import Clock, Recorder, dispatcher, email, enroll, events, sequence, sms
from tests.lifecycleutil import client

pytestmark = pytest.mark.slow

TENANT = "acme"
CONTACTS = 2000
ROUNDS = 12
MINUTE = 60_000


def answer(rng: random.Random) -> Any:
    def send(message: OutboundMessage) -> SendResult:
        roll = rng.random()
        if roll < 0.05:
            return SendResult(outcome="failed", error="rejected")
        if roll < 0.15:
            return SendResult(outcome="retry", error="busy")
        return SendResult(outcome="sent", provider_id=f"pid-{message.key}-{rng.random()}")

    return send


Key = tuple[int | None, str | None, str]


class Model:
    """What the counters should say, from the events: the scripts' rules applied to them,
    keyed by (step, variant, counter)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.counts: dict[Key, int] = Counter()
        # (enrollment, step) -> the variant it was sent as (its sent event's)
        self.variant: dict[tuple[str, int], str] = {}
        # enrollment -> steps passed (sent or skipped), steps sent, live, channels sent on
        self.passed: dict[str, int] = defaultdict(int)
        self.sent: dict[str, list[int]] = defaultdict(list)
        self.live: dict[str, bool] = {}
        self.channels: dict[str, set[str]] = defaultdict(set)
        self.of_contact: dict[str, str] = {}
        # (channel, contact) stopped: a stop counts when it first suppresses the value.
        self.stopped: set[tuple[str, str]] = set()

    def credit(self, eid: str) -> int | None:
        if self.sent[eid]:
            return max(self.sent[eid])
        return self.passed[eid] - 1 if self.passed[eid] else None

    def count(self, eid: str, step: int | None, name: str) -> None:
        variant = None if step is None else self.variant.get((eid, step))
        self.counts[(step, variant, name)] += 1

    def see(self, e: dict[str, Any]) -> None:
        kind = e["type"]
        eid = e.get("id")
        if kind == "sequence.enrollment.created":
            self.live[eid] = True
            self.of_contact[e["fields"]["c"]] = eid
            self.count(eid, 0, "scheduled")
        elif kind in ("sequence.step.sent", "sequence.step.skipped"):
            step = e["step"]
            if kind.endswith("sent") and e.get("variant") is not None:
                self.variant[(eid, step)] = e["variant"]
            self.count(eid, step, "sent" if kind.endswith("sent") else "skipped")
            self.passed[eid] += 1
            if kind.endswith("sent"):
                self.sent[eid].append(step)
                self.channels[eid].add(e["kind"])
            if step + 1 < self.steps:
                self.count(eid, step + 1, "scheduled")
        elif kind == "sequence.step.failed" and not e["retrying"]:
            self.count(eid, e["step"], "failed")
        elif kind == "sequence.enrollment.paused" and e["paused_reason"] == "reply_received":
            self.count(eid, self.credit(eid), "replied")
        elif kind in ("sequence.enrollment.completed", "sequence.enrollment.cancelled"):
            self.count(eid, self.credit(eid), kind.rpartition(".")[2])
            self.live[eid] = False
        elif kind in ("message.delivered", "message.undelivered"):
            self.count(e["id"], e["step"], kind.partition(".")[2])
        elif kind in ("contact.opted_out", "contact.bounced"):
            if (e["channel"], e["contact_id"]) in self.stopped:
                return
            self.stopped.add((e["channel"], e["contact_id"]))
            eid = self.of_contact.get(e["contact_id"])
            # (The event comes after the cancel it caused: live is read before it.)
            was_live = eid is not None and (self.live[eid] or eid in e.get("cancelled", []))
            if was_live and e["channel"] in self.channels[eid]:
                name = "bounced" if kind == "contact.bounced" else "opted_out"
                if name == "opted_out" and e["channel"] == "email":
                    name = "unsubscribed"
                self.count(eid, self.credit(eid), name)


async def test_stats_equal_a_count_of_the_events(store: Store) -> None:
    rng = random.Random(24)
    ab_sms = sms()
    ab_sms.variants = [
        models.VariantIn(id="a", body="A {{first_name}}"),
        models.VariantIn(id="b", weight=2, body="B {{first_name}}"),
    ]
    ab_email = email(wait=5, thread=False)
    ab_email.variants = [models.VariantIn(id="short", subject="Hi"), models.VariantIn(id="long")]
    # Step 1 waits, so that each round's replies find some enrollments whose last send is
    # step 0 (a reply is credited to the last step sent).
    seq = await sequence(store, ab_sms, email(wait=5), sms(wait=5), ab_email)
    cids = []
    for n in range(CONTACTS):
        values = {"phone": f"+1415{n:07d}", "email": f"c{n}@example.com", "first_name": "A"}
        cids.append((await store.contacts.create(TENANT, values)).id)
    enrolled = await enroll(store, seq, cids)
    by_contact = dict(zip(cids, enrolled, strict=True))
    clock = Clock()
    sender = Recorder(answer=answer(rng))
    worker = dispatcher(store, sender, clock, max_attempts=2, retry_backoff_seconds=[60])
    for _ in range(ROUNDS):
        while (await worker.run_once(clock())).more:
            pass
        # Between rounds: delivery reports, replies, opt-outs and bounces at random.
        for message in rng.sample(sender.messages, min(300, len(sender.messages))):
            if message.kind == "sms":
                status = rng.choice(["delivered", "undelivered", "sent"])
                event = "" if status == "sent" else f"message.{status}"
                await store.lifecycle.record_delivery(
                    TENANT, message.enrollment_id, message.step, status, 2 if status == "sent"
                    else 3, "", event_type=event, event={"status": status},
                )  # fmt: skip
        for cid in rng.sample(cids, 60):
            action = rng.random()
            if action < 0.4:
                await store.lifecycle.reply(TENANT, "sms", contact_id=cid)
            elif action < 0.55:
                e = by_contact[cid]
                await store.lifecycle.reply(TENANT, "email", enrollment_id=e.id)
            elif action < 0.75:
                phone = f"+1415{cids.index(cid):07d}"
                await optout.opt_out(store, TENANT, "sms", phone, source="keyword")
            elif action < 0.85:
                address = f"c{cids.index(cid)}@example.com"
                await optout.opt_out(store, TENANT, "email", address, source="one_click")
            else:
                address = f"c{cids.index(cid)}@example.com"
                await optout.bounce(store, TENANT, address, status="5.1.1", diagnostic=None)
        for e in rng.sample(enrolled, 40):
            action = "resume" if rng.random() < 0.7 else "cancel"
            with contextlib.suppress(Conflict):
                await store.enrollments.transition(TENANT, e.id, action, "manual")
        clock.advance(10 * MINUTE)

    model = Model(len(seq.steps))
    for e in await events(store):
        model.see(e)
    async with client(store) as api:
        # (The clock ran hours ahead: its day may be tomorrow.)
        last = dt.datetime.fromtimestamp(clock() / 1000, dt.UTC).date()
        status, body = await api.call("GET", f"/sequences/{seq.id}/stats?to={last}")
        status_v, by_variant = await api.call(
            "GET", f"/sequences/{seq.id}/stats?to={last}&group_by=variant"
        )
    assert status == 200 and status_v == 200
    got: dict[tuple[int | None, str], int] = {}
    for row in body["rows"]:
        for name, n in row["counts"].items():
            if n:
                got[(row["step"], name)] = n
    want: dict[tuple[int | None, str], int] = Counter()
    for (step, _, name), n in model.counts.items():
        want[(step, name)] += n
    assert got == {key: n for key, n in want.items() if n}
    # Per variant: each (step, variant) row; what no variant was sent as is one row.
    got_v: dict[tuple[int | None, str | None, str], int] = {}
    for row in by_variant["rows"]:
        for name, n in row["counts"].items():
            if n:
                got_v[(row["step"], row["variant"], name)] = n
    want_v: dict[tuple[int | None, str | None, str], int] = Counter()
    for (step, variant, name), n in model.counts.items():
        want_v[(step if variant else None, variant, name)] += n
    assert got_v == {key: n for key, n in want_v.items() if n}
    variants = {(step, v) for step, v, _ in got_v if v}
    assert variants == {(0, "a"), (0, "b"), (3, "short"), (3, "long")}
    # Sends, and outcomes credited later (replies, delivery reports, ends), per variant.
    for step, v, name in [(0, "a", "replied"), (0, "b", "delivered"), (3, "long", "completed")]:
        assert got_v.get((step, v, "sent")) and got_v.get((step, v, name)), (step, v, name)
    # Every counter but the ones no action here makes came into play.
    seen = {name for _, name in got}
    assert seen == set(COUNTERS) - {"auto_replied", "clicked", "deferred"}, seen
    assert sum(n for (_, name), n in got.items() if name == "sent") > CONTACTS
