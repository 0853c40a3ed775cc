"""What became of a claimed step (`Settled`, a tagged union sent to `advance` as JSON), and
the passed-step values and event texts `advance`'s fast path takes instead.

Each outcome is one class: its required fields are the contract advance-2.lua checks
before it writes anything (`NEEDS`, generated from these classes into the script's
prelude), so a new outcome is a class here and its handling in advance-2.lua. The step
event's spelled-out JSON (the fields, in order) and the passed steps' value layout are
defined here once and handed to Lua (`lua_prelude`), which builds the same texts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import get_type_hints

import msgspec

from seqd.store.claims import ClaimedEnrollment


class StepOutcome(msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="outcome"):
    """What every outcome names: the step (id, the claim's token, step index, kind), when it
    ended (ms), and optionally the claimed sequence (`seq`: advance then need not read it)."""

    id: str
    token: str
    step: int
    kind: str
    at: int
    seq: str | None = None
    # The sender a sticky rotation pins the contact to for `kind`'s steps (its first send
    # that started took it): written with the outcome, whatever the outcome.
    pin: str | None = None


class Sent(StepOutcome, tag="sent"):
    # ms from `at` to the next step's due time; -1 after the last step.
    wait: int
    provider_id: str | None = None
    # The A/B variant sent: recorded as the enrollment's `v<step>` and in the event.
    variant: str | None = None
    # The sender of a pool it was sent from: recorded as `r<step>`, for the per-sender
    # counters (None: the tenant's configured channel).
    sender: str | None = None


class Skipped(StepOutcome, tag="skipped"):
    """Passed over without a send (its address is suppressed, a later step's is not)."""

    wait: int
    reason: str | None = None


class Retry(StepOutcome, tag="retry"):
    # ms until the next attempt (an attempt is counted; failed when they run out).
    delay: int
    error: str | None = None


class Failed(StepOutcome, tag="failed"):
    """Failed for good: the enrollment is cancelled (cancel_reason failed)."""

    error: str | None = None


class Pause(StepOutcome, tag="pause"):
    reason: str
    variable: str | None = None
    error: str | None = None


class Cancel(StepOutcome, tag="cancel"):
    reason: str
    error: str | None = None


class Complete(StepOutcome, tag="complete"):
    """The step is past the sequence's end."""


class Release(StepOutcome, tag="release"):
    """Not sent: due again after `delay` ms (at once when absent), no attempt counted;
    `started`: the send had started, so it comes back as an unsettled claim."""

    started: bool = False
    delay: int | None = None


class Defer(StepOutcome, tag="defer"):
    """Not sent now: its window or quiet hours are closed (seqd/timing). Due again at
    `until` (ms), `n` rewritten, `dr` = "<step>:<reason>", `z` = `zone` when given, no
    attempt counted; event sequence.step.deferred."""

    until: int
    # window | skip_date | quiet_hours (absent: window)
    reason: str | None = None
    zone: str | None = None


class TaskStep(StepOutcome, tag="task"):
    """A task step came due (or its hold did): its task is made once per (enrollment, step),
    under `task_id` unless the enrollment already names one (`p<step>`); then, as the task
    says (includes/tasks.lua): passed on at once (not blocking, completed, timed out with
    on_timeout continue), held (paused awaiting_task, due again at the task's due time), or
    cancelled (timed out with on_timeout cancel). `due_in`: ms from now, -1 for none."""

    wait: int
    task_id: str = ""
    title: str = ""
    assignee: str | None = None
    due_in: int = -1
    blocking: bool = False
    on_timeout: str = "continue"


Settled = Sent | Skipped | Retry | Failed | Pause | Cancel | Complete | Release | Defer | TaskStep
OUTCOMES: tuple[type[StepOutcome], ...] = (
    Sent,
    Skipped,
    Retry,
    Failed,
    Pause,
    Cancel,
    Complete,
    Release,
    Defer,
    TaskStep,
)

_LUA_TYPE = {int: "number", str: "string", bool: "boolean"}


def _needs(cls: type[StepOutcome]) -> list[tuple[str, str]]:
    """The fields `cls` requires beyond StepOutcome's, with their Lua types."""
    hints = get_type_hints(cls)
    common = {f.name for f in msgspec.structs.fields(StepOutcome)}
    return [
        (f.encode_name, _LUA_TYPE[hints[f.name]])
        for f in msgspec.structs.fields(cls)
        if f.required and f.name not in common
    ]


# Passed steps in advance's ARGV[5..] (advance-2.lua): sent or skipped steps of a claim the
# caller read: with a step after them, whose events the caller built (`step_event`), or
# last steps (wait -1, no event: the script spells a completion's from the hash).
# What a claim's steps share is written once (a group, in one JSON array), each step as
# five plain values: decoding JSON was the script's largest cost after its writes, and a
# decoded step is one more table for Lua to make and collect.
# (`variant` is there only for a step sent as an A/B variant, "" when more follows; `pin`
# for steps that pin their contact to their sender and `sender` for steps sent from a
# pool's sender (null for none when the other is there): a claim's steps then make a group
# per sender.)
PASSED_GROUP = (
    "token", "seq", "step", "kind", "outcome", "tenant", "attempts", "wait", "variant", "pin",
    "sender",
)  # fmt: skip
PASSED_STEP = ("id", "group", "due", "detail", "event")


class _StepFields(msgspec.Struct, omit_defaults=True):
    """The enrollment fields of a step event's data, as advance-2.lua's general path
    (`enrollment_event`) spells them for an active enrollment after the step."""

    s: str
    c: str
    st: str
    i: str
    n: str
    ua: str
    md: str | None = None
    # The version of the sequence's steps it runs on (absent: 1).
    sv: str | None = None


class _SentEvent(msgspec.Struct):
    id: str
    fields: _StepFields
    step: int
    kind: str
    provider_id: str | None
    sent_at: int


class _VariantSentEvent(_SentEvent):
    variant: str


class _SkippedEvent(msgspec.Struct, omit_defaults=True):
    id: str
    fields: _StepFields
    step: int
    kind: str
    reason: str | None = None


_encode_event = msgspec.json.Encoder().encode
_encode = msgspec.json.Encoder().encode


def step_event(s: Settled, e: ClaimedEnrollment, now: str) -> bytes:
    """The data of the `sequence.step.sent` / `.skipped` event advance's fast path writes
    for `s` (a passed step with a step after it), from the claimed enrollment `e` and the
    call's `now` (ms, as text); b"" for any other outcome. Built here because Redis is the
    bottleneck of a burst, and Python is not; advance uses it only while the claim's token
    holds, when `e` is still true."""
    if isinstance(s, Sent):
        if s.wait < 0:
            return b""
        fields = _StepFields(
            e.sequence, e.contact, "active", str(s.step + 1), str(s.at + s.wait), now,
            e.metadata, e.steps_version,
        )  # fmt: skip
        if s.variant is not None:
            return _encode_event(
                _VariantSentEvent(s.id, fields, s.step, s.kind, s.provider_id, s.at, s.variant)
            )
        return _encode_event(_SentEvent(s.id, fields, s.step, s.kind, s.provider_id, s.at))
    if isinstance(s, Skipped) and s.wait >= 0:
        fields = _StepFields(
            e.sequence, e.contact, "active", str(s.step + 1), str(s.at + s.wait), now,
            e.metadata, e.steps_version,
        )  # fmt: skip
        return _encode_event(_SkippedEvent(s.id, fields, s.step, s.kind, s.reason))
    return b""


class Passed:
    """The passed steps of one advance call: their groups (ARGV[5]) and their values."""

    __slots__ = ("groups", "values")

    def __init__(self) -> None:
        # group -> its place in ARGV[5] (from 1), as text: converted once, not per step.
        self.groups: dict[tuple[str | int | None, ...], str] = {}
        self.values: list[str | bytes] = []

    def add(self, s: Sent | Skipped, e: ClaimedEnrollment, event: bytes) -> None:
        sent = isinstance(s, Sent)
        group: tuple[str | int | None, ...] = (
            s.token,
            e.sequence,
            s.step,
            s.kind,
            "sent" if sent else "skipped",
            e.tenant,
            e.attempts or "",
            s.wait if s.wait >= 0 else -1,
        )
        variant = s.variant if isinstance(s, Sent) else None
        sender = s.sender if isinstance(s, Sent) else None
        if s.pin is not None or sender is not None:
            group += (variant or "", s.pin, sender)
        elif variant is not None:
            group += (variant,)
        place = self.groups.get(group)
        if place is None:
            place = self.groups[group] = str(len(self.groups) + 1)
        detail = (s.provider_id if isinstance(s, Sent) else s.reason) or ""
        # (A last step's `due` is when it was sent: advance spells its events.)
        due = s.at + s.wait if s.wait >= 0 else s.at
        self.values += (s.id, place, str(due), detail, event)

    def encode_groups(self) -> bytes:
        return _encode(list(self.groups))


# Deferred steps in deferSteps-2.lua's ARGV: what the steps of a call share (a group, in
# one JSON array), and each step's values.
DEFER_GROUP = ("seq", "tenant", "step", "reason")
DEFER_STEP = ("id", "group", "token", "until", "zone", "event")


class _DeferFields(_StepFields, omit_defaults=True):
    """The enrollment fields of a deferred step's event: as advance-2.lua's general path
    (`enrollment_event`) reads them after writing the deferral, for an active enrollment."""

    z: str | None = None
    dr: str | None = None


class _DeferredEvent(msgspec.Struct):
    id: str
    fields: _DeferFields
    step: int
    kind: str
    reason: str
    until: int


class Deferrals:
    """The deferred steps of one deferSteps call: their groups (ARGV[3]) and values."""

    __slots__ = ("groups", "values")

    def __init__(self) -> None:
        self.groups: dict[tuple[str | int, ...], str] = {}
        self.values: list[str | bytes] = []

    def add(self, d: Defer, e: ClaimedEnrollment, now: str) -> None:
        """`d` (with a zone) of a step whose claim or peek read `e`, at `now` (ms, text)."""
        reason = d.reason or "window"
        group = (e.sequence, e.tenant, d.step, reason)
        place = self.groups.get(group)
        if place is None:
            place = self.groups[group] = str(len(self.groups) + 1)
        until = str(d.until)
        fields = _DeferFields(
            e.sequence, e.contact, "active", str(d.step), until, now, e.metadata,
            sv=e.steps_version, z=d.zone, dr=f"{d.step}:{reason}",
        )  # fmt: skip
        event = _encode_event(_DeferredEvent(d.id, fields, d.step, d.kind, reason, d.until))
        self.values += (d.id, place, d.token, until, d.zone or "", event)

    def encode_groups(self) -> bytes:
        return _encode(list(self.groups))


def advance_args(
    items: list[Settled],
    claimed: Mapping[str, ClaimedEnrollment] | None,
    now: int,
    deferrals: Deferrals | None = None,
) -> tuple[bytes, bytes, list[str | bytes]]:
    """advance's ARGV[4..]: the items for its general path (JSON), the passed groups and
    the passed steps' values. `claimed`: enrollment id -> what claimDue read of it, for the
    items the caller claimed itself: their step events are built here, and with
    `deferrals` their deferrals that name a zone go there (deferSteps) instead."""
    if claimed is None:
        return _encode(items), b"[]", []
    general: list[Settled] = []
    passed = Passed()
    now_text = str(now)
    for s in items:
        e = claimed.get(s.id)
        if e is None:
            general.append(s)
            continue
        if deferrals is not None and isinstance(s, Defer) and s.zone:
            deferrals.add(s, e, now_text)
            continue
        event = step_event(s, e, now_text)
        if isinstance(s, Sent | Skipped) and (event or s.wait < 0):
            passed.add(s, e, event)
        else:
            s.seq = e.sequence
            general.append(s)
    return _encode(general), passed.encode_groups(), passed.values


def _lua_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def lua_prelude() -> str:
    """What advance-2.lua reads of the definitions here (`-- @include settles`)."""
    needs = []
    for cls in OUTCOMES:
        need = _needs(cls)
        if len(need) > 1:
            raise TypeError(f"{cls.__name__}: advance checks one required field per outcome")
        spelled = "{" + ", ".join(_lua_string(x) for x in need[0]) + "}" if need else "{}"
        needs.append(f"{cls.__struct_config__.tag} = {spelled}")
    out = [
        "-- Generated from store/settles.py: each outcome's required field and its type.",
        "local NEEDS = {" + ", ".join(needs) + "}",
        "-- Positions in a passed group (PASSED_GROUP), in a passed step's values (PASSED_STEP).",
    ]
    out += [f"local G_{name.upper()} = {n}" for n, name in enumerate(PASSED_GROUP, 1)]
    out += [f"local P_{name.upper()} = {n}" for n, name in enumerate(PASSED_STEP, 1)]
    out.append(f"local P_WIDTH = {len(PASSED_STEP)}")
    out.append("-- Positions in a deferred group (DEFER_GROUP), in a deferred step (DEFER_STEP).")
    out += [f"local DG_{name.upper()} = {n}" for n, name in enumerate(DEFER_GROUP, 1)]
    out += [f"local D_{name.upper()} = {n}" for n, name in enumerate(DEFER_STEP, 1)]
    out.append(f"local D_WIDTH = {len(DEFER_STEP)}")
    out.append(_step_event_lua())
    return "\n".join(out) + "\n"


# How step_event_json writes each of _StepFields: its value as text, a constant, or JSON
# text that may be absent.
_EVENT_CONSTANT = {"st": "active"}
_EVENT_OPTIONAL_JSON = {"md", "sv"}


def _step_event_lua() -> str:
    """step_event_json(id, <the fields of _StepFields but the constants>, step, kind, tail):
    the event data `step_event` encodes, spelled out as one concatenation. The optional
    fields and `tail` are JSON text ("" when absent), `kind` a JSON string."""
    params = ["id"]
    # Literal texts (str) and Lua expressions (a 1-tuple), in order.
    parts: list[str | tuple[str]] = ['{"id":"', ("id",), '","fields":{']
    for n, f in enumerate(msgspec.structs.fields(_StepFields)):
        name, comma = f.encode_name, "," if n else ""
        if name in _EVENT_CONSTANT:
            parts.append(f'{comma}"{name}":"{_EVENT_CONSTANT[name]}"')
        elif name in _EVENT_OPTIONAL_JSON:
            params.append(name)
            parts.append((f"({name} ~= '' and ('{comma}\"{name}\":' .. {name}) or '')",))
        else:
            params.append(name)
            parts += [f'{comma}"{name}":"', (name,), '"']
    params += ["step", "kind", "tail"]
    parts += ['},"step":', ("step",), ',"kind":', ("kind",), ("tail",), "}"]
    pieces: list[str] = []
    text = ""
    for part in parts:
        if isinstance(part, str):
            text += part
            continue
        if text:
            pieces.append(_lua_string(text))
            text = ""
        pieces.append(part[0])
    if text:
        pieces.append(_lua_string(text))
    return (
        "-- A step event's data as step_event (store/settles.py) encodes it.\n"
        f"local function step_event_json({', '.join(params)})\n"
        f"  return {' .. '.join(pieces)}\n"
        "end"
    )
