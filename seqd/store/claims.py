"""A claimed step as the dispatcher reads it: `claimDue`'s reply decoded into Structs, and
what `leasePeeked` answers.

The reply is one JSON text per shard (sent in pieces, joined here), decoded straight into
Structs: far cheaper than a nested RESP array turned into Python lists item by item. The
enrollment's storage field names (`t`, `s`, `k`, ...) are spelled only here.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from seqd.store.mirrors import fields_of


class ClaimedEnrollment(msgspec.Struct, gc=False):
    """What claimDue read of a claimed enrollment (its hash, values as stored: text)."""

    tenant: str = msgspec.field(name="t")
    sequence: str = msgspec.field(name="s")
    contact: str = msgspec.field(name="c")
    status: str = msgspec.field(name="st")
    # The current step's index.
    index: str = msgspec.field(name="i")
    # The current step's due time (ms).
    due: str = msgspec.field(name="n")
    # The member's score as the peek saw it; the lease token once it is leased.
    token: str = msgspec.field(name="k")
    # Attempts already made at this step (absent: none).
    attempts: str | None = msgspec.field(name="a", default=None)
    # The enrollment's metadata (JSON text).
    metadata: str | None = msgspec.field(name="md", default=None)
    # The senders (POST /v1/senders) a sticky rotation pinned the contact to, per kind
    # (the fields are kinds.py `sender_field`).
    sms_sender: str | None = msgspec.field(name="ys", default=None)
    email_sender: str | None = msgspec.field(name="ye", default=None)
    # What became of earlier steps, a letter per step (seqd/conditions.py), where any did.
    outcomes: str | None = msgspec.field(name="o", default=None)
    # The version of its sequence's steps it runs on (absent: 1).
    steps_version: str | None = msgspec.field(name="sv", default=None)

    def pinned(self, kind: str) -> str | None:
        """The sender of `kind`'s steps the contact is pinned to, if any."""
        if kind == "sms":
            return self.sms_sender
        return self.email_sender if kind == "email" else None


class Claimed(msgspec.Struct, gc=False):
    """One claimed step: enrollment id, what was read of its enrollment, and its contact's
    fields that its sequence's messages can use and that are set (store/mirrors.py)."""

    id: str
    enrollment: ClaimedEnrollment
    contact: dict[str, str]

    @property
    def plan_key(self) -> str:
        """Its plan's key (engine/plans.py): the sequence id for version 1 of its steps,
        "<sequence id>@<version>" for a later one."""
        e = self.enrollment
        return e.sequence if e.steps_version is None else f"{e.sequence}@{e.steps_version}"


class ClaimBatch(msgspec.Struct, frozen=True, gc=False):
    # Due members looked at; equal to the limit when more may be due.
    seen: int
    # Sequence id -> its shard mirror (store/mirrors.py) for the items' sequences.
    m: dict[str, str]
    items: list[Claimed]


class _Item(msgspec.Struct, array_like=True, frozen=True, gc=False):
    id: str
    e: ClaimedEnrollment
    # HMGET of its sequence's fields (`_Batch.f`, else CONTACT_READ): false where unset.
    c: list[str | bool]


class _Batch(msgspec.Struct, frozen=True, gc=False):
    seen: int
    m: dict[str, str]
    # Sequence id -> the contact fields read for its items (comma-separated), where the
    # claim read fewer than CONTACT_READ.
    f: dict[str, str]
    items: list[_Item]


_decode_batch = msgspec.json.Decoder(_Batch).decode


def decode_claim(reply: list[str]) -> ClaimBatch:
    """A claimDue reply: its JSON text in pieces (the head, then one per item)."""
    raw = _decode_batch("".join((reply[0], ",".join(reply[1:]), "]}")))
    read = raw.f
    items = [
        Claimed(
            item.id,
            item.e,
            # Unset fields are false (an empty one reads as unset everywhere anyway); the
            # script answers one value per name, so no strict check on this hot path.
            {f: v for f, v in zip(fields_of(read.get(item.e.sequence)), item.c, strict=False) if v},  # type: ignore[misc]
        )
        for item in raw.items
    ]
    return ClaimBatch(raw.seen, raw.m, items)


class Leased(NamedTuple):
    """What `leasePeeked` did in one shard."""

    token: str
    # The members not leased: changed since the peek (nothing of theirs may be sent).
    lost: list[str]
    # Leases run out that were leased again: their attempts, now counted.
    attempts: dict[str, str]


def decode_leased(reply: list[object]) -> Leased:
    token, lost, counted = reply
    assert isinstance(lost, list) and isinstance(counted, list)
    attempts = dict(zip(counted[::2], counted[1::2], strict=True))
    return Leased(str(token), [str(m) for m in lost], attempts)


def is_unsettled(due_score: float | None) -> bool:
    """Whether a due score is a claim's lease not settled yet: leases end half a ms before
    a whole one (enrollment.lua `lease_token`), due times are whole ms."""
    return due_score is not None and not float(due_score).is_integer()
