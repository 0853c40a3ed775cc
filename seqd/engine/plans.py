"""Sequences as the dispatcher sends them: prepared once per (sequence, version), cached.

A claim reply carries each item's sequence mirror (`store/mirrors.py`); the
document itself lives under the tenant's tag and is read only when the mirror names a
version newer than the cached one. The cache is bounded and keyed by sequence id, so a
long-running process holds one plan per live sequence, not one per version ever seen.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from seqd import conditions, models, templates
from seqd.kinds import SPECS, Kind
from seqd.models import Rotation
from seqd.store.db import Store
from seqd.timing.due import StepTiming
from seqd.timing.policy import step_timing

# A step's timing when none is given: its wait_minutes (0) and nothing else.
NO_RULES = StepTiming()

# Plans kept at most; the oldest loaded is dropped past this.
CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class StepPlan:
    kind: Kind
    body: str
    # The subject sent: own, or "Re: " + the first threading step's when threaded.
    subject: str | None
    # True when `subject` is the first email step's subject to be prefixed with "Re: ".
    reply_subject: bool
    # Index of the first step of its kind when this one threads under it.
    thread_root: int | None
    # ms from the previous step's send (or the enrollment) to this step.
    wait_ms: int
    # Roots the templates read beyond plain contact fields: decode only what is needed.
    needs_attributes: bool
    needs_metadata: bool
    # A message the contact asked for: exempt from frequency caps.
    transactional: bool = False
    # Its waits and time rules as the timing core takes them.
    timing: StepTiming = NO_RULES
    # Whether it is sent when due (its only_if / skip_if); None: always.
    gate: conditions.Predicate | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    sequence_id: str
    version: int
    steps: tuple[StepPlan, ...]
    # Per step index: the kinds with a suppression list among that step and the ones after
    # it (the suppression reads).
    kinds_left: tuple[tuple[Kind, ...], ...]
    # Channel -> the sender ids its steps send from (absent: the tenant's configured one),
    # and how a step picks among them (seqd/senders/budget.py).
    senders: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    rotation: Rotation = "sticky"
    # The sequence's schedule (its send windows), if it has one.
    schedule_id: str | None = None

    def kinds_from(self, step: int) -> tuple[Kind, ...]:
        return self.kinds_left[step] if step < len(self.kinds_left) else ()

    def wait_after(self, step: int) -> int:
        """ms from step `step`'s send to the next one; -1 when it is the last."""
        nxt = step + 1
        return self.steps[nxt].wait_ms if nxt < len(self.steps) else -1


def build(seq: models.Sequence, version: int) -> Plan:
    # The first step of each threading kind: the later ones thread under it.
    roots_at: dict[Kind, int] = {}
    for i, step in enumerate(seq.steps):
        if SPECS[step.kind].threads:
            roots_at.setdefault(step.kind, i)
    steps = []
    for i, step in enumerate(seq.steps):
        first = roots_at.get(step.kind)
        threaded = first is not None and i > first and step.thread
        subject = step.subject
        if threaded and first is not None:
            subject = seq.steps[first].subject
        roots = templates.roots(step.body, subject)
        steps.append(
            StepPlan(
                kind=step.kind,
                body=step.body,
                subject=subject,
                reply_subject=threaded,
                thread_root=first if threaded else None,
                wait_ms=step.wait_minutes * 60_000,
                needs_attributes="attributes" in roots,
                needs_metadata="metadata" in roots,
                transactional=step.transactional,
                timing=step_timing(step),
                gate=conditions.gate(step.only_if, step.skip_if),
            )
        )
    kinds_left = tuple(
        tuple(sorted({s.kind for s in seq.steps[i:] if SPECS[s.kind].suppression}))
        for i in range(len(seq.steps))
    )
    pools = {kind: tuple(seq.senders.of(kind)) for kind in ("sms", "email")}
    senders = MappingProxyType({kind: pool for kind, pool in pools.items() if pool})
    return Plan(seq.id, version, tuple(steps), kinds_left, senders, seq.rotation, seq.schedule_id)


class Plans:
    """Plans by sequence id, refreshed when a mirror shows a newer version."""

    def __init__(self, store: Store, size: int = CACHE_SIZE) -> None:
        self.store = store
        self.size = size
        self._plans: OrderedDict[str, Plan] = OrderedDict()
        # Reads in flight, so concurrent shard batches fetch a document once.
        self._loading: dict[str, asyncio.Future[Plan]] = {}

    def cached(self, sequence_id: str, version: int) -> Plan | None:
        plan = self._plans.get(sequence_id)
        if plan is None or plan.version < version:
            return None
        return plan

    async def load(self, tenant: str, sequence_id: str, version: int) -> Plan:
        """The plan at `version` or newer; NotFound when the document is gone."""
        plan = self.cached(sequence_id, version)
        if plan is not None:
            return plan
        pending = self._loading.get(sequence_id)
        if pending is not None:
            try:
                plan = await asyncio.shield(pending)
                if plan.version >= version:
                    return plan
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # we were cancelled, not the other reader
            except Exception:
                pass
        future: asyncio.Future[Plan] = asyncio.get_running_loop().create_future()
        self._loading[sequence_id] = future
        try:
            seq, current = await self.store.sequences.get_versioned(tenant, sequence_id)
            plan = build(seq, current)
            future.set_result(plan)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # marked retrieved: nobody else may be waiting
            raise
        finally:
            if self._loading.get(sequence_id) is future:
                del self._loading[sequence_id]
        self._plans[sequence_id] = plan
        self._plans.move_to_end(sequence_id)
        while len(self._plans) > self.size:
            self._plans.popitem(last=False)
        return plan
