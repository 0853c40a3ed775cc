"""The sender protocol every channel implements, and the message it sends.

The dispatcher renders a step into an `OutboundMessage` and hands it to the sender of the
step's kind; the sender answers with a `SendResult` and never raises for a provider's
answer (only for a bug). `retry` means "not sent, try again later"; `unknown` means "may
have reached the provider" (a timeout after the request was written), which the
dispatcher treats per `dispatch.on_unknown`.
"""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec

from seqd.kinds import Kind

SendOutcome = Literal["sent", "retry", "failed", "unknown"]


def message_key(enrollment_id: str, step: int) -> str:
    """Stable per (enrollment, step): the idempotency key of every attempt at that step."""
    return f"{enrollment_id}.{step}"


class FromSender(msgspec.Struct, frozen=True, kw_only=True):
    """The sender (POST /v1/senders) a message goes out from: its number or address is the
    From, through its messaging service (Twilio) or SMTP profile when it names one."""

    id: str
    address: str
    name: str = ""
    messaging_service_sid: str | None = None
    smtp_profile: str | None = None


class WebhookCall(msgspec.Struct, frozen=True, kw_only=True):
    """How a webhook step calls its URL (`OutboundMessage.to`): the rest is the message's
    body and headers."""

    method: str = "POST"
    timeout_seconds: float = 10.0


class OutboundMessage(msgspec.Struct, kw_only=True):
    tenant: str
    enrollment_id: str
    contact_id: str
    sequence_id: str
    step: int
    kind: Kind
    to: str
    body: str
    # Email only.
    subject: str | None = None
    # Email threading: Message-ID of the sequence's first email to this contact, if any.
    thread_root: str | None = None
    # Extra headers (email) decided by the engine, e.g. List-Unsubscribe.
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    # The sequence's sender the step took; None: the tenant's configured number or address.
    sender: FromSender | None = None
    # A webhook step's request (seqd/engine/webhook_step.py).
    call: WebhookCall | None = None

    @property
    def key(self) -> str:
        return message_key(self.enrollment_id, self.step)


class SendResult(msgspec.Struct, kw_only=True):
    outcome: SendOutcome
    # The provider's id of the message (Twilio sid, SMTP Message-ID, …) when sent.
    provider_id: str | None = None
    error: str | None = None
    # Seconds the provider asked us to wait (Retry-After), for a retry.
    retry_after: float | None = None
    # The provider says the recipient unsubscribed (Twilio 21610): suppress the channel.
    suppress: bool = False


class Sender(Protocol):
    name: str

    async def send(self, message: OutboundMessage) -> SendResult: ...

    async def close(self) -> None: ...
