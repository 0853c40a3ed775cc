"""Which sender each leased step goes out from, and whether that sender has budget now.

A step whose sequence names a sender pool for its kind asks for one send of budget
(`senders.budget.ask`: the contact's pinned sender under sticky rotation, else the pool
from its rotation cursor); the asks of a piece go as one `takeBudget` call per tenant in
the round trip that leases the piece, so budgets cost no round trip of their own. A step
that got a sender is sent from it (and a sticky contact pinned to it by `pinSenders` in
the next round trip); one that got none is deferred to the moment its senders allow,
never failed. Budget is taken before the step is composed: a leased step that ends
without a send (suppressed, a missing variable, taken by another process) has used it,
so a sender is charged early, never late, and its limits are never exceeded.

Sender settings are cached per tenant for `senders.refresh_ms`, and read again at once
after a change made through this process.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from seqd.channels.base import FromSender
from seqd.config import SendersConfig
from seqd.engine.plans import Plan
from seqd.kinds import SPECS, Kind
from seqd.senders import budget
from seqd.senders.models import SenderRecord
from seqd.store import calls
from seqd.store.db import Store
from seqd.store.dispatch import Claimed

# A step whose every sender is paused looks again this long after (a resumed sender then
# sends within it).
PAUSED_WAIT_MS = 60_000


class Pick(NamedTuple):
    """A step's sender (None: none has budget until `until`, ms) and, when the step pins
    its contact to it, the enrollment field to pin it in."""

    sender: SenderRecord | None
    until: int
    pin: str | None


class _Asks(NamedTuple):
    records: Mapping[str, SenderRecord]
    asks: list[budget.Ask]
    of: list[tuple[str, str | None]]


@dataclass(slots=True)
class Asked:
    """The budget asks of one piece: one takeBudget call per tenant."""

    calls: list[calls.Call] = field(default_factory=list)
    # Per call: its tenant's senders, its asks and, for each ask, (item id, the field to pin
    # a sticky contact in when the ask may pin it).
    asks: list[_Asks] = field(default_factory=list)


class _Cached(NamedTuple):
    records: Mapping[str, SenderRecord]
    read_at: int
    version: int


class Budgets:
    def __init__(self, store: Store, config: SendersConfig) -> None:
        self.store = store
        self.config = config
        self._cache: dict[str, _Cached] = {}

    async def _records(
        self, tenants: Sequence[str], now: int
    ) -> dict[str, Mapping[str, SenderRecord]]:
        changes = self.store.senders.changes
        stale = [
            t
            for t in tenants
            if (c := self._cache.get(t)) is None
            or now - c.read_at >= self.config.refresh_ms
            or c.version != changes.get(t, 0)
        ]
        if stale:
            versions = {t: changes.get(t, 0) for t in stale}
            read = await asyncio.gather(*(self.store.senders.all(t) for t in stale))
            for tenant, records in zip(stale, read, strict=True):
                self._cache[tenant] = _Cached({r.id: r for r in records}, now, versions[tenant])
        return {t: self._cache[t].records for t in tenants}

    async def ask(
        self, items: Sequence[Claimed], plans: Mapping[str, Plan], now: int
    ) -> Asked | None:
        """The asks of the items whose step sends from a pool; None when there are none."""
        pooled: list[tuple[Claimed, Plan, Kind]] = []
        for item in items:
            plan = plans.get(item.e["s"])
            if plan is None or not plan.senders:
                continue
            step = int(item.e["i"])
            if step < len(plan.steps) and plan.steps[step].kind in plan.senders:
                pooled.append((item, plan, plan.steps[step].kind))
        if not pooled:
            return None
        records = await self._records(sorted({item.e["t"] for item, _, _ in pooled}), now)
        by_tenant: dict[str, tuple[list[budget.Ask], list[tuple[str, str | None]]]] = defaultdict(
            lambda: ([], [])
        )
        for item, plan, kind in pooled:
            tenant = item.e["t"]
            own = records[tenant]
            pool = [sid for sid in plan.senders[kind] if (r := own.get(sid)) and r.channel == kind]
            pin_field = SPECS[kind].sender_field
            pinned = item.e.get(pin_field) if pin_field else None
            asked = budget.ask(plan.rotation, pool, pinned, f"{plan.sequence_id}:{kind}")
            if asked is None:
                continue  # every sender of the pool is gone: the tenant's own, as with none
            asks, of = by_tenant[tenant]
            asks.append(asked)
            # A sticky contact not pinned to this ask's one sender is pinned to its pick.
            new_pin = plan.rotation == "sticky" and asked.pool != ""
            of.append((item.id, pin_field if new_pin else None))
        out = Asked()
        for tenant, (asks, of) in by_tenant.items():
            out.calls.append(self.store.senders.take_call(tenant, asks, records[tenant], now))
            out.asks.append(_Asks(records[tenant], asks, of))
        return out if out.calls else None

    @staticmethod
    def picks(asked: Asked, replies: Sequence[object], now: int) -> dict[str, Pick]:
        """item id -> its Pick, from the replies of `asked.calls` (in order)."""
        out: dict[str, Pick] = {}
        for (records, asks, of), reply in zip(asked.asks, replies, strict=True):
            answers = budget.decode(asks, reply)  # type: ignore[arg-type]
            for answer, (item_id, pin) in zip(answers, of, strict=True):
                if answer.sender is None:
                    until = now + PAUSED_WAIT_MS if answer.until == budget.PAUSED else answer.until
                    out[item_id] = Pick(None, max(until, now), None)
                else:
                    out[item_id] = Pick(records[answer.sender], now, pin)
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


def pin_calls(store: Store, pins: Mapping[int, Sequence[tuple[str, str, str]]]) -> list[calls.Call]:
    """One pinSenders call per shard of `pins` (shard -> (enrollment id, field, sender id))."""
    return [calls.pin_senders(store.keys, shard, items) for shard, items in pins.items() if items]
