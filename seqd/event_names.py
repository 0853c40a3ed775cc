"""Event types: the one list, on the floor so the API shapes and the store both read it
(each type's `data` shape is in `store/event_types.py`)."""

from __future__ import annotations

ENROLLMENT_TYPES = (
    "sequence.enrollment.created",
    "sequence.enrollment.paused",
    "sequence.enrollment.resumed",
    "sequence.enrollment.completed",
    "sequence.enrollment.cancelled",
)
TYPES: tuple[str, ...] = (
    *ENROLLMENT_TYPES,
    "sequence.step.sent",
    "sequence.step.skipped",
    "sequence.step.failed",
    # A step that came due outside its window or in quiet hours: `reason`, `until`.
    "sequence.step.deferred",
    "message.delivered",
    "message.undelivered",
    "contact.opted_out",
    "contact.opted_in",
    "contact.bounced",
    "contact.soft_bounced",
    "contact.auto_replied",
    "contact.deleted",
    # A contact event (POST /v1/contacts/{id}/events): its data, and `completed`, the
    # enrollments a goal (exit_on) completed.
    "contact.event_recorded",
)
KNOWN = frozenset(TYPES)
# An endpoint's `events` may be just this: every type, present and future.
WILDCARD = "*"
