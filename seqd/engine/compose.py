"""From a claimed step to the message to send, or to why it is not sent.

Pure functions of what `claimDue` returned (the enrollment and contact hashes), the
sequence's plan and the contact's suppressions: no I/O, so the rules are tested without
a store and the dispatcher's hot loop stays a dict lookup and a template render per step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from seqd import templates
from seqd.channels.base import OutboundMessage, SendResult, WebhookCall, message_key
from seqd.conditions import Facts
from seqd.engine.plans import Plan, StepPlan
from seqd.kinds import ADDRESS_FIELD, SPECS, Kind
from seqd.models import CancelReason, PausedReason
from seqd.store.claims import Claimed
from seqd.store.dispatch import SuppressionRecord
from seqd.store.mirrors import CONTACT_OWNER
from seqd.store.settles import Cancel, Complete, Failed, Pause, Settled, Skipped, TaskStep

_CANCEL_REASONS = frozenset(r.value for r in CancelReason)

_decode = msgspec.json.Decoder().decode


@dataclass(slots=True, eq=False)
class Job:
    """A step to send, then what came of it."""

    id: str
    token: str
    step: int
    kind: Kind
    # next_run_at of the step (ms), for lateness.
    due: int
    # Attempts already made at this step.
    attempts: int
    message: OutboundMessage
    # What was claimed: the next step's time is read in the contact's zone (timetable).
    item: Claimed | None = None
    started: bool = False
    # Admitted to send, its send not started yet (engine/sending.py `pending`).
    pending: bool = False
    result: SendResult | None = None
    # ms when the send ended.
    at: int = 0
    # The A/B variant sent (recorded with the step), None for a step without variants.
    variant: str | None = None
    # The sender its contact is pinned to once its send starts (a sticky rotation's pick).
    pin: str | None = None
    # The pool's sender it goes out from (recorded with the step), None: the tenant's channel.
    sender: str | None = None


def suppressed_reason(record: SuppressionRecord, kind: Kind) -> str:
    """Why a contact whose every remaining step is suppressed is cancelled: the record's
    reason when it is a cancel reason, else the kind's."""
    reason = record.reason
    if reason in _CANCEL_REASONS:
        return reason
    return SPECS[kind].cancel_reason or CancelReason.MANUAL.value


def compose(
    item: Claimed, plan: Plan, suppressed: Mapping[str, SuppressionRecord], now: int
) -> Job | Settled:
    """The Job for `item`'s current step, or the outcome that ends it without a send.

    `suppressed` maps a channel to the suppression record of this contact's address on it.
    """
    e, c = item.enrollment, item.contact
    step = int(e.index)
    token = e.token
    if step >= len(plan.steps):
        return Complete(id=item.id, token=token, step=step, kind="", at=now)
    sp = plan.steps[step]
    kind = sp.kind
    if c.get(CONTACT_OWNER) != e.tenant:
        return Failed(
            id=item.id, token=token, step=step, kind=kind, at=now, error="contact not found"
        )
    if sp.gate is not None and not sp.gate(Facts(c, e.metadata, e.outcomes, step)):
        return Skipped(
            id=item.id, token=token, step=step, kind=kind, at=now, reason="condition",
            wait=plan.wait_after(step),
        )  # fmt: skip
    if sp.action is not None:
        return _action(item, plan, sp, step, now)
    if kind in suppressed:
        if any(later.kind not in suppressed for later in plan.steps[step + 1 :]):
            return Skipped(
                id=item.id, token=token, step=step, kind=kind, at=now, reason="suppressed",
                wait=plan.wait_after(step),
            )  # fmt: skip
        reason = suppressed_reason(suppressed[kind], kind)
        return Cancel(id=item.id, token=token, step=step, kind=kind, at=now, reason=reason)
    field = ADDRESS_FIELD[kind]
    to = c.get(field)
    if not to:
        return _pause_missing(item, step, kind, now, field)
    context = _context(item, sp)
    body_t, subject_t, variant = sp.body, sp.subject, None
    if sp.variants:
        chosen = sp.variant_for(item.id, step)
        body_t, subject_t, variant = chosen.body, chosen.subject, chosen.id
    if sp.thread_root is not None and plan.steps[sp.thread_root].variants:
        # A reply threads under the subject its first email was sent with.
        subject_t = plan.steps[sp.thread_root].variant_for(item.id, sp.thread_root).subject
    try:
        body = templates.render(body_t, context)
        subject = None if subject_t is None else templates.render(subject_t, context)
    except templates.MissingVariable as exc:
        return _pause_missing(item, step, kind, now, exc.variable)
    if subject is not None:
        if sp.reply_subject and not subject[:3].lower() == "re:":
            subject = "Re: " + subject
        if "\r" in subject or "\n" in subject:
            return Failed(
                id=item.id, token=token, step=step, kind=kind, at=now,
                error="subject: contains a line break (CR or LF); refused as a header value",
            )  # fmt: skip
    message = OutboundMessage(
        tenant=e.tenant,
        enrollment_id=item.id,
        contact_id=e.contact,
        sequence_id=e.sequence,
        step=step,
        kind=kind,
        to=to,
        body=body,
        subject=subject,
        thread_root=None if sp.thread_root is None else message_key(item.id, sp.thread_root),
    )
    return Job(
        id=item.id,
        token=token,
        step=step,
        kind=kind,
        due=int(e.due),
        attempts=int(e.attempts or 0),
        message=message,
        item=item,
        variant=variant,
    )


def _context(item: Claimed, sp: StepPlan) -> Mapping[str, Any]:
    """What the step's templates read: the contact's fields, and its `attributes` and the
    enrollment's `metadata` decoded when they read them."""
    c = item.contact
    if not (sp.needs_attributes or sp.needs_metadata):
        return c
    ctx = dict(c)
    if sp.needs_attributes:
        ctx["attributes"] = _decode(c.get("attributes") or "{}")
    if sp.needs_metadata:
        ctx["metadata"] = _decode(item.enrollment.metadata or "{}")
    return ctx


def _action(item: Claimed, plan: Plan, sp: StepPlan, step: int, now: int) -> Job | Settled:
    """An action kind's step (kinds.py `family`): a task is settled as it is (advance makes
    it, includes/tasks.lua; the lane names it); a webhook call or an enrollment is a Job
    for its sender (engine/actions.py)."""
    e, a = item.enrollment, sp.action
    assert a is not None
    context = _context(item, sp)
    try:
        if sp.kind == "task":
            title = templates.render(a.title if isinstance(a.title, str) else "", context)
            assignee = None
            if isinstance(a.assignee, str):
                assignee = templates.render(a.assignee, context).strip() or None
            due = a.due_in_minutes if isinstance(a.due_in_minutes, int) else None
            return TaskStep(
                id=item.id, token=e.token, step=step, kind=sp.kind, at=now,
                wait=plan.wait_after(step), title=title, assignee=assignee,
                due_in=-1 if due is None else due * 60_000, blocking=a.blocking is True,
                on_timeout="cancel" if a.on_timeout == "cancel" else "continue",
            )  # fmt: skip
        # An enroll step's body is the metadata the new enrollment gets: this one's.
        body = e.metadata or "" if sp.kind == "enroll" else ""
        if a.body:
            body = templates.render(a.body, context)
        headers = {}
        if isinstance(a.headers, dict):
            headers = {k: templates.render(v, context) for k, v in a.headers.items()}
    except templates.MissingVariable as exc:
        return _pause_missing(item, step, sp.kind, now, exc.variable)
    call = None
    if sp.kind == "webhook":
        call = WebhookCall(
            method=a.method if isinstance(a.method, str) else "POST",
            timeout_seconds=a.timeout_seconds if isinstance(a.timeout_seconds, float) else 10.0,
        )
    to = a.url if sp.kind == "webhook" else a.sequence_id
    message = OutboundMessage(
        tenant=e.tenant, enrollment_id=item.id, contact_id=e.contact, sequence_id=e.sequence,
        step=step, kind=sp.kind, to=to if isinstance(to, str) else "", body=body,
        headers=headers, call=call,
    )  # fmt: skip
    return Job(
        id=item.id, token=e.token, step=step, kind=sp.kind, due=int(e.due),
        attempts=int(e.attempts or 0), message=message, item=item,
    )  # fmt: skip


def _pause_missing(item: Claimed, step: int, kind: str, now: int, variable: str) -> Pause:
    return Pause(
        id=item.id, token=item.enrollment.token, step=step, kind=kind, at=now,
        reason=PausedReason.MISSING_VARIABLE.value, variable=variable,
    )  # fmt: skip
