"""The webhook step kind: one signed HTTP call to another system per attempt.

Signed as seqd's webhooks are (Standard Webhooks: `webhook-id` is the step's message key,
stable per (enrollment, step), so is `Idempotency-Key`), under the SSRF guard of
`webhooks.allow_private_targets` (the host checked when the step is saved, the addresses
checked again when connecting: events/ssrf.py). The outcome follows the http SMS
channel's rules: 2xx sent, 408/425/429/5xx retry (Retry-After honoured), another 4xx
failed; a connection refused retries, a timeout after the request is `unknown`. A 2xx
answer `{"attributes": {...}}` is merged into the contact before the step is recorded, so
the next step's templates read it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec
import structlog

from seqd import models
from seqd.channels import outcomes
from seqd.channels.base import OutboundMessage, SendResult
from seqd.config import WebhooksConfig
from seqd.errors import SeqdError
from seqd.events import signing, ssrf
from seqd.store.client import UNAVAILABLE
from seqd.store.db import Store

log = structlog.get_logger(__name__)

USER_AGENT = "seqd-webhook-step"
# Bytes of an answer read at most (an attributes object is small).
READ_LIMIT = 64 * 1024
QUOTE_CHARS = 200
# Methods whose request carries the step's body.
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_LINE_BREAK = re.compile(f"[{models.LINE_BREAKS}]")


class StepAnswer(msgspec.Struct):
    """What seqd reads of a 2xx answer; anything else in it is ignored."""

    id: str | int | None = None
    attributes: dict[str, Any] | None = None


_decode_answer = msgspec.json.Decoder(StepAnswer).decode


def merged_attributes(current: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """`current` with `answer` over it (null removes a key); ValueError when the result is
    not a contact's attributes (models.Attributes, one line each)."""
    merged = dict(current)
    for key, value in answer.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    try:
        checked: dict[str, Any] = msgspec.convert(merged, models.Attributes)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None
    if any(isinstance(v, str) and _LINE_BREAK.search(v) for v in checked.values()):
        raise ValueError("an attribute holds a line break")
    return checked


class WebhookStepSender:
    name = "webhook"

    def __init__(
        self, store: Store, config: WebhooksConfig, secret_for: Callable[[str], str | None]
    ) -> None:
        self.store = store
        self.config = config
        self.secret_for = secret_for
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0, resolver=ssrf.resolver(allow_private=self.config.allow_private_targets)
            )
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def headers(self, message: OutboundMessage, body: bytes, secret: str) -> dict[str, str]:
        """The request's headers: the step's, then seqd's (which a step cannot replace)."""
        headers = {"Content-Type": "application/json", **message.headers}
        timestamp = int(time.time())  # the receiver compares it with its wall clock
        headers.update(
            {
                "User-Agent": USER_AGENT,
                "Idempotency-Key": message.key,
                "webhook-id": message.key,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": signing.header([secret], message.key, timestamp, body),
            }
        )
        return headers

    async def send(self, message: OutboundMessage) -> SendResult:
        call = message.call
        method = call.method if call is not None else "POST"
        timeout = call.timeout_seconds if call is not None else self.config.timeout_seconds
        body = message.body.encode() if method in _WITH_BODY else b""
        secret = self.secret_for(message.tenant)
        if secret is None:
            # (The secret was removed from the config after the step was saved.)
            return SendResult(outcome="failed", error="webhook: no webhooks.step_secret to sign")
        broken = [k for k, v in message.headers.items() if _LINE_BREAK.search(v)]
        if broken:
            # (A template put a line break from the contact or metadata into a header.)
            return SendResult(outcome="failed", error=f"webhook: header {broken[0]}: line break")
        try:
            if not self.config.allow_private_targets:
                ssrf.check_literal(str(ssrf.parse(message.to).host))
            async with self._client().request(
                method,
                message.to,
                data=body or None,
                headers=self.headers(message, body, secret),
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                status, answer = resp.status, await resp.content.read(READ_LIMIT)
                retry_after = outcomes.retry_after(resp.headers)
        except (ssrf.ForbiddenTarget, SeqdError) as exc:
            return SendResult(outcome="failed", error=f"webhook: refused: {exc}")
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ssrf.ForbiddenTarget):
                return SendResult(outcome="failed", error=f"webhook: refused: {exc.os_error}")
            return outcomes.from_exception("webhook", exc)
        except outcomes.TRANSPORT_ERRORS as exc:
            return outcomes.from_exception("webhook", exc)
        if 200 <= status < 300:
            return await self._answered(message, status, answer)
        quote = answer[:QUOTE_CHARS].decode("utf-8", "replace").strip()
        error = f"webhook: HTTP {status}" + (f": {quote}" if quote else "")
        if outcomes.is_retryable_status(status):
            return SendResult(outcome="retry", error=error, retry_after=retry_after)
        return SendResult(outcome="failed", error=error)

    async def _answered(self, message: OutboundMessage, status: int, body: bytes) -> SendResult:
        """A 2xx: its `attributes` merged into the contact (a store that cannot be reached:
        retry, the call being idempotent by its key); its `id`, else the status, recorded
        as the step's provider id."""
        answer = StepAnswer()
        if body.strip():
            try:
                answer = _decode_answer(body)
            except msgspec.DecodeError:
                pass  # (not the optional JSON answer: the call still succeeded)
        if answer.attributes:
            try:
                await self._merge(message, answer.attributes)
            except asyncio.CancelledError:
                raise
            except UNAVAILABLE as exc:
                return SendResult(outcome="retry", error=f"webhook: attributes not saved: {exc}")
        provider_id = str(answer.id) if answer.id is not None else f"http:{status}"
        return SendResult(outcome="sent", provider_id=provider_id)

    async def _merge(self, message: OutboundMessage, attributes: dict[str, Any]) -> None:
        contacts = self.store.contacts
        try:
            contact = await contacts.get(message.tenant, message.contact_id)
            merged = merged_attributes(contact.attributes, attributes)
            await contacts.update(message.tenant, message.contact_id, {"attributes": merged})
        except (ValueError, SeqdError) as exc:
            # The call succeeded; what it answered cannot be kept. Logged, not retried.
            log.warning(
                "webhook_step.attributes_refused",
                enrollment_id=message.enrollment_id,
                step=message.step,
                error=str(exc),
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
