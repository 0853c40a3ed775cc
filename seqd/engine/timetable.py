"""The dispatcher's time rules: each step's next due time from the previous send, and the
send-time check that defers a step whose window (or quiet hours) is closed when it comes
due. Schedules are read from the store and kept `refresh_ms`, so an edited schedule re-times
the steps it governs when they next come due."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from seqd.engine.plans import Plan
from seqd.schedules import Schedule
from seqd.store.claims import Claimed
from seqd.store.db import Store
from seqd.store.settles import Defer
from seqd.times import now_ms
from seqd.timing.due import Rules, StepTiming, due
from seqd.timing.policy import Policy, jitter_key, zone_text

# How long a schedule read from the store is used before it is read again.
REFRESH_MS = 5_000


def _inert(rules: Rules, timing: StepTiming) -> bool:
    """True when no rule can move the step: its time is its wait_minutes after the last."""
    return (
        rules.schedule is None
        and not (timing.quiet and rules.quiet is not None)
        and timing.send_at is None
        and not timing.wait_days
    )


class Timetable:
    def __init__(
        self,
        store: Store,
        policy: Policy,
        *,
        clock: Callable[[], int] = now_ms,
        refresh_ms: int = REFRESH_MS,
    ) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock
        self.refresh_ms = refresh_ms
        # (tenant, schedule id) -> (the schedule, None when gone; when it was read)
        self._schedules: dict[tuple[str, str], tuple[Schedule | None, int]] = {}

    async def load(self, plans: Mapping[str, Plan], items: Iterable[Claimed]) -> None:
        """Read the schedules of the items' sequences not read in the last `refresh_ms`."""
        now = self.clock()
        wanted = set()
        for item in items:
            plan = plans.get(item.plan_key)
            if plan is not None and plan.schedule_id is not None:
                key = (item.enrollment.tenant, plan.schedule_id)
                kept = self._schedules.get(key)
                if kept is None or now - kept[1] >= self.refresh_ms:
                    wanted.add(key)
        if wanted:
            found = await self.store.schedules.lookup(wanted)
            for key in wanted:
                self._schedules[key] = (found.get(key), now)

    def _schedule(self, tenant: str, plan: Plan) -> Schedule | None:
        if plan.schedule_id is None:
            return None
        kept = self._schedules.get((tenant, plan.schedule_id))
        return kept[0] if kept is not None else None

    def wait_after(self, plan: Plan, item: Claimed, step: int, at: int) -> int:
        """ms from a send of step `step` of claimed `item` at `at` to the next step's due
        time; -1 after the last."""
        nxt = step + 1
        if nxt >= len(plan.steps):
            return -1
        timing = plan.steps[nxt].timing
        e = item.enrollment
        schedule = self._schedule(e.tenant, plan)
        rules = self.policy.rules(e.tenant, schedule)
        if _inert(rules, timing):
            return plan.steps[nxt].wait_ms
        c = item.contact
        recipient = self.policy.recipient(e.tenant, schedule, c.get("timezone"), c.get("phone"))
        decided = due(rules, timing, recipient, at, jitter_key(e.contact, e.sequence, nxt))
        return max(0, decided.at - at)

    def deferral(self, item: Claimed, plan: Plan, now: int) -> Defer | None:
        """The `defer` of a step that came due while its window or quiet hours are closed
        (the zone or the schedule changed since its time was set); None when it may go."""
        e = item.enrollment
        step = int(e.index)
        if step >= len(plan.steps):
            return None
        sp = plan.steps[step]
        schedule = self._schedule(e.tenant, plan)
        rules = self.policy.rules(e.tenant, schedule)
        if _inert(rules, sp.timing):
            return None
        c = item.contact
        recipient = self.policy.recipient(e.tenant, schedule, c.get("timezone"), c.get("phone"))
        key = jitter_key(e.contact, e.sequence, step)
        decided = due(rules, sp.timing, recipient, now, key, waits=False)
        if decided.at <= now:
            return None
        return Defer(
            id=item.id, token=e.token, step=step, kind=sp.kind, at=now, seq=e.sequence,
            until=decided.at, reason=decided.moved_by[0], zone=zone_text(decided),
        )  # fmt: skip
