"""What an opt-out, an opt-in or a hard bounce does, whatever channel reported it.

Order matters across two slots: the suppression (tenant tag) is written first, so the
dispatcher's send-time check stops the next step at once; the enrollments (contact's
shard) are cancelled second. A crash between the two loses nothing: the dispatcher cancels
an enrollment left with only suppressed steps when it next comes due.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog

from seqd.kinds import CHANNEL_ADDRESS, Channel
from seqd.models import CancelReason, SuppressionReason
from seqd.store.db import Store

log = structlog.get_logger(__name__)


class Stopped(msgspec.Struct, frozen=True):
    """The outcome of an opt-out or bounce: suppression new or not, enrollments cancelled."""

    channel: Channel
    value: str
    contact_id: str | None
    newly_suppressed: bool
    cancelled: list[str]


async def _stop(
    store: Store,
    tenant: str,
    channel: Channel,
    value: str,
    *,
    reason: SuppressionReason,
    cancel_reason: CancelReason,
    event_type: str,
    event: dict[str, Any],
    contact_id: str | None,
) -> Stopped:
    if contact_id is None:
        contact_id = await store.contacts.find(tenant, CHANNEL_ADDRESS[channel], value)
    _, new = await store.suppressions.add(tenant, channel, value, reason.value)
    cancelled = await store.lifecycle.stop_channel(
        tenant,
        channel,
        value,
        contact_id,
        cancel_reason=cancel_reason.value,
        event_type=event_type,
        event=event,
        quiet=not new,  # told when it was suppressed; again only if this cancels something
    )
    log.info(
        event_type,
        tenant=tenant,
        channel=channel,
        contact_id=contact_id,
        cancelled=len(cancelled),
        **event,
    )
    return Stopped(channel, value, contact_id, new, cancelled)


async def opt_out(
    store: Store,
    tenant: str,
    channel: Channel,
    value: str,
    *,
    source: str,
    contact_id: str | None = None,
) -> Stopped:
    """The contact asked to stop on `channel` (keyword, unsubscribe link, carrier block)."""
    return await _stop(
        store,
        tenant,
        channel,
        value,
        reason=SuppressionReason.OPTED_OUT,
        cancel_reason=CancelReason.OPTED_OUT,
        event_type="contact.opted_out",
        event={"source": source},
        contact_id=contact_id,
    )


async def bounce(
    store: Store, tenant: str, address: str, *, status: str, diagnostic: str | None
) -> Stopped:
    """A permanent delivery failure: the address is dead, stop mailing it."""
    return await _stop(
        store,
        tenant,
        "email",
        address,
        reason=SuppressionReason.BOUNCED,
        cancel_reason=CancelReason.BOUNCED,
        event_type="contact.bounced",
        event={"source": "dsn", "status": status, "diagnostic": diagnostic},
        contact_id=None,
    )


async def opt_in(store: Store, tenant: str, channel: Channel, value: str, *, source: str) -> bool:
    """Lift an opt-out (future enrollments only: nothing cancelled comes back).

    A `manual` suppression (added through the API by an operator) is not lifted by the
    contact: the operator put it there for a reason the contact cannot overrule.
    """
    removed = await store.suppressions.remove(
        tenant, channel, value, keep=SuppressionReason.MANUAL.value
    )
    if removed is None:
        return False
    contact_id = await store.contacts.find(tenant, CHANNEL_ADDRESS[channel], value)
    data = {"id": contact_id, "contact_id": contact_id, "channel": channel, "value": value}
    await store.lifecycle.emit(
        tenant, "contact.opted_in", data | {"source": source}, contact_id=contact_id, value=value
    )
    log.info("contact.opted_in", tenant=tenant, channel=channel, contact_id=contact_id)
    return True
