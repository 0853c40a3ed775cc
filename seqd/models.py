"""The API's shapes as msgspec Structs, and the validation rules msgspec cannot express.

Inputs forbid unknown fields; outputs are what the store codec builds. Constraints are
named `Annotated` aliases so the OpenAPI document carries them too.
"""

from __future__ import annotations

import re
import zoneinfo
from enum import StrEnum
from functools import cache
from typing import Annotated, Any, ClassVar, Literal

import email_validator
import msgspec
from msgspec import UNSET, Meta, UnsetType

from seqd import conditions, goals, links, templates
from seqd.errors import FieldError, Invalid
from seqd.kinds import KIND_FIELDS, SPECS, Channel, Kind
from seqd.phones import normalize_phone as normalize_phone  # re-exported: callers use models
from seqd.sms import segments
from seqd.timing.local import parse_hhmm


class Input(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of every request body: an unknown field is a 422, never silently dropped."""


class Output(msgspec.Struct, kw_only=True):
    """Base of every response body."""


# -- constraints ---------------------------------------------------------------------
Name = Annotated[str, Meta(min_length=1, max_length=200)]
# Every character str.splitlines() breaks on (email folds headers by it), and NUL: none may
# be in a contact's text fields (`_one_line`), since templates put them into headers.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00"
# A lookahead, not `^[^...]*$`: Python's `$` also matches before a final newline.
ONE_LINE = {"pattern": "^(?![\\s\\S]*[" + "".join(f"\\u{ord(c):04x}" for c in LINE_BREAKS) + "])"}
ShortText = Annotated[str, Meta(max_length=200, extra_json_schema=ONE_LINE)]
LongText = Annotated[str, Meta(max_length=2000)]
Body = Annotated[str, Meta(min_length=1, max_length=10_000)]
Subject = Annotated[str, Meta(min_length=1, max_length=500)]
WaitMinutes = Annotated[int, Meta(ge=0, le=5_256_000, description="minutes; at most 10 years")]
AttrKey = Annotated[str, Meta(min_length=1, max_length=100)]
AttrValue = Annotated[str, Meta(max_length=2000, extra_json_schema=ONE_LINE)] | int | float | bool
Attributes = Annotated[dict[AttrKey, AttrValue], Meta(max_length=100)]
Metadata = Annotated[dict[str, Any], Meta(max_length=100)]
Timestamp = Annotated[str, Meta(description="RFC 3339 UTC with milliseconds")]
Id = Annotated[str, Meta(min_length=1, max_length=64)]
# Checked beyond their shape when a contact is written (`normalize_contact_fields`).
Phone = Annotated[
    str,
    Meta(
        max_length=64,
        description="E.164, or national with contacts.default_region; "
        "a number possible in its country's numbering plan",
    ),
]
TimeZone = Annotated[str, Meta(max_length=64, description="an IANA time zone (Europe/Paris)")]
Email = Annotated[
    str, Meta(max_length=320, description="an email address", extra_json_schema={"format": "email"})
]

METADATA_MAX_BYTES = 16 * 1024


class EnrollmentStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({EnrollmentStatus.COMPLETED, EnrollmentStatus.CANCELLED})
# Statuses in which an enrollment still counts as "in the sequence" (idempotent enroll).
LIVE = frozenset({EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED})


class SequenceStatus(StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    PAUSED = "paused"
    ARCHIVED = "archived"


class PausedReason(StrEnum):
    MANUAL = "manual"
    REPLY_RECEIVED = "reply_received"
    MISSING_VARIABLE = "missing_variable"
    DELIVERY_UNKNOWN = "delivery_unknown"
    # A blocking task step waits for its task (GET /v1/tasks) to be completed or time out.
    AWAITING_TASK = "awaiting_task"


class CancelReason(StrEnum):
    MANUAL = "manual"
    OPTED_OUT = "opted_out"
    BOUNCED = "bounced"
    FAILED = "failed"
    SEQUENCE_ARCHIVED = "sequence_archived"
    CONTACT_DELETED = "contact_deleted"
    # A blocking task step with on_timeout = cancel whose task was not completed in time.
    TASK_TIMED_OUT = "task_timed_out"


# -- contacts --------------------------------------------------------------------------
class ContactCreate(Input, kw_only=True):
    # OpenAPI: the rule between fields that `new_contact_fields` enforces.
    json_schema_extra: ClassVar[dict[str, Any]] = {
        "anyOf": [
            {"required": [name], "properties": {name: {"type": "string"}}}
            for name in ("phone", "email")
        ]
    }

    first_name: ShortText | None = None
    last_name: ShortText | None = None
    phone: Phone | None = None
    email: Email | None = None
    timezone: TimeZone | None = None
    external_id: ShortText | None = None
    attributes: Attributes = msgspec.field(default_factory=dict)


class ContactPatch(Input, kw_only=True):
    """Only the fields present change; `null` clears a field."""

    first_name: ShortText | UnsetType | None = UNSET
    last_name: ShortText | UnsetType | None = UNSET
    phone: Phone | UnsetType | None = UNSET
    email: Email | UnsetType | None = UNSET
    timezone: TimeZone | UnsetType | None = UNSET
    external_id: ShortText | UnsetType | None = UNSET
    attributes: Attributes | UnsetType = UNSET


class Contact(Output, kw_only=True):
    id: str
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    email: str | None = None
    timezone: str | None = None
    external_id: str | None = None
    attributes: dict[str, AttrValue] = msgspec.field(default_factory=dict)
    created_at: Timestamp
    updated_at: Timestamp


class ContactEnvelope(Output, kw_only=True):
    contact: Contact


_LINE_BREAK = re.compile(f"[{LINE_BREAKS}]")


def normalize_email(value: str) -> str:
    """The address with its domain lower-cased; ValueError when it is not one."""
    try:
        result = email_validator.validate_email(value, check_deliverability=False)
    except email_validator.EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return str(result.normalized)


@cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_timezone(value: str) -> str:
    if value not in _zones():
        raise ValueError("not an IANA time zone name (like Europe/Paris)")
    return value


def _one_line(fields: dict[str, Any]) -> list[FieldError]:
    """Text fields that could end up in a header (a Subject template may use any of them)
    hold no line break and no NUL: refused when given, not when the first email fails."""
    found = []
    values = [(k, v) for k, v in fields.items() if k != "attributes"]
    values += [(f"attributes.{k}", v) for k, v in (fields.get("attributes") or {}).items()]
    for path, value in values:
        if isinstance(value, str) and _LINE_BREAK.search(value):
            found.append(FieldError(path, "contains a line break or NUL (one line of text)"))
    return found


def normalize_contact_fields(fields: dict[str, Any], region: str | None) -> list[FieldError]:
    """Normalise phone/email/timezone in place; return the errors found."""
    errors = _one_line(fields)
    checks = {"phone": lambda v: normalize_phone(v, region), "email": normalize_email}
    checks["timezone"] = check_timezone
    for name, check in checks.items():
        value = fields.get(name)
        if isinstance(value, str):
            try:
                fields[name] = check(value)
            except ValueError as exc:
                errors.append(FieldError(name, str(exc)))
    return errors


def new_contact_fields(body: ContactCreate, region: str | None, root: str = "") -> dict[str, Any]:
    """The validated, normalised fields of a contact to create (or upsert); Invalid names
    each bad field under `root` (`contact.`, `items[3].contact.`)."""
    fields = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not None}
    errors = normalize_contact_fields(fields, region)
    if not fields.get("phone") and not fields.get("email"):
        errors += [
            FieldError("phone", "a contact needs a phone or an email"),
            FieldError("email", "a contact needs a phone or an email"),
        ]
    if errors:
        raise Invalid([FieldError(f"{root}{e.path}", e.message) for e in errors])
    return fields


# -- sequences -------------------------------------------------------------------------
WaitDays = Annotated[
    int, Meta(ge=0, le=3650, description="whole days; open days of the schedule if it has one")
]
# The pattern is stated for the document; the sequence's validation names the step.
SendAt = Annotated[
    str,
    Meta(
        max_length=5,
        description="local time of day, HH:MM",
        extra_json_schema={"pattern": r"^([01][0-9]|2[0-3]):[0-5][0-9]$"},
    ),
]


def step_templates(step: Step) -> tuple[str | None, ...]:
    """Every template of a step: its body and subject, a task's title and assignee, a
    webhook's header values."""
    out: list[str | None] = [step.body, step.subject]
    for name in ("title", "assignee"):
        value = getattr(step, name)
        if isinstance(value, str):
            out.append(value)
    if isinstance(step.headers, dict):
        out += step.headers.values()
    return tuple(out)


# The action kinds' fields (kinds.py: which kind takes which).
TaskTitle = Annotated[
    str,
    Meta(min_length=1, max_length=500, description="a template", extra_json_schema=ONE_LINE),
]
Assignee = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=200,
        description="a template: who the task is for",
        extra_json_schema=ONE_LINE,
    ),
]
DueInMinutes = Annotated[int, Meta(ge=1, le=5_256_000, description="minutes; at most 10 years")]
StepUrl = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=2000,
        description="http(s) URL; a public address unless webhooks.allow_private_targets",
    ),
]
HttpMethod = Literal["POST", "PUT", "PATCH", "GET", "DELETE"]
HeaderName = Annotated[
    str, Meta(min_length=1, max_length=100, pattern="^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
]
HeaderValue = Annotated[
    str, Meta(max_length=2000, description="a template", extra_json_schema=ONE_LINE)
]
StepHeaders = Annotated[dict[HeaderName, HeaderValue], Meta(max_length=50)]
CallTimeout = Annotated[float, Meta(gt=0, le=60, description="seconds")]
OnTimeout = Literal["continue", "cancel"]
Then = Literal["continue", "complete"]


class Tracking(Input, kw_only=True):
    """What is tracked of a step's messages: `clicks` rewrites the links of its body to
    seqd's redirect (seqd/clicks.py)."""

    clicks: bool = False


VariantId = Annotated[
    str,
    Meta(min_length=1, max_length=32, pattern="^[A-Za-z0-9_-]+$", description="a variant's name"),
]
VariantWeight = Annotated[int, Meta(ge=1, le=1_000_000, description="its share among the step's")]


class VariantIn(Input, kw_only=True):
    """One A/B variant of a step: its `body` and (email) `subject` replace the step's; absent,
    the step's own is sent."""

    id: VariantId
    weight: VariantWeight = 1
    body: Body | None = None
    subject: Subject | None = None


class Variant(Output, kw_only=True):
    id: str
    weight: int
    body: str | None = None
    subject: str | None = None


Variants = Annotated[list[VariantIn], Meta(min_length=1, max_length=26)]


class StepIn(Input, kw_only=True):
    """One step of a sequence: the fields every step takes and its kind's own (kinds.py;
    the OpenAPI document has one schema per kind, api/step_schemas.py)."""

    kind: Kind
    wait_minutes: WaitMinutes = 0
    wait_days: WaitDays = 0
    # The first open moment at or after this local time once the wait is over.
    send_at: SendAt | None = None
    # A message the contact asked for (a reply, a code): exempt from SMS quiet hours.
    transactional: bool = False
    # Required for sms and email; a webhook step's request body (a template).
    body: Body | None = None
    subject: Subject | None = None
    # Email only: thread this step under the first email (In-Reply-To, "Re: " subject).
    thread: bool = True
    # Overrides the sequence's `track` for this step.
    track: Tracking | None = None
    # A/B: each enrollment gets one, picked by weight from (enrollment id, step index).
    variants: Variants | None = None
    # Checked when the step comes due (seqd/conditions.py): sent only if `only_if` holds
    # and `skip_if` does not, else skipped (reason "condition").
    skip_if: conditions.Condition | None = None
    only_if: conditions.Condition | None = None
    # task: what to do and for whom; `due_in_minutes` from its creation; a blocking task
    # holds the enrollment (paused, awaiting_task) until completed or due, then `on_timeout`.
    # (Absent, not null, on other kinds' steps: each kind's fields are its own.)
    title: TaskTitle | UnsetType = UNSET
    assignee: Assignee | UnsetType = UNSET
    due_in_minutes: DueInMinutes | UnsetType = UNSET
    blocking: bool | UnsetType = UNSET
    on_timeout: OnTimeout | UnsetType = UNSET
    # webhook: the request (defaults POST, no extra headers, 10 s).
    url: StepUrl | UnsetType = UNSET
    method: HttpMethod | UnsetType = UNSET
    headers: StepHeaders | UnsetType = UNSET
    timeout_seconds: CallTimeout | UnsetType = UNSET
    # enroll: the sequence the contact is enrolled in, and what this one does then
    # (default continue).
    sequence_id: Id | UnsetType = UNSET
    then: Then | UnsetType = UNSET


class Step(Output, kw_only=True):
    kind: Kind
    wait_minutes: int
    wait_days: int = 0
    send_at: str | None = None
    transactional: bool = False
    body: str
    subject: str | None = None
    thread: bool = True
    track: Tracking | None = None
    segments: int | None = None
    encoding: Literal["gsm7", "ucs2"] | None = None
    variants: list[Variant] | None = None
    # Set by POST .../steps/{n}/winner: only this variant is sent from `winner_at` on; the
    # others stay listed (their sends are in the events and on the enrollments).
    winner: Annotated[
        str | None,
        Meta(
            description="the variant this version's step sends alone (POST .../winner); "
            "a new version keeps it only on the identical step"
        ),
    ] = None
    winner_at: Timestamp | None = None
    skip_if: conditions.Condition | None = None
    only_if: conditions.Condition | None = None
    # The action kinds' fields, present on their kind's steps only (kinds.py `fields`).
    title: str | UnsetType = UNSET
    assignee: str | UnsetType = UNSET
    due_in_minutes: int | UnsetType = UNSET
    blocking: bool | UnsetType = UNSET
    on_timeout: OnTimeout | UnsetType = UNSET
    url: str | UnsetType = UNSET
    method: HttpMethod | UnsetType = UNSET
    headers: dict[str, str] | UnsetType = UNSET
    timeout_seconds: float | UnsetType = UNSET
    sequence_id: str | UnsetType = UNSET
    then: Then | UnsetType = UNSET


Steps = Annotated[list[StepIn], Meta(min_length=1, max_length=50)]
SenderIds = Annotated[
    list[Id], Meta(max_length=100, description="ids of the tenant's senders of that channel")
]
# sticky: a contact keeps the sender it first got; round_robin: each step takes the next
# sender of the pool with budget.
Rotation = Literal["sticky", "round_robin"]


class SenderPools(Input, kw_only=True):
    """The senders a sequence sends each channel's steps from; an empty pool sends from the
    tenant's configured number or address."""

    sms: SenderIds = msgspec.field(default_factory=list)
    email: SenderIds = msgspec.field(default_factory=list)

    def of(self, kind: str) -> list[str]:
        return self.sms if kind == "sms" else self.email


class ReenrollAfter(Input, kw_only=True):
    """A contact may be enrolled again once this many days passed since its last
    enrollment in the sequence ended."""

    after_days: Annotated[int, Meta(ge=1, le=3650)]


# never: once per contact, ever; after_completion (the default, and the behaviour before
# the rule existed): again once the previous enrollment ended (completed or cancelled).
Reenroll = Literal["never", "after_completion"] | ReenrollAfter


# What an out-of-office reply does to the enrollment it is about (seqd/lifecycle/absence.py):
# nothing, a pause, or a pause that ends by itself after the return date the reply gives.
OnOutOfOffice = Literal["ignore", "pause", "pause_until_return"]
# Whom a reply stops: the contact's enrollments, or those of every contact of its account
# (its `account_id` attribute, else its email domain unless a free-mail one: accounts.py).
OnReplyScope = Literal["contact", "account"]


class SequenceCreate(Input, kw_only=True):
    name: Name
    description: LongText = ""
    status: Literal["draft", "active"] = "draft"
    steps: Steps
    on_reply: Literal["pause", "complete"] = "pause"
    on_reply_scope: OnReplyScope = "contact"
    on_out_of_office: OnOutOfOffice = "ignore"
    # The send windows its steps wait for (GET /schedules); none: any time.
    schedule_id: Id | None = None
    senders: SenderPools = msgspec.field(default_factory=SenderPools)
    rotation: Rotation = "sticky"
    # What is tracked of every step's messages (a step's own `track` overrides it).
    track: Tracking | None = None
    reenroll: Reenroll = "after_completion"
    # A contact is live in at most one exclusive sequence of the tenant at a time.
    exclusive: bool = False
    # Goals (seqd/goals.py): a contact event meeting one completes the enrollment.
    exit_on: goals.ExitOn = msgspec.field(default_factory=list)


class SequencePatch(Input, kw_only=True):
    name: Name | UnsetType = UNSET
    description: LongText | UnsetType = UNSET
    steps: Steps | UnsetType = UNSET
    status: Literal["draft", "active"] | UnsetType = UNSET
    on_reply: Literal["pause", "complete"] | UnsetType = UNSET
    on_reply_scope: OnReplyScope | UnsetType = UNSET
    on_out_of_office: OnOutOfOffice | UnsetType = UNSET
    schedule_id: Id | UnsetType | None = UNSET
    senders: SenderPools | UnsetType = UNSET
    rotation: Rotation | UnsetType = UNSET
    track: Tracking | UnsetType | None = UNSET
    reenroll: Reenroll | UnsetType = UNSET
    exclusive: bool | UnsetType = UNSET
    # Changed steps make a new version: "new" leaves live enrollments on the version they
    # run on; "all" moves them to the new steps (README, "Editing a live sequence").
    apply_to: Annotated[
        Literal["new", "all"],
        Meta(
            description="with steps: new = live enrollments keep the version they run on; "
            "all = they move to these steps, their next step re-timed from their last send "
            "(completed when its index is gone)"
        ),
    ] = "new"
    exit_on: goals.ExitOn | UnsetType = UNSET


class SequenceStats(Output, kw_only=True):
    active: int = 0
    paused: int = 0
    completed: int = 0
    cancelled: int = 0


class Sequence(Output, kw_only=True):
    id: str
    name: str
    description: str = ""
    status: SequenceStatus
    steps: list[Step]
    on_reply: Literal["pause", "complete"] = "pause"
    on_reply_scope: OnReplyScope = "contact"
    on_out_of_office: OnOutOfOffice = "ignore"
    schedule_id: str | None = None
    senders: SenderPools = msgspec.field(default_factory=SenderPools)
    rotation: Rotation = "sticky"
    track: Tracking | None = None
    reenroll: Reenroll = "after_completion"
    exclusive: bool = False
    # The version of `steps`: each change of the steps makes a new one; enrollments run on
    # the version they were enrolled on (their `sequence_version`).
    version: int = 1
    exit_on: list[goals.ExitRule] = msgspec.field(default_factory=list)
    created_at: Timestamp
    updated_at: Timestamp
    stats: SequenceStats = msgspec.field(default_factory=SequenceStats)


class SequenceEnvelope(Output, kw_only=True):
    sequence: Sequence


_SUBJECT_ONLY = "only {} steps take a subject".format(
    " and ".join(kind for kind, spec in SPECS.items() if spec.subject)
)


# Fields every kind may carry as they were before kinds named their fields.
LENIENT_FIELDS = frozenset({"subject", "thread", "transactional"})
_TEMPLATED = ("title", "assignee")


def _given(value: Any) -> bool:
    return value is not None and value is not UNSET


def _kind_fields(i: int, step: StepIn) -> list[FieldError]:
    """A kind's required fields present, another kind's absent (kinds.py `fields`), and
    the templates among them parsed (body and subject: `build_steps`)."""
    spec = SPECS[step.kind]
    errors = []
    for name in sorted(KIND_FIELDS - LENIENT_FIELDS):
        given = _given(getattr(step, name))
        if name in spec.required and not given:
            errors.append(FieldError(f"steps[{i}].{name}", f"required for {step.kind} steps"))
        elif name not in spec.fields and given:
            takes = " and ".join(k for k, s in SPECS.items() if name in s.fields)
            errors.append(FieldError(f"steps[{i}].{name}", f"only {takes} steps take a {name}"))
    texts: list[tuple[str, str, Any]] = [(n, "", getattr(step, n)) for n in _TEMPLATED]
    if isinstance(step.headers, dict):
        texts += [("headers", f"{k}: ", v) for k, v in step.headers.items()]
    for name, which, text in texts:
        if not isinstance(text, str):
            continue
        try:
            templates.parse(text)
        except templates.TemplateError as exc:
            errors.append(FieldError(f"steps[{i}].{name}", f"{which}template error: {exc}"))
        if _LINE_BREAK.search(text):
            errors.append(FieldError(f"steps[{i}].{name}", f"{which}one line of text"))
    return errors


def _or(value: Any, default: Any) -> Any:
    return value if _given(value) else default


def _action_fields(step: StepIn) -> dict[str, Any]:
    """The Step fields of an action kind's step, defaults filled in."""
    if step.kind == "task":
        out: dict[str, Any] = {"title": step.title, "blocking": _or(step.blocking, False)}
        out["on_timeout"] = _or(step.on_timeout, "continue")
        for name in ("assignee", "due_in_minutes"):
            if _given(getattr(step, name)):
                out[name] = getattr(step, name)
        return out
    if step.kind == "webhook":
        return {
            "url": step.url,
            "method": _or(step.method, "POST"),
            "headers": _or(step.headers, {}),
            "timeout_seconds": float(_or(step.timeout_seconds, 10.0)),
        }
    if step.kind == "enroll":
        return {"sequence_id": step.sequence_id, "then": _or(step.then, "continue")}
    return {}


def tracks_clicks(step: StepIn | Step, track: Tracking | None) -> bool:
    """Whether `step`'s links are tracked, under its sequence's `track`."""
    own = step.track if step.track is not None else track
    return own is not None and own.clicks


def build_steps(steps: list[StepIn], track: Tracking | None = None) -> list[Step]:
    """Validate step rules and templates; compute SMS segments (of the body as sent: with
    its links tracked under the sequence's `track`, as links.placeholder_links counts)."""
    errors = []
    out = []
    roots: set[str] = set()
    for i, step in enumerate(steps):
        spec = SPECS[step.kind]
        errors += _kind_fields(i, step)
        # A later step of a threading kind (email) sends its first one's subject.
        threaded = spec.threads and step.kind in roots and step.thread
        if spec.threads:
            roots.add(step.kind)
        if spec.subject and step.subject is None:
            errors.append(FieldError(f"steps[{i}].subject", f"required for {step.kind} steps"))
        if not spec.subject and step.subject is not None:
            errors.append(FieldError(f"steps[{i}].subject", _SUBJECT_ONLY))
        if step.subject is not None and _LINE_BREAK.search(step.subject):
            errors.append(FieldError(f"steps[{i}].subject", "a Subject is one line of text"))
        for field in ("body", "subject"):
            text = getattr(step, field)
            if text is None:
                continue
            try:
                templates.parse(text)
            except templates.TemplateError as exc:
                errors.append(FieldError(f"steps[{i}].{field}", f"template error: {exc}"))
        if step.send_at is not None:
            try:
                if parse_hhmm(step.send_at) >= 24 * 60:
                    raise ValueError("a time of day is before 24:00")
            except ValueError as exc:
                errors.append(FieldError(f"steps[{i}].send_at", str(exc)))
        variants = _variants(i, step, errors, threaded)
        for name in ("only_if", "skip_if"):
            cond = getattr(step, name)
            if cond is not None:
                errors += conditions.check(cond, f"steps[{i}].{name}", i)
        counted = step.body or ""
        if spec.segments and counted and tracks_clicks(step, track):
            counted = links.placeholder_links(counted, links.COUNTED_BASE_CHARS)
        seg, enc = segments(counted) if spec.segments and counted else (None, None)
        out.append(
            Step(
                kind=step.kind,
                wait_minutes=step.wait_minutes,
                wait_days=step.wait_days,
                send_at=step.send_at,
                transactional=step.transactional,
                body=step.body or "",
                subject=step.subject,
                thread=step.thread,
                track=step.track,
                segments=seg,
                encoding=enc,
                variants=variants,
                skip_if=step.skip_if,
                only_if=step.only_if,
                **_action_fields(step),
            )
        )
    if errors:
        raise Invalid(errors)
    return out


def _variants(
    i: int, step: StepIn, errors: list[FieldError], threaded: bool
) -> list[Variant] | None:
    """Step `i`'s variants, checked: unique ids, a subject only where the kind takes one
    and the step is not `threaded` (it sends its first email's subject), templates that
    parse. Errors are appended to `errors`."""
    if step.variants is None:
        return None
    seen: set[str] = set()
    takes_subject = SPECS[step.kind].subject
    for j, v in enumerate(step.variants):
        path = f"steps[{i}].variants[{j}]"
        if v.id in seen:
            errors.append(FieldError(f"{path}.id", f"variant id {v.id!r} is used twice"))
        seen.add(v.id)
        if v.subject is not None and not takes_subject:
            errors.append(FieldError(f"{path}.subject", _SUBJECT_ONLY))
        elif v.subject is not None and threaded:
            errors.append(
                FieldError(
                    f"{path}.subject",
                    "a threaded step sends its first email's subject; "
                    "set thread: false to give it its own",
                )
            )
        if v.subject is not None and _LINE_BREAK.search(v.subject):
            errors.append(FieldError(f"{path}.subject", "a Subject is one line of text"))
        for field in ("body", "subject"):
            text = getattr(v, field)
            if text is not None:
                try:
                    templates.parse(text)
                except templates.TemplateError as exc:
                    errors.append(FieldError(f"{path}.{field}", f"template error: {exc}"))
    return [
        Variant(id=v.id, weight=v.weight, body=v.body, subject=v.subject) for v in step.variants
    ]


# -- enrollments -----------------------------------------------------------------------
# The document's rule for a body naming a contact by id or inline: exactly one of the two.
ONE_CONTACT = [
    {"required": [name], "properties": {name: {"type": kind}, other: {"type": "null"}}}
    for name, kind, other in (
        ("contact_id", "string", "contact"),
        ("contact", "object", "contact_id"),
    )
]


class EnrollmentCreate(Input, kw_only=True):
    """Exactly one of `contact_id` (an existing contact) or `contact` (upserted: matched by
    external_id, then phone, then email; created when none matches)."""

    # OpenAPI: exactly one of the two (`enrollment_contact`).
    json_schema_extra: ClassVar[dict[str, Any]] = {"oneOf": ONE_CONTACT}

    contact_id: Id | None = None
    contact: ContactCreate | None = None
    metadata: Metadata = msgspec.field(default_factory=dict)
    # Into an exclusive sequence while the contact is live in another one: reject (409
    # naming that enrollment) or queue (enrolled when that one ends).
    if_busy: Annotated[
        Literal["reject", "queue"],
        Meta(
            description="into an exclusive sequence while the contact is live in another: "
            "reject (409) or queue (202; enrolled when that one ends)"
        ),
    ] = "reject"


BATCH_MAX_ITEMS = 1000


class EnrollmentBatch(Input, kw_only=True):
    items: Annotated[list[EnrollmentCreate], Meta(min_length=1, max_length=BATCH_MAX_ITEMS)]


class Enrollment(Output, omit_defaults=True, kw_only=True):
    id: str
    sequence_id: str
    contact_id: str
    current_step: Annotated[
        int,
        Meta(description="index of the next step to send; completed: the number of steps"),
    ]
    status: EnrollmentStatus
    next_run_at: Timestamp | None
    enrolled_at: Timestamp
    metadata: dict[str, Any]
    paused_reason: str | None = None
    # A `missing_variable` pause: the template variable (or address field) it waits for.
    paused_variable: str | None = None
    # A pause that ends by itself (out_of_office until the return date): when it resumes.
    resume_at: Timestamp | None = None
    cancel_reason: str | None = None
    completed_at: Timestamp | None = None
    # "goal" when a contact event met one of the sequence's `exit_on` rules (named by
    # `goal`); absent when the steps ran out or a reply completed it.
    completed_reason: Literal["goal"] | None = None
    goal: str | None = None
    updated_at: Timestamp | None = None
    # The zone its step times are read in, and where it came from (contact | phone | default).
    timezone_used: str | None = None
    timezone_source: Literal["contact", "phone", "default"] | None = None
    # Why the current step was put off when it came due (window | skip_date | quiet_hours).
    deferred_reason: str | None = None
    # The version of the sequence's steps it runs on (Sequence.version).
    sequence_version: int
    # Step index -> the A/B variant it was sent.
    variants: dict[str, str] | None = None


class QueuedEnrollment(Output, kw_only=True):
    """An enrollment waiting for the contact's live exclusive enrollment `behind` to end:
    it is made then, with this `id`."""

    id: str
    sequence_id: str
    contact_id: str
    behind: str


class QueuedEnvelope(Output, kw_only=True):
    queued: QueuedEnrollment


class EnrollmentEnvelope(Output, kw_only=True):
    enrollment: Enrollment
    idempotent: bool = False


class EnrollmentOnly(Output, kw_only=True):
    enrollment: Enrollment


# -- lists -------------------------------------------------------------------------------
class Page(Output, kw_only=True):
    next_page_token: str | None
    total: int


class ContactList(Page, kw_only=True):
    data: list[Contact]


class SequenceList(Page, kw_only=True):
    data: list[Sequence]


class EnrollmentList(Page, kw_only=True):
    data: list[Enrollment]


class EnrollmentSearchList(Output, kw_only=True):
    data: list[Enrollment]
    next_page_token: Annotated[
        str | None,
        Meta(
            description="where to go on; a page filtered by paused_reason or updated_since "
            "can hold fewer than `limit` items (even none) and still have one"
        ),
    ]
    total: Annotated[
        int | None, Meta(description="all that match; null with paused_reason or updated_since")
    ]


# -- suppressions --------------------------------------------------------------------------


class SuppressionReason(StrEnum):
    MANUAL = "manual"
    OPTED_OUT = "opted_out"
    BOUNCED = "bounced"


class SuppressionCreate(Input, kw_only=True):
    channel: Channel
    # A phone number (normalised to E.164) for sms, an address for email.
    value: Annotated[str, Meta(min_length=1, max_length=320)]
    reason: SuppressionReason = SuppressionReason.MANUAL


class Suppression(Output, kw_only=True):
    channel: Channel
    value: str
    reason: str
    created_at: Timestamp


class SuppressionEnvelope(Output, kw_only=True):
    suppression: Suppression


class SuppressionList(Page, kw_only=True):
    data: list[Suppression]


# -- API keys ----------------------------------------------------------------------------
class ApiKey(Output, kw_only=True):
    id: str
    tenant: str
    label: str = ""
    prefix: str
    created_at: Timestamp
