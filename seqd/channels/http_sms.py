"""The `http` channel: SMS handed to a webhook (another provider's gateway, an automation tool).

POST a JSON document to `channels.http.url` with the configured header (an API key or a
bearer token) and `Idempotency-Key: <enrollment>.<step>`, the same on every attempt at a
step, so a receiver that honours it can drop the duplicate a re-sent `unknown` step makes.
The answer is classified like Twilio's; a JSON `id` in a 2xx answer becomes the provider id.

The client is pyreqwest (reqwest and hyper in Rust, on a runtime thread of its own): a send
costs this process 51 µs of CPU where the same send through aiohttp cost 117
(benchmarks/http_send.py, one run), and the send was most of a step's cost on this channel.
It ignores the environment's proxy variables (`no_proxy`), as aiohttp did, and asks for no
compressed answers.
"""

from __future__ import annotations

from datetime import timedelta

import msgspec
from pyreqwest.client import Client, ClientBuilder

from seqd.channels import outcomes
from seqd.channels.base import OutboundMessage, SendResult
from seqd.config import HttpSmsConfig


class WebhookSms(msgspec.Struct, kw_only=True):
    """The request body: the message and what the receiver needs to correlate it."""

    to: str
    # Encoded as `from` (a Python keyword).
    sender: str | None = msgspec.field(name="from")
    body: str
    tenant: str
    enrollment_id: str
    contact_id: str
    sequence_id: str
    step: int
    idempotency_key: str


class WebhookAnswer(msgspec.Struct):
    id: str | int | None = None
    error: str | None = None
    message: str | None = None


_encode = msgspec.json.Encoder().encode
_decode_answer = msgspec.json.Decoder(WebhookAnswer).decode


class HttpSmsSender:
    name = "http"

    def __init__(self, config: HttpSmsConfig) -> None:
        self._config = config
        self._headers = {"Content-Type": "application/json", "User-Agent": "seqd"}
        if config.header_name and config.header_value:
            self._headers[config.header_name] = config.header_value
        self._client: Client | None = None

    def _http(self) -> Client:
        if self._client is None:
            # No connection cap here: dispatch.concurrency bounds in-flight sends per channel.
            self._client = (
                ClientBuilder()
                .default_headers(self._headers)
                .timeout(timedelta(seconds=self._config.timeout_seconds))
                .no_proxy()
                .gzip(False)
                .brotli(False)
                .zstd(False)
                .deflate(False)
                .build()
            )
        return self._client

    def document(self, message: OutboundMessage) -> WebhookSms:
        return WebhookSms(
            to=message.to,
            sender=message.sender.address if message.sender else self._config.from_number,
            body=message.body,
            tenant=message.tenant,
            enrollment_id=message.enrollment_id,
            contact_id=message.contact_id,
            sequence_id=message.sequence_id,
            step=message.step,
            idempotency_key=message.key,
        )

    async def send(self, message: OutboundMessage) -> SendResult:
        payload = _encode(self.document(message))
        try:
            request = (
                self._http()
                .post(self._config.url)
                .header("Idempotency-Key", message.key)
                .body_bytes(payload)
                .build()
            )
            response = await request.send()
            status = response.status
            body = (await response.bytes()).to_bytes()
        except outcomes.TRANSPORT_ERRORS as exc:
            return outcomes.from_exception("http", exc)
        try:
            answer = _decode_answer(body) if body.strip() else WebhookAnswer()
        except msgspec.DecodeError:
            answer = WebhookAnswer()
        if 200 <= status < 300:
            provider_id = str(answer.id) if answer.id is not None else message.key
            return SendResult(outcome="sent", provider_id=provider_id)
        error = f"http {status}"
        detail = answer.error or answer.message
        if detail:
            error += f": {detail[:200]}"
        elif body and not body.lstrip().startswith((b"{", b"[")):
            error += f": {body[:200].decode('utf-8', 'replace')}"
        if outcomes.is_retryable_status(status):
            return SendResult(
                outcome="retry",
                error=error,
                retry_after=outcomes.retry_after(
                    {"Retry-After": response.get_header("Retry-After") or ""}
                ),
            )
        return SendResult(outcome="failed", error=error)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
