"""A sequence's shard mirror: what a shard's scripts know of a sequence without its document.

Each shard's `sq` hash holds `<status>:<version>:<steps>:<fields>` per sequence
(`syncSequence` writes it). The scripts read the status and the step count; `leasePeeked`
compares the whole text (a peek is leased only under the mirror it saw); the dispatcher
reads the version (its plan) and `fields`: the contact fields the sequence's messages can
use, comma-separated, so that a claim reads only those of each contact (a missed field
costs Redis a scan of the contact's hash). A mirror written before `fields` existed has
three parts: a claim then reads every field of CONTACT_READ.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from seqd import models
from seqd.engine import render
from seqd.store.codec import CONTACT_TEXT_FIELDS

# Every contact field a message can use: its owner (checked before a send), the text fields
# (templates and addresses) and attributes (templates' attributes.<key>).
CONTACT_READ = ("tenant", *CONTACT_TEXT_FIELDS, "attributes")

# The contact field a channel sends to, which is also the suppression list's key.
ADDRESS_FIELD = {"sms": "phone", "email": "email"}


def contact_fields(steps: Iterable[models.Step]) -> tuple[str, ...]:
    """The fields of CONTACT_READ the steps' messages read: the owner, the address of every
    channel among them (the send and the suppression reads) and what their templates name."""
    needed = {"tenant"}
    for step in steps:
        needed.add(ADDRESS_FIELD[step.kind])
        try:
            needed |= render.roots(step.body, step.subject)
        except render.TemplateError:  # (saved steps parse; if one did not: read them all)
            return CONTACT_READ
    return tuple(field for field in CONTACT_READ if field in needed)


def mirror(status: str, version: int, steps: list[models.Step]) -> str:
    return f"{status}:{version}:{len(steps)}:{','.join(contact_fields(steps))}"


def version_of(text: str) -> int:
    """The version in a mirror (-1 if malformed)."""
    parts = text.split(":")
    return int(parts[1]) if len(parts) in (3, 4) and parts[1].isdigit() else -1


@lru_cache(maxsize=4096)
def fields_of(text: str) -> tuple[str, ...]:
    """The contact fields a claim read under this mirror, in the order of its reply."""
    parts = text.split(":")
    return tuple(parts[3].split(",")) if len(parts) == 4 and parts[3] else CONTACT_READ
