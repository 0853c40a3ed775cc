"""The dispatcher's time rules: each step's next due time from the previous send, and the
send-time check that defers a step whose window (or quiet hours) is closed when it comes
due. Schedules are read from the store and kept `refresh_ms`, so an edited schedule re-times
the steps it governs when they next come due."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from seqd.engine.plans import Plan
from seqd.schedules import Schedule
from seqd.store.claims import Claimed
from seqd.store.codec import zone_field
from seqd.store.db import Store
from seqd.store.settles import Defer
from seqd.times import now_ms
from seqd.timing.due import Reopening, Rules, StepTiming, due, jittered, open_span, reopening
from seqd.timing.policy import Policy, jitter_key, zone_text
from seqd.timing.zones import RecipientZone

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


def _plain(timing: StepTiming) -> bool:
    """True when the step's time is its wait_minutes after the last unless a rule moves it."""
    return timing.send_at is None and not timing.wait_days


# Rules and zones whose open spans are kept, and spans kept for each.
OPEN_KEPT = 4096
SPANS_KEPT = 4


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
        # (rules, quiet, region, zones) -> the last spans found open under them
        # (timing.due.open_span): the steps of a burst share it, and a moment inside it
        # needs no more work.
        self._open: dict[tuple[object, ...], tuple[tuple[int, int], ...]] = {}
        # The same key -> (a closed moment, its reopening): the answer until `stable`.
        self._closed: dict[tuple[object, ...], tuple[int, Reopening]] = {}
        # Enrollment id -> the rules and zones its send-time check found, for its next
        # step's time: emptied when schedules are read (`load`), so never older than them.
        self._checked: dict[str, tuple[Rules, RecipientZone]] = {}
        # (tenant, schedule id) -> that schedule as read and its rules, as `_checked`.
        self._ruled: dict[tuple[str, str | None], tuple[Schedule | None, Rules]] = {}

    def _is_open(self, rules: Rules, timing: StepTiming, recipient: RecipientZone, at: int) -> bool:
        key = (rules, timing.quiet, recipient.region, recipient.zones)
        known = self._open.get(key, ())
        for start, end in known:
            if start <= at < end:
                return True
        span = open_span(rules, timing, recipient, at)
        if span is None:
            return False
        if len(self._open) >= OPEN_KEPT:
            self._open.clear()
        # The newest first; a few kept: a step's check (now) and its next step's time (a
        # wait later) fall in different spans.
        self._open[key] = (span, *known[: SPANS_KEPT - 1])
        return True

    async def load(self, plans: Mapping[str, Plan], items: Iterable[Claimed]) -> None:
        """Read the schedules of the items' sequences not read in the last `refresh_ms`."""
        self._checked, self._ruled = {}, {}
        now = self.clock()
        wanted = set()
        for tenant, plan_key in {(item.enrollment.tenant, item.plan_key) for item in items}:
            plan = plans.get(plan_key)
            if plan is not None and plan.schedule_id is not None:
                key = (tenant, plan.schedule_id)
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

    def _rules(self, tenant: str, plan: Plan) -> tuple[Schedule | None, Rules]:
        """The schedule of `plan` as last read, and the rules of the tenant under it."""
        key = (tenant, plan.schedule_id)
        found = self._ruled.get(key)
        if found is None:
            schedule = self._schedule(tenant, plan)
            found = self._ruled[key] = (schedule, self.policy.rules(tenant, schedule))
        return found

    def wait_after(self, plan: Plan, item: Claimed, step: int, at: int) -> int:
        """ms from a send of step `step` of claimed `item` at `at` to the next step's due
        time; -1 after the last."""
        nxt = step + 1
        if nxt >= len(plan.steps):
            return -1
        timing = plan.steps[nxt].timing
        e = item.enrollment
        checked = self._checked.get(item.id)
        if checked is not None:
            rules, recipient = checked
            if _inert(rules, timing):
                return plan.steps[nxt].wait_ms
        else:
            schedule, rules = self._rules(e.tenant, plan)
            if _inert(rules, timing):
                return plan.steps[nxt].wait_ms
            c = item.contact
            recipient = self.policy.recipient(e.tenant, schedule, c.get("timezone"), c.get("phone"))
        wait = plan.steps[nxt].wait_ms
        if _plain(timing) and self._is_open(rules, timing, recipient, at + wait):
            return wait
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
        schedule, rules = self._rules(e.tenant, plan)
        if _inert(rules, sp.timing):
            return None
        c = item.contact
        recipient = self.policy.recipient(e.tenant, schedule, c.get("timezone"), c.get("phone"))
        self._checked[item.id] = (rules, recipient)
        found = self._known_closed(rules, sp.timing, recipient, now)
        if found is None:
            if self._is_open(rules, sp.timing, recipient, now):
                return None
            found = self._reopening(rules, sp.timing, recipient, now)
        key = jitter_key(e.contact, e.sequence, step)
        if found is None:
            decided = due(rules, sp.timing, recipient, now, key, waits=False)
            if decided.at <= now:
                return None
            until, reason, zone = decided.at, decided.moved_by[0], zone_text(decided)
        else:
            until = jittered(rules, key, found.at, found.end, found.moved)
            reason, zone = found.moved[0], zone_field(recipient.source, recipient.used)
        return Defer(
            id=item.id, token=e.token, step=step, kind=sp.kind, at=now, seq=e.sequence,
            until=until, reason=reason, zone=zone,
        )  # fmt: skip

    def _known_closed(
        self, rules: Rules, timing: StepTiming, recipient: RecipientZone, at: int
    ) -> Reopening | None:
        """The reopening kept for these rules and zones when `at` is within its answer."""
        known = self._closed.get((rules, timing.quiet, recipient.region, recipient.zones))
        if known is not None and known[0] <= at < known[1].stable:
            return known[1]
        return None

    def _reopening(
        self, rules: Rules, timing: StepTiming, recipient: RecipientZone, at: int
    ) -> Reopening | None:
        """timing.due.reopening of a closed moment, kept for the steps after it."""
        key = (rules, timing.quiet, recipient.region, recipient.zones)
        found = reopening(rules, timing, recipient, at)
        if found is not None:
            if len(self._closed) >= OPEN_KEPT:
                self._closed.clear()
            self._closed[key] = (at, found)
        return found
