"""A process's time rules per tenant and sequence: the tenant's quiet hours and default
zone (config), a sequence's schedule (compiled), each step's waits; and the zone of a
contact under them. The enroll path, the dispatcher and the preview all start here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from seqd.schedules import Schedule, compile_calendar, fixed_zone
from seqd.store.codec import zone_field
from seqd.timing.due import Due, Rules, StepTiming
from seqd.timing.local import parse_hhmm
from seqd.timing.quiet import QuietCalendars
from seqd.timing.zones import RecipientZone, phone_key, resolve

if TYPE_CHECKING:
    from seqd.config import Config
    from seqd.models import Step


# The step kinds SMS quiet hours hold back (unless the step is transactional).
QUIET_KINDS = frozenset({"sms"})


def step_timing(step: Step) -> StepTiming:
    """What a step says about its time; quiet hours apply to SMS that is not transactional."""
    return StepTiming(
        wait_minutes=step.wait_minutes,
        wait_days=step.wait_days,
        send_at=None if step.send_at is None else parse_hhmm(step.send_at),
        quiet=step.kind in QUIET_KINDS and not step.transactional,
    )


# Contacts' zones kept; cleared when there are more.
RECIPIENTS_KEPT = 65_536


class Policy:
    """Timing settings of every tenant, from config, built once per tenant."""

    __slots__ = ("_quiet", "_recipients", "_rules", "config")

    def __init__(self, config: Config) -> None:
        self.config = config
        # (tenant, schedule's default zone, timezone, phone_key) -> the contact's zones: a
        # step resolves them at its send-time check and again for its next step's time, and
        # the contacts of one exchange and zone share them.
        self._recipients: dict[tuple[str | None, ...], RecipientZone] = {}
        self._quiet: dict[str, QuietCalendars | None] = {}
        self._rules: dict[tuple[str, str, int], Rules] = {}

    def quiet(self, tenant: str) -> QuietCalendars | None:
        if tenant not in self._quiet:
            spec = self.config.quiet_hours_for(tenant)
            self._quiet[tenant] = QuietCalendars(spec, spec.all_regions()) if spec.enabled else None
        return self._quiet[tenant]

    def rules(self, tenant: str, schedule: Schedule | None) -> Rules:
        """The rules of a sequence of `tenant` under `schedule` (None: no windows)."""
        key = (tenant, schedule.id, schedule.version) if schedule else (tenant, "", 0)
        found = self._rules.get(key)
        if found is None:
            if len(self._rules) >= 4096:
                self._rules.clear()
            if schedule is None:
                found = Rules(quiet=self.quiet(tenant))
            else:
                found = Rules(
                    schedule=compile_calendar(schedule),
                    schedule_zone=fixed_zone(schedule),
                    jitter_ms=schedule.jitter_seconds * 1000,
                    quiet=self.quiet(tenant),
                )
            self._rules[key] = found
        return found

    def recipient(
        self, tenant: str, schedule: Schedule | None, timezone: str | None, phone: str | None
    ) -> RecipientZone:
        """Where a contact with `timezone` and `phone` is, for a sequence under `schedule`."""
        default = schedule.default_timezone if schedule is not None else None
        key = (tenant, default, timezone, phone_key(phone) if phone else phone)
        found = self._recipients.get(key)
        if found is None:
            if len(self._recipients) >= RECIPIENTS_KEPT:
                self._recipients.clear()
            found = resolve(timezone, phone, default, self.config.default_timezone_for(tenant))
            self._recipients[key] = found
        return found


def zone_text(decided: Due) -> str:
    """The enrollment's `z` field (timezone_source, timezone_used), as the store keeps it."""
    return zone_field(decided.source, decided.zone)


def jitter_key(contact_id: str, sequence_id: str, step: int) -> str:
    """What fixes a step's jitter: one live enrollment per (sequence, contact), so this is
    per enrollment and step, and known before the enrollment's id is made."""
    return f"{contact_id}:{sequence_id}:{step}"
