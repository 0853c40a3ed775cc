"""A sequence's shard mirror: what a shard's scripts know of a sequence without its document.

Each shard's `sq` hash holds `<status>:<version>:<steps>` per sequence, and its `sf` hash
`<version>:<fields>`: the contact fields the sequence's messages can use at that version,
comma-separated (`syncSequence` writes both). The scripts read the status and the step
count; `leasePeeked` compares the whole mirror (a peek is leased only under the mirror it
saw); the dispatcher reads the version (its plan). A claim reads only the `fields` of each
contact (a field the contact lacks costs Redis a scan of its hash), and every field of
CONTACT_READ when the fields' version is not the mirror's: written by a seqd from before
they existed, which ignores them, so processes of both versions can share a store.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from seqd import conditions, models, templates
from seqd.kinds import SPECS
from seqd.store.codec import CONTACT_TEXT_FIELDS
from seqd.timing.policy import QUIET_KINDS

# Every contact field a message can use: its owner (checked before a send), the text fields
# (templates and addresses) and attributes (templates' attributes.<key>).
# The contact hash's field naming its owner (the tenant).
CONTACT_OWNER = "tenant"
CONTACT_READ = (CONTACT_OWNER, *CONTACT_TEXT_FIELDS, "attributes")


def contact_fields(steps: Iterable[models.Step], scheduled: bool = False) -> tuple[str, ...]:
    """The fields of CONTACT_READ the steps' messages read: the owner, the address of every
    channel among them (the send and the suppression reads) and what their templates name;
    and what gives the contact's zone (timezone, phone) where windows or quiet hours apply:
    under a schedule (`scheduled`), for SMS steps."""
    needed = {CONTACT_OWNER, "timezone", "phone"} if scheduled else {CONTACT_OWNER}
    for step in steps:
        address = SPECS[step.kind].address
        if address is not None:
            needed.add(address)
        if step.kind in QUIET_KINDS:
            needed.add("timezone")
        needed |= conditions.roots(step.only_if) | conditions.roots(step.skip_if)
        try:
            needed |= templates.roots(*models.step_templates(step))
            for v in step.variants or ():
                needed |= templates.roots(v.body or "", v.subject)
        except templates.TemplateError:  # (saved steps parse; if one did not: read them all)
            return CONTACT_READ
    return tuple(field for field in CONTACT_READ if field in needed)


def mirror(status: str, version: int, steps: int) -> str:
    """`steps`: the step count the shards go by (the most of any kept version)."""
    return f"{status}:{version}:{steps}"


def fields_text(steps: list[models.Step], scheduled: bool = False) -> str:
    """The `fields` of the sequence's `sf` entry (its version goes before them)."""
    return ",".join(contact_fields(steps, scheduled))


def version_of(text: str) -> int:
    """The version in a mirror (-1 if malformed)."""
    parts = text.split(":")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else -1


@lru_cache(maxsize=4096)
def fields_of(text: str | None) -> tuple[str, ...]:
    """The contact fields a claim read for a sequence, in the order of its reply: those it
    answered for the sequence (`fields`), else every field of CONTACT_READ."""
    return tuple(text.split(",")) if text else CONTACT_READ
