"""Who may not be enrolled in a sequence: a contact suppressed on every channel the
sequence uses (its phone on the tenant's SMS list and its email on the email list, for a
sequence of SMS and email steps). Read in bulk for the enroll paths; the lists themselves
(`keys.suppressions`) are written by the opt-out, bounce and suppression paths.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from seqd import ids, models
from seqd.kinds import CHANNEL_ADDRESS, CHANNELS, Channel
from seqd.store.context import StoreContext

if TYPE_CHECKING:
    from seqd.store.client import Pipe


def listed_in(pipe: Pipe, store: StoreContext, tenant: str) -> None:
    """Queue on `pipe` the check of which channels the tenant has suppressions on (one
    reply per channel of CHANNELS; `listed_from` reads them), so it rides along the
    sequence read of the enroll paths."""
    for ch in CHANNELS:
        pipe.exists(store.keys.suppressions(tenant, ch))


def listed_from(replies: list[int]) -> frozenset[Channel]:
    return frozenset(ch for ch, n in zip(CHANNELS, replies, strict=True) if n)


async def suppressed(
    store: StoreContext,
    tenant: str,
    seq: models.Sequence,
    contact_ids: list[str],
    known: dict[str, models.Contact],
    listed: frozenset[Channel] | None = None,
) -> set[str]:
    """The ids among `contact_ids` suppressed on every channel `seq` uses.

    `known` holds contacts already read (upserted ones); the others are read here.
    `listed`: the channels with any suppression (`listed_in`), read here when None. A
    channel with no suppression at all lets everyone through, which settles the usual
    case without reading a contact.
    """
    kinds = sorted({step.kind for step in seq.steps})
    channels = [ch for ch in CHANNELS if ch in kinds]
    if not contact_ids or len(channels) < len(kinds):  # (a kind no list blocks)
        return set()
    keys = store.keys
    if listed is None:
        pipe = store.client.pipeline(transaction=False)
        listed_in(pipe, store, tenant)
        listed = listed_from(await pipe.execute())
    if not all(ch in listed for ch in channels):
        return set()
    fields = [CHANNEL_ADDRESS[ch] for ch in channels]
    addresses: dict[str, list[str | None]] = {}
    unread = sorted({c for c in contact_ids if c not in known and ids.is_valid(c, ids.CONTACT)})
    pipe = store.client.pipeline(transaction=False)
    for cid in unread:
        pipe.hmget(keys.contact(ids.shard_of(cid, keys.shards), cid), fields)
    for cid, values in zip(unread, await pipe.execute() if unread else [], strict=True):
        addresses[cid] = list(values)
    for cid, contact in known.items():
        addresses[cid] = [getattr(contact, f) for f in fields]
    pipe = store.client.pipeline(transaction=False)
    asked: list[str] = [c for c in dict.fromkeys(contact_ids) if c in addresses]
    for k, ch in enumerate(channels):
        values = [addresses[c][k] or "" for c in asked]
        pipe.hmget(keys.suppressions(tenant, ch), values)
    per_channel = await pipe.execute() if asked else []
    return {
        cid
        for j, cid in enumerate(asked)
        if all(addresses[cid][k] and per_channel[k][j] is not None for k in range(len(channels)))
    }
