"""Enrolling many contacts in one sequence: the one path behind the single and batch
enrollment endpoints, the intake stream and the CSV import.

A group of items costs a fixed number of round trips whatever its size: the sequence,
the upsert of inline contacts (`store.upserts`), the suppression screen
(`store.screening`), and one `enroll` script call per shard and 500 items. An item that
cannot be enrolled gets its own error, the same domain exception the single endpoint
raises, with field paths relative to the item (`contact.phone`, `contact_id`); callers
put them under their own root (`items[3].`). A failure of the whole group (the sequence
is unknown or not active) is raised instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from seqd import ids, models
from seqd.errors import Conflict, FieldError, Invalid, NotFound, SeqdError
from seqd.kinds import Channel
from seqd.models import SequenceStatus
from seqd.schedules import Schedule
from seqd.store import screening, upserts
from seqd.store.codec import encode_json
from seqd.store.db import Store
from seqd.store.enrollments import EnrollItem, EnrollResult
from seqd.times import now_ms, to_rfc3339
from seqd.timing.due import due
from seqd.timing.policy import Policy, jitter_key, step_timing, zone_text
from seqd.timing.zones import RecipientZone


class Item(msgspec.Struct, frozen=True):
    """One contact to enroll: an existing contact's id, or the fields of one to upsert."""

    contact_id: str | None = None
    contact: dict[str, Any] | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    # `metadata` as JSON when `prepare` already encoded it ("" when empty): not twice.
    metadata_json: str | None = None
    # EnrollmentCreate.if_busy == "queue".
    queue: bool = False


@dataclass(slots=True)
class ItemOutcome:
    """An item's result: an enrollment (maybe one that existed), or an error with its
    machine-readable `reason` (the intake stream and the import report it)."""

    enrollment: models.Enrollment | None = None
    # Set when enrolled (also without `full`, when `enrollment` is not built).
    enrollment_id: str | None = None
    idempotent: bool = False
    contact_id: str | None = None
    # Inline contacts: what the upsert did (created | updated | unchanged).
    change: str | None = None
    error: SeqdError | None = None
    reason: str = ""
    # Queued (`enrollment_id` is made later) behind this live exclusive enrollment.
    behind: str | None = None

    def fail(self, reason: str, error: SeqdError) -> None:
        self.reason, self.error = reason, error


def check_metadata(metadata: dict[str, Any], path: str = "metadata") -> str:
    """`metadata` as JSON ("" when empty); Invalid when it is too large."""
    if not metadata:
        return ""
    text = encode_json(metadata)
    if len(text) > models.METADATA_MAX_BYTES:
        raise Invalid.field(path, f"larger than {models.METADATA_MAX_BYTES} bytes as JSON")
    return text


def prepare(body: models.EnrollmentCreate, region: str | None) -> Item:
    """Validate one enrollment request; Invalid names each bad field relative to it."""
    if (body.contact_id is None) == (body.contact is None):
        message = "give exactly one of contact_id and contact"
        raise Invalid([FieldError("contact_id", message), FieldError("contact", message)])
    md = check_metadata(body.metadata)
    fields = None
    if body.contact is not None:
        fields = models.new_contact_fields(body.contact, region, "contact.")
    return Item(body.contact_id, fields, body.metadata, md, body.if_busy == "queue")


@dataclass(frozen=True, slots=True)
class Target:
    """What a group of items is enrolled into: the sequence, its version, the channels
    the tenant has any suppression on (for the screen) and the sequence's schedule."""

    seq: models.Sequence
    version: int
    listed: frozenset[Channel] | None = None
    schedule: Schedule | None = None

    def timing(self, policy: Policy) -> Timing:
        return Timing(policy, self.schedule)


def _active(seq: models.Sequence) -> None:
    if seq.status != SequenceStatus.ACTIVE:
        raise Conflict(
            f"sequence {seq.id} is {seq.status.value}, not active", status=seq.status.value
        )


async def active_sequence(store: Store, tenant: str, sid: str) -> tuple[models.Sequence, int]:
    """The sequence and its version; NotFound, or Conflict when it is not active."""
    seq, version = await store.sequences.get_versioned(tenant, sid)
    _active(seq)
    return seq, version


async def target(store: Store, tenant: str, sid: str) -> Target:
    """`active_sequence` and the suppression lists' presence in one round trip, and the
    sequence's schedule (a second one, when it has a schedule)."""
    seq, version, listed = await store.sequences.get_listed(tenant, sid)
    _active(seq)
    return Target(seq, version, listed, await schedule_of(store, tenant, seq))


async def schedule_of(store: Store, tenant: str, seq: models.Sequence) -> Schedule | None:
    """The sequence's schedule; None without one (or when it was deleted meanwhile)."""
    if seq.schedule_id is None:
        return None
    found = await store.schedules.lookup([(tenant, seq.schedule_id)])
    return found.get((tenant, seq.schedule_id))


@dataclass(frozen=True, slots=True)
class Timing:
    """How the first step's time is decided: the process's policy and the schedule."""

    policy: Policy
    schedule: Schedule | None = None

    def timing(self, policy: Policy) -> Timing:
        return Timing(policy, self.schedule)


async def _first_dues(
    store: Store,
    tenant: str,
    seq: models.Sequence,
    timing: Timing,
    contact_ids: list[str],
    known: dict[str, models.Contact],
) -> dict[str, tuple[int, str]]:
    """contact id -> (when its first step goes, its enrollment's `z`), for the contacts
    whose zone matters to that: under a schedule, for a quiet-hours step, a send_at or
    wait_days. Contacts not in `known` are read (their timezone and phone)."""
    step = step_timing(seq.steps[0])
    rules = timing.policy.rules(tenant, timing.schedule)
    if not (rules.schedule or (step.quiet and rules.quiet) or step.send_at or step.wait_days):
        return {}
    facts: dict[str, tuple[str | None, str | None]] = {
        cid: (c.timezone, c.phone) for cid, c in known.items()
    }
    unread = [
        c for c in dict.fromkeys(contact_ids) if c not in facts and ids.is_valid(c, ids.CONTACT)
    ]
    if unread:
        pipe = store.client.pipeline(transaction=False)
        for cid in unread:
            pipe.hmget(
                store.keys.contact(ids.shard_of(cid, store.keys.shards), cid), ["timezone", "phone"]
            )
        for cid, (tz, phone) in zip(unread, await pipe.execute(), strict=True):
            facts[cid] = (tz, phone)
    now = now_ms()
    out = {}
    # Without the schedule's jitter (due.jittered: the only use of the key) the time depends
    # on the recipient's zones alone: the contacts of one area code share one computation.
    decided: dict[RecipientZone, tuple[int, str]] = {}
    for cid in contact_ids:
        tz, phone = facts.get(cid, (None, None))
        recipient = timing.policy.recipient(tenant, timing.schedule, tz, phone)
        found = None if rules.jitter_ms else decided.get(recipient)
        if found is None:
            got = due(rules, step, recipient, now, jitter_key(cid, seq.id, 0))
            found = decided[recipient] = (got.at, zone_text(got))
        out[cid] = found
    return out


def under(error: SeqdError, root: str) -> SeqdError:
    """The same error with its field paths put under `root` (`contact.`, `items[3].`)."""
    if isinstance(error, Invalid):
        return Invalid([FieldError(root + e.path, e.message) for e in error.errors])
    extra = dict(error.extra)
    if extra.get("field"):
        extra["field"] = root + extra["field"]
    return type(error)(error.detail, **extra)


def _failure(result: EnrollResult, seq: models.Sequence) -> tuple[str, SeqdError]:
    if result.code == "CONTACT_NOT_FOUND":
        return "contact_not_found", NotFound(f"no contact {result.detail}", field="contact_id")
    if result.code == "SEQUENCE_NOT_ACTIVE":
        return "sequence_not_active", Conflict(
            f"sequence {seq.id} is {result.detail}, not active", status=result.detail
        )
    if result.code == "BUSY":
        return "busy", Conflict(
            f"the contact is live in exclusive enrollment {result.detail}; "
            'enroll with "if_busy": "queue" to start when it ends',
            field="contact_id",
            enrollment_id=result.detail,
        )
    if result.code == "REENROLL_NEVER":
        return "reenroll_not_allowed", Conflict(
            f"the contact was enrolled in sequence {seq.id} before ({result.detail}) and "
            'its reenroll rule is "never"',
            field="contact_id",
            enrollment_id=result.detail,
        )
    if result.code == "REENROLL_TOO_SOON":
        last, _, allowed = result.detail.rpartition(":")
        return "reenroll_not_allowed", Conflict(
            f"the contact's last enrollment in sequence {seq.id} ({last}) ended too recently "
            "for its reenroll rule",
            field="contact_id",
            enrollment_id=last,
            reenroll_at=to_rfc3339(int(allowed)),
        )
    return "failed", Conflict(f"{result.code}: {result.detail}")


async def enroll(
    store: Store,
    tenant: str,
    seq: models.Sequence,
    version: int,
    items: list[Item],
    *,
    full: bool = True,
    listed: frozenset[Channel] | None = None,
    timing: Timing | None = None,
) -> list[ItemOutcome]:
    """Enroll each item in `seq` (from `active_sequence` or `target`); one ItemOutcome per
    item, in order. `full` False leaves `ItemOutcome.enrollment` unset (only
    `enrollment_id`); `listed` is `Target.listed` (None: read here); `timing` decides the
    first step's time in each contact's zone (None: enrollment + its wait_minutes)."""
    outcomes = [ItemOutcome(contact_id=item.contact_id) for item in items]
    known: dict[str, models.Contact] = {}
    inline = [i for i, item in enumerate(items) if item.contact is not None]
    if inline:
        rows = [items[i].contact for i in inline]
        upserted = await upserts.upsert_many(store, tenant, rows)  # type: ignore[arg-type]
        for i, result in zip(inline, upserted, strict=True):
            if isinstance(result, SeqdError):
                outcomes[i].fail("conflict", under(result, "contact."))
            else:
                outcomes[i].contact_id = result.contact.id
                outcomes[i].change = result.change
                known[result.contact.id] = result.contact

    todo = [i for i, o in enumerate(outcomes) if o.error is None and o.contact_id]
    blocked = await screening.suppressed(
        store, tenant, seq, [outcomes[i].contact_id or "" for i in todo], known, listed
    )
    if blocked:
        for i in todo:
            cid = outcomes[i].contact_id
            if cid in blocked:
                outcomes[i].fail(
                    "suppressed",
                    Conflict(
                        f"contact {cid} is suppressed on every channel sequence {seq.id} uses",
                        field="contact_id" if items[i].contact is None else "contact",
                        contact_id=cid,
                    ),
                )
        todo = [i for i in todo if outcomes[i].error is None]

    dues: dict[str, tuple[int, str]] = {}
    if timing is not None and todo:
        cids = [outcomes[i].contact_id or "" for i in todo]
        dues = await _first_dues(store, tenant, seq, timing, cids, known)

    def enroll_items(positions: list[int]) -> list[EnrollItem]:
        out = []
        for i in positions:
            cid = outcomes[i].contact_id or ""
            at, zone = dues.get(cid, (None, ""))
            item = items[i]
            out.append(EnrollItem(cid, item.metadata, item.metadata_json, at, zone, item.queue))
        return out

    results = await store.enrollments.enroll(tenant, seq, enroll_items(todo), full=full)
    missing = [
        k
        for k, r in enumerate(results)
        if r.code == "SEQUENCE_NOT_ACTIVE" and r.detail == "missing"
    ]
    if missing:
        # A shard never got the sequence's mirror (a crash right after it was saved).
        await store.sequences.sync(tenant, seq, version, [])
        retried = enroll_items([todo[k] for k in missing])
        again = await store.enrollments.enroll(tenant, seq, retried, full=full)
        for k, retry in zip(missing, again, strict=True):
            results[k] = retry
    for i, enrolled in zip(todo, results, strict=True):
        if enrolled.id is not None:
            outcomes[i].enrollment = enrolled.enrollment
            outcomes[i].enrollment_id = enrolled.id
            outcomes[i].idempotent = enrolled.idempotent
            outcomes[i].behind = enrolled.behind
        else:
            outcomes[i].fail(*_failure(enrolled, seq))
    return outcomes
