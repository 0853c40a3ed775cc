"""The enroll step kind: the contact handed to another sequence, through the one path every
enrollment takes (`bulk.enroll`: suppression screen, first step's time in the contact's
zone, the `enroll` script).

Idempotent like any enrollment: while the contact is live in the target sequence, a retry
(or a second process) gets that enrollment back, not a new one. The new enrollment gets
this one's metadata (the message's `body`: compose puts it there). Its id is the step's
provider id, recorded on this enrollment (`p<step>`) and in `sequence.step.sent`.
"""

from __future__ import annotations

import asyncio

import msgspec

from seqd import bulk
from seqd.channels.base import OutboundMessage, SendResult
from seqd.errors import SeqdError
from seqd.store.client import UNAVAILABLE
from seqd.store.db import Store
from seqd.timing.policy import Policy

_decode = msgspec.json.Decoder(dict[str, object]).decode


class EnrollStepSender:
    name = "enroll"

    def __init__(self, store: Store, policy: Policy) -> None:
        self.store = store
        self.policy = policy

    async def send(self, message: OutboundMessage) -> SendResult:
        tenant, sid = message.tenant, message.to
        try:
            target = await bulk.target(self.store, tenant, sid)
            metadata = _decode(message.body) if message.body else {}
            item = bulk.Item(contact_id=message.contact_id, metadata=metadata)
            (outcome,) = await bulk.enroll(
                self.store,
                tenant,
                target.seq,
                target.version,
                [item],
                full=False,
                listed=target.listed,
                timing=target.timing(self.policy),
            )
        except asyncio.CancelledError:
            raise
        except UNAVAILABLE as exc:
            return SendResult(outcome="retry", error=f"enroll: store unavailable: {exc}")
        except SeqdError as exc:
            # No such sequence, or not active.
            return SendResult(outcome="failed", error=f"enroll: {exc.detail}")
        if outcome.error is not None:
            return SendResult(outcome="failed", error=f"enroll: {outcome.error.detail}")
        return SendResult(outcome="sent", provider_id=outcome.enrollment_id)

    async def close(self) -> None:
        pass
