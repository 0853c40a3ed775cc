"""The preview's timeline: when each step would go for one contact enrolled at `start`,
from which sender, and what moved it, every step sent at the moment it may go.

Each step is decided by the dispatcher's own code, in the order the dispatcher applies
it: its due time from the timing core (waits, windows, quiet hours: what the enroll path
and the advance compute), then `Budgets` (sender budget and rotation, frequency cap) with
`takeBudget` and `takeFrequency` run at that moment on scratch copies of the tenant's
budgets and the contact's windows (store/previews.py), then, for a step they defer, the
send-time check of the timing core at the new moment, and so on until it goes. So the
preview charges nothing real, and what it answers is what the dispatcher then does while
no other sends share the senders or the contact's cap.
"""

from __future__ import annotations

from typing import NamedTuple

from seqd import ids, models
from seqd.engine.budgets import Budgets, Pick
from seqd.engine.plans import Plan, build
from seqd.schedules import Schedule
from seqd.store import previews
from seqd.store.claims import Claimed, ClaimedEnrollment
from seqd.store.db import Store
from seqd.timing.due import due
from seqd.timing.policy import Policy, jitter_key

# A step held back more often than this is shown where the last hold left it (a pool whose
# every sender is paused holds a step a minute at a time, forever).
MAX_HOLDS = 50
_ITEM = "preview"


class PlannedStep(NamedTuple):
    """One step: when it goes (ms), what moved it, in order, the zone that decided and its
    source, the sender it goes from (None: the tenant's configured one), and whether the
    frequency cap skips it."""

    at: int
    moved_by: tuple[str, ...]
    zone: str
    source: str
    sender: str | None = None
    skipped: bool = False


async def timeline(
    store: Store,
    policy: Policy,
    budgets: Budgets,
    tenant: str,
    seq: models.Sequence,
    schedule: Schedule | None,
    contact_id: str | None,
    timezone: str | None,
    phone: str | None,
    start: int,
) -> list[PlannedStep]:
    """The timeline of `seq` for a contact (`contact_id`: a stored one, whose recent
    messages count against its caps; None: an inline one, jittered as contact "")."""
    plan = build(seq, 0)
    rules = policy.rules(tenant, schedule)
    recipient = policy.recipient(tenant, schedule, timezone, phone)
    shard = 0 if contact_id is None else ids.shard_of(contact_id, store.shards)
    scratch = await previews.open_scratch(
        store,
        tenant,
        sorted({sid for pool in plan.senders.values() for sid in pool}),
        [f"{seq.id}:{kind}" for kind in plan.senders],
        shard,
        contact_id,
        sorted({s.kind for s in plan.steps}),
    )
    out: list[PlannedStep] = []
    pins: dict[str, str] = {}
    try:
        at = start
        for n, step in enumerate(plan.steps):
            key = jitter_key(contact_id or "", seq.id, n)
            decided = due(rules, step.timing, recipient, at, key)
            when, moved = decided.at, list(decided.moved_by)
            sender: str | None = None
            skipped = False
            for _ in range(MAX_HOLDS):
                pick = await _pick(store, budgets, plan, n, when, pins, scratch)
                if pick is None or pick.sender is not None:
                    if pick is not None and pick.sender is not None:
                        sender = pick.sender.id
                        if pick.pin:
                            pins[step.kind] = sender
                    break
                assert pick.reason is not None
                if pick.reason not in moved:
                    moved.append(pick.reason)
                if pick.skip or pick.until is None:
                    skipped = True
                    break
                # Due again at `until`, where the send-time check may move it on.
                again = due(rules, step.timing, recipient, pick.until, key, waits=False)
                when = again.at
                moved += [r for r in again.moved_by if r not in moved]
            out.append(
                PlannedStep(when, tuple(moved), decided.zone, decided.source, sender, skipped)
            )
            at = when
    finally:
        await previews.close_scratch(store, scratch)
    return out


async def _pick(
    store: Store,
    budgets: Budgets,
    plan: Plan,
    step: int,
    now: int,
    pins: dict[str, str],
    scratch: previews.Scratch,
) -> Pick | None:
    """What the dispatcher's asks answer for step `step` at `now`: the scratch contact's
    caps and the scratch budgets, the contact pinned as `pins` say."""
    item = Claimed(
        _ITEM,
        ClaimedEnrollment(
            tenant=scratch.owner,
            sequence=plan.sequence_id,
            contact=scratch.contact,
            status="active",
            index=str(step),
            due=str(now),
            token="0",
            sms_sender=pins.get("sms"),
            email_sender=pins.get("email"),
        ),
        {},
    )
    asked = await budgets.ask(
        [item], {plan.sequence_id: plan}, {_ITEM: scratch.shard}, now, charge_as=scratch.tenant
    )
    if asked is None:
        return None
    replies = await store.runner.call_many(asked.calls)
    failed = next((r for r in replies if isinstance(r, Exception)), None)
    if failed is not None:
        raise failed
    return Budgets.picks(asked, replies, now).get(_ITEM)
