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
from hashlib import blake2b
from types import MappingProxyType

import msgspec

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
class VariantPlan:
    """One A/B variant as sent: its texts (the step's where it has none of its own)."""

    id: str
    # The variant's share is the picks in [previous variant's `upto`, `upto`).
    upto: int
    body: str
    subject: str | None


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
    # An action kind's step (kinds.py `family`): its fields, read at send time.
    action: models.Step | None = None
    # The enrollment completes after this step (an enroll step with then = complete).
    ends: bool = False
    # Its links go through seqd's click redirect (seqd/clicks.py).
    track_clicks: bool = False
    # A/B variants (only the winner once one is chosen); () for a plain step.
    variants: tuple[VariantPlan, ...] = ()

    def variant_for(self, enrollment_id: str, step: int) -> VariantPlan:
        """The variant enrollment `enrollment_id` gets at `step` (a step with variants):
        the same in every process and on every retry, from a stable hash of the pair."""
        variants = self.variants
        if len(variants) == 1:
            return variants[0]
        digest = blake2b(f"{enrollment_id}:{step}".encode(), digest_size=8).digest()
        pick = int.from_bytes(digest, "big") % variants[-1].upto
        for v in variants:
            if pick < v.upto:
                return v
        return variants[-1]

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
        if nxt >= len(self.steps) or self.steps[step].ends:
            return -1
        return self.steps[nxt].wait_ms


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
        roots = templates.roots(subject, *models.step_templates(step))
        action = step if SPECS[step.kind].family == "action" else None
        variants = _variants(step, subject)
        for v in variants:
            roots |= templates.roots(v.body, v.subject)
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
                action=action,
                ends=step.kind == "enroll" and step.then == "complete",
                track_clicks=models.tracks_clicks(step, seq.track),
                variants=variants,
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


def _variants(step: models.Step, subject: str | None) -> tuple[VariantPlan, ...]:
    """The step's variants as sent (`subject`: the step's as sent): all of them by weight,
    or its winner alone once there is one."""
    if not step.variants:
        return ()
    chosen = [v for v in step.variants if step.winner is None or v.id == step.winner]
    out, upto = [], 0
    for v in chosen or step.variants:
        upto += v.weight
        own_subject = v.subject if v.subject is not None else subject
        out.append(VariantPlan(v.id, upto, v.body or step.body, own_subject))
    return tuple(out)


class Plans:
    """Plans by key (`Claimed.plan_key`: the sequence id, or "<id>@<steps version>" for an
    enrollment on a later version of the steps), refreshed when a mirror shows a newer
    version of the document."""

    def __init__(self, store: Store, size: int = CACHE_SIZE) -> None:
        self.store = store
        self.size = size
        self._plans: OrderedDict[str, Plan] = OrderedDict()
        # Reads in flight, so concurrent shard batches fetch a document once.
        self._loading: dict[str, asyncio.Future[Plan]] = {}

    def cached(self, key: str, version: int) -> Plan | None:
        plan = self._plans.get(key)
        if plan is None or plan.version < version:
            return None
        return plan

    async def load(self, tenant: str, key: str, version: int) -> Plan:
        """The plan of `key` at document `version` or newer; NotFound when the document is
        gone. A key's steps are those of its steps version (the document's own when it is
        the newest), the rest (senders, schedule) the document's."""
        plan = self.cached(key, version)
        if plan is not None:
            return plan
        pending = self._loading.get(key)
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
        self._loading[key] = future
        try:
            sequence_id, _, steps_version = key.partition("@")
            seq, current = await self.store.sequences.get_versioned(tenant, sequence_id)
            wanted = int(steps_version or 1)
            if wanted != seq.version:
                steps = await self.store.sequences.steps_at(tenant, sequence_id, wanted)
                seq = msgspec.structs.replace(seq, steps=steps)
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
            if self._loading.get(key) is future:
                del self._loading[key]
        self._plans[key] = plan
        self._plans.move_to_end(key)
        while len(self._plans) > self.size:
            self._plans.popitem(last=False)
        return plan
