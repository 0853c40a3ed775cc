"""Which sender each leased step goes out from, and whether the step may go now: its
sender's budget and its contact's frequency cap.

A step whose sequence names a sender pool for its kind asks for one send of budget
(`senders.budget.ask`: the contact's pinned sender under sticky rotation, else the pool
from its rotation cursor): one `takeBudget` call per tenant. A step of a kind its tenant
caps (and not transactional) counts against its contact's cap: one `takeFrequency` call
per shard. Both go in the round trip that leases the piece, so they cost no round trip of
their own. A step that got a sender is sent from it (a sticky contact is pinned to it by
the step's own advance once its send started: `StepOutcome.pin`); a step over its
contact's cap is deferred until the window allows it, or skipped, as the tenant's policy
says; a step whose senders have no budget is deferred to the moment they allow. Never
failed, no attempt counted.

Budget and cap are taken before the step is composed: a leased step that then ends
without a send (suppressed, a missing variable, taken by another process, deferred by the
other check) has used them, so a sender or a contact is charged early, never late, and a
limit is never exceeded. A step counted once is not counted again when it comes back.

Sender settings and frequency caps are cached per tenant for `senders.refresh_ms`, and
read again at once after a change made through this process.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from seqd.channels.base import FromSender
from seqd.config import FrequencyCap, FrequencyCapsConfig, SendersConfig
from seqd.engine.plans import Plan
from seqd.kinds import Kind
from seqd.senders import budget
from seqd.senders.models import SenderRecord
from seqd.store import calls
from seqd.store.claims import Claimed
from seqd.store.db import Store

# A step whose every sender is paused looks again this long after (a resumed sender then
# sends within it).
PAUSED_WAIT_MS = 60_000

Reason = Literal["sender_limit", "frequency_cap"]


class Pick(NamedTuple):
    """What became of a step's asks: the sender to send from (None: the tenant's configured
    one), or the moment it is deferred to (`until`) or that it is skipped, and why; and
    whether the step pins its contact to its sender (a sticky contact not pinned yet)."""

    sender: SenderRecord | None = None
    # What the channel needs of `sender` (`route`), made once per sender record.
    route: FromSender | None = None
    until: int | None = None
    skip: bool = False
    reason: Reason | None = None
    pin: bool = False


class _Asks(NamedTuple):
    """One takeBudget call's: its tenant's senders, its asks, and per ask (item id, whether
    its pick pins a sticky contact)."""

    records: Mapping[str, SenderRecord]
    routes: Mapping[str, FromSender]
    asks: list[budget.Ask]
    of: list[tuple[str, bool]]


@dataclass(slots=True)
class Asked:
    """The asks of one piece: the takeBudget calls (one per tenant) then the takeFrequency
    calls (one per shard), in `calls`."""

    calls: list[calls.Call] = field(default_factory=list)
    budgets: list[_Asks] = field(default_factory=list)
    # Per takeFrequency call: the item ids of its asks, in order.
    counted: list[list[str]] = field(default_factory=list)
    # Item id -> what its tenant does with a step over the cap.
    action: dict[str, str] = field(default_factory=dict)


class _Cached(NamedTuple):
    records: Mapping[str, SenderRecord]
    routes: Mapping[str, FromSender]
    caps: FrequencyCapsConfig
    read_at: int
    version: tuple[int, int]


def _no_caps(tenant: str) -> FrequencyCapsConfig:
    return FrequencyCapsConfig()


class Budgets:
    def __init__(
        self,
        store: Store,
        config: SendersConfig | None = None,
        caps_for: Callable[[str], FrequencyCapsConfig] = _no_caps,
    ) -> None:
        """`caps_for`: a tenant's configured frequency caps (the API's settings go over)."""
        self.store = store
        self.config = config or SendersConfig()
        self.caps_for = caps_for
        self._cache: dict[str, _Cached] = {}

    def _version(self, tenant: str) -> tuple[int, int]:
        return (
            self.store.senders.changes.get(tenant, 0),
            self.store.settings.changes.get(tenant, 0),
        )

    async def _tenants(self, tenants: Sequence[str], now: int) -> dict[str, _Cached]:
        stale = [
            t
            for t in tenants
            if (c := self._cache.get(t)) is None
            or now - c.read_at >= self.config.refresh_ms
            or c.version != self._version(t)
        ]
        if stale:
            versions = {t: self._version(t) for t in stale}
            records = await asyncio.gather(*(self.store.senders.all(t) for t in stale))
            stored = await self.store.settings.many(stale)
            for tenant, own in zip(stale, records, strict=True):
                caps = stored[tenant].frequency_caps or self.caps_for(tenant)
                self._cache[tenant] = _Cached(
                    {r.id: r for r in own}, {r.id: route(r) for r in own}, caps, now,
                    versions[tenant],
                )  # fmt: skip
        return {t: self._cache[t] for t in tenants}

    async def ask(
        self,
        items: Sequence[Claimed],
        plans: Mapping[str, Plan],
        shard_of: Mapping[str, int],
        now: int,
        *,
        charge_as: str | None = None,
    ) -> Asked | None:
        """The asks of the items' steps; None when none has any. `charge_as`: the tenant
        whose budgets key the asks take from (a preview's scratch copy), else their own."""
        steps: list[tuple[Claimed, Plan, int, Kind]] = []
        for item in items:
            plan = plans.get(item.plan_key)
            step = int(item.enrollment.index)
            if plan is not None and step < len(plan.steps):
                steps.append((item, plan, step, plan.steps[step].kind))
        if not steps:
            return None
        tenants = await self._tenants(sorted({item.enrollment.tenant for item, *_ in steps}), now)
        by_tenant: dict[str, _Asks] = {}
        by_shard: dict[int, tuple[list[str | int], list[str]]] = defaultdict(lambda: ([], []))
        out = Asked()
        # (tenant, kind) -> its cap; (sequence, kind) -> {a contact's pin: its ask}: within a
        # piece budget.ask's answer depends on the pin alone, so each is worked out once.
        caps: dict[tuple[str, Kind], FrequencyCap | None] = {}
        asks_of: dict[tuple[str, Kind], dict[str | None, budget.Ask | None]] = {}
        for item, plan, step, kind in steps:
            e = item.enrollment
            tenant = tenants[e.tenant]
            capped = (e.tenant, kind)
            if capped in caps:
                cap = caps[capped]
            else:
                cap = caps[capped] = tenant.caps.of(kind)
            if cap is not None and not plan.steps[step].transactional:
                values, ids = by_shard[shard_of[item.id]]
                window = int(cap.window_hours * 3_600_000)
                values += (e.contact, kind, f"{item.id}:{step}", cap.limit, window)
                ids.append(item.id)
                out.action[item.id] = tenant.caps.action
            if kind not in plan.senders:
                continue
            own = tenant.records
            memo = asks_of.get((plan.sequence_id, kind))
            if memo is None:
                memo = asks_of[(plan.sequence_id, kind)] = {}
            pinned = e.pinned(kind)
            if pinned in memo:
                asked = memo[pinned]
            else:
                # The pool's senders that exist.
                pool = tuple(
                    s for s in plan.senders[kind] if (r := own.get(s)) and r.channel == kind
                )
                key = f"{plan.sequence_id}:{kind}"
                asked = memo[pinned] = budget.ask(plan.rotation, pool, pinned, key)
            if asked is None:
                continue  # every sender of the pool is gone: the tenant's own, as with none
            asks = by_tenant.get(e.tenant)
            if asks is None:
                asks = by_tenant[e.tenant] = _Asks(own, tenant.routes, [], [])
            asks.asks.append(asked)
            # A sticky contact not pinned to its ask's one sender is pinned to its pick.
            new_pin = plan.rotation == "sticky" and asked.pool != ""
            asks.of.append((item.id, new_pin))
        store = self.store
        for name, asks in by_tenant.items():
            charged = charge_as or name
            out.calls.append(store.senders.take_call(charged, asks.asks, asks.records, now))
            out.budgets.append(asks)
        for shard, (values, ids) in by_shard.items():
            out.calls.append(calls.take_frequency(store.keys, shard, now, values))
            out.counted.append(ids)
        return out if out.calls else None

    @staticmethod
    def picks(asked: Asked, replies: Sequence[object], now: int) -> dict[str, Pick]:
        """item id -> its Pick, from the replies of `asked.calls` (in order)."""
        out: dict[str, Pick] = {}
        budgets = len(asked.budgets)
        for (records, routes, asks, of), reply in zip(
            asked.budgets, replies[:budgets], strict=True
        ):
            # (sender, pin) -> its Pick: a piece's steps share a few.
            made: dict[tuple[str, bool], Pick] = {}
            answers = budget.replies(reply)  # type: ignore[arg-type]
            for ask, (item_id, pin), (taken, until) in zip(asks, of, answers, strict=True):
                if taken:
                    sid = ask.senders[taken - 1]
                    pick = made.get((sid, pin))
                    if pick is None:
                        pick = Pick(sender=records[sid], route=routes[sid], pin=pin)
                        made[(sid, pin)] = pick
                    out[item_id] = pick
                    continue
                until = now + PAUSED_WAIT_MS if until == budget.PAUSED else until
                out[item_id] = Pick(until=max(until, now), reason="sender_limit")
        for ids, reply in zip(asked.counted, replies[budgets:], strict=True):
            for item_id, wait in zip(ids, reply, strict=True):  # type: ignore[call-overload]
                if not int(wait):
                    continue
                if asked.action[item_id] == "skip":
                    out[item_id] = Pick(skip=True, reason="frequency_cap")
                else:
                    out[item_id] = Pick(until=max(int(wait), now), reason="frequency_cap")
        return out


def route(record: SenderRecord) -> FromSender:
    """What a channel needs of a sender to send from it."""
    return FromSender(
        id=record.id,
        address=record.address,
        name=record.name,
        messaging_service_sid=record.messaging_service_sid,
        smtp_profile=record.smtp_profile,
    )
