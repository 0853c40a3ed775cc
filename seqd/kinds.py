"""The step kinds: one spec per kind, and every layer reads what it needs of a kind here.

A kind's spec says which contact field it sends to, whether a suppression list of its own
blocks that address, why an enrollment is cancelled when that list blocks every step left,
the letter the lifecycle scripts read it by, which `[channels]` setting names its provider,
and the message rules the models and the plan apply. The Lua prelude gets the same facts from
`lua_constants`, so a kind is spelled once for Python and the scripts alike.

Two families: a `message` kind is sent to the contact's address through a channel
provider; an `action` kind (a task, a webhook call, an enrollment into another sequence)
leaves `address` and `provider` None and `suppression` False: it has no address, no list
blocks it, and no channel provider sends it (seqd/engine/actions.py runs it). Each kind
names the step fields it takes (`fields`, `required`): the models refuse the others, and
the OpenAPI document shows one schema per kind. docs/architecture.md ("Adding a step kind")
lists what else a new kind touches.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

# The kinds a step may be; `SPECS` has one entry per member, in this order.
Kind = Literal["sms", "email", "task", "webhook", "enroll"]
# The kinds with a suppression list (the `channel` of a suppression), in `Kind`'s order.
Channel = Literal["sms", "email"]


Family = Literal["message", "action"]


@dataclass(frozen=True, slots=True)
class KindSpec:
    name: Kind
    # message: sent to the contact's address by a channel provider; action: run by seqd.
    family: Family
    # The step fields of this kind beyond those every step takes (waits, send_at, ...), and
    # those of them it requires: another kind's field on its step is refused.
    fields: tuple[str, ...]
    required: tuple[str, ...]
    # One letter per step in the kinds string the lifecycle scripts read (`store/lifecycle.py`).
    letter: str
    # The contact field the step is sent to (also read for the suppression check); None when
    # the step has no recipient.
    address: str | None
    # The kind has a suppression list of its own (`keys.suppressions(tenant, <kind>)`), keyed
    # by its address: a listed address skips the kind's steps and cancels an enrollment
    # left with only such steps.
    suppression: bool
    # The cancel reason when the list blocks every step left, unless the suppression record
    # names a cancel reason itself.
    cancel_reason: str | None
    # The `ChannelsConfig` field naming the provider that sends the step; None when no
    # channel provider sends it.
    provider: str | None
    # The enrollment field `advance` sets once a step of this kind was sent (replies on the
    # channel count it as sent); None when the provider ids alone tell.
    sent_field: str | None = None
    # The enrollment field holding the sender (POST /v1/senders) a sticky rotation pinned
    # the contact to on this kind's steps; None when no sender pool can send the kind.
    sender_field: str | None = None
    # The step has a subject, which is then required.
    subject: bool = False
    # A step threads under the sequence's first step of its kind ("Re: " + that step's
    # subject, In-Reply-To its message) unless it opts out (`thread: false`).
    threads: bool = False
    # The body is counted in SMS segments (GSM-7 / UCS-2).
    segments: bool = False


SPECS: dict[Kind, KindSpec] = {
    "sms": KindSpec(
        name="sms",
        family="message",
        fields=("body", "transactional"),
        required=("body",),
        letter="s",
        address="phone",
        suppression=True,
        cancel_reason="opted_out",
        provider="sms",
        sent_field="sm",
        sender_field="ys",
        segments=True,
    ),
    "email": KindSpec(
        name="email",
        family="message",
        fields=("body", "subject", "thread", "transactional"),
        required=("body", "subject"),
        letter="e",
        address="email",
        suppression=True,
        cancel_reason="bounced",
        provider="email",
        subject=True,
        threads=True,
        sender_field="ye",
    ),
    # A task for a person (GET /v1/tasks); a blocking one holds the enrollment until it is
    # completed or times out.
    "task": KindSpec(
        name="task",
        family="action",
        fields=("title", "assignee", "due_in_minutes", "blocking", "on_timeout"),
        required=("title",),
        letter="t",
        address=None,
        suppression=False,
        cancel_reason=None,
        provider=None,
    ),
    # An HTTP call to another system, signed like seqd's webhooks.
    "webhook": KindSpec(
        name="webhook",
        family="action",
        fields=("url", "method", "headers", "body", "timeout_seconds"),
        required=("url",),
        letter="w",
        address=None,
        suppression=False,
        cancel_reason=None,
        provider=None,
    ),
    # The contact handed to another sequence (enrolled there, idempotently).
    "enroll": KindSpec(
        name="enroll",
        family="action",
        fields=("sequence_id", "then"),
        required=("sequence_id",),
        letter="n",
        address=None,
        suppression=False,
        cancel_reason=None,
        provider=None,
    ),
}

KINDS: tuple[Kind, ...] = get_args(Kind)
CHANNELS: tuple[Channel, ...] = get_args(Channel)
# The contact field each suppression list is keyed by.
CHANNEL_ADDRESS: dict[Channel, str] = {ch: SPECS[ch].address or "" for ch in CHANNELS}
MESSAGE_KINDS: tuple[Kind, ...] = tuple(k for k, s in SPECS.items() if s.family == "message")
ACTION_KINDS: tuple[Kind, ...] = tuple(k for k, s in SPECS.items() if s.family == "action")
# Every field some kind owns: the step fields not in it are common to every kind.
KIND_FIELDS: frozenset[str] = frozenset(f for s in SPECS.values() for f in s.fields)
# Kinds sent to a contact field, and that field.
ADDRESS_FIELD: dict[Kind, str] = {
    kind: spec.address for kind, spec in SPECS.items() if spec.address is not None
}


def letters(kinds: list[Kind] | tuple[Kind, ...]) -> str:
    """One letter per step, as the lifecycle scripts read a sequence's kinds."""
    return "".join(SPECS[kind].letter for kind in kinds)


def _check() -> None:
    if tuple(SPECS) != KINDS or any(k != s.name for k, s in SPECS.items()):
        raise ValueError("kinds.SPECS must have one spec per Kind, in order")
    used = [s.letter for s in SPECS.values()]
    if len(set(used)) != len(used) or not all(re.fullmatch("[a-z]", c) for c in used):
        # (one plain letter each: the scripts match them in Lua patterns)
        raise ValueError("kinds: each kind needs its own lowercase lifecycle letter")
    listed = tuple(k for k, s in SPECS.items() if s.suppression)
    if listed != CHANNELS or not all(CHANNEL_ADDRESS.values()):
        raise ValueError("kinds.Channel must name each kind with a list, each with an address")
    if any(s.suppression and s.cancel_reason is None for s in SPECS.values()):
        raise ValueError("kinds: a kind with a suppression list needs a cancel reason")
    for s in SPECS.values():
        if (s.family == "message") != (s.address is not None and s.provider is not None):
            raise ValueError(f"kinds: {s.name}: a message kind has an address and a provider")
        if not set(s.required) <= set(s.fields):
            raise ValueError(f"kinds: {s.name}: a required field must be one of its fields")


_check()


def _lua_map(values: Mapping[Kind, str]) -> str:
    return "{" + ", ".join(f"[{k!r}] = {v!r}" for k, v in values.items()) + "}"


def lua_constants() -> str:
    """The kinds' facts the scripts read, as Lua locals for the script prelude."""
    letter = {k: s.letter for k, s in SPECS.items()}
    sent = {k: s.sent_field for k, s in SPECS.items() if s.sent_field is not None}
    pin = {k: s.sender_field for k, s in SPECS.items() if s.sender_field is not None}
    pins = ", ".join(repr(field) for field in pin.values())
    return (
        f"local KIND_LETTER = {_lua_map(letter)}\nlocal KIND_SENT_FIELD = {_lua_map(sent)}\n"
        f"local KIND_SENDER_FIELD = {_lua_map(pin)}\nlocal KIND_SENDER_FIELDS = {{{pins}}}\n"
    )
