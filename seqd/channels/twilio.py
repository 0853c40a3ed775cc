"""The `twilio` channel: SMS through Twilio's Messages API (or anything speaking its wire format).

`POST {base_url}/2010-04-01/Accounts/{sid}/Messages.json`, form-encoded, HTTP basic auth
with the account sid and auth token; `base_url` points tests and staging at a local
server. One pooled ClientSession per sender (per account), opened on the first send.

Twilio has no idempotency key for message creation, so a step re-sent after an `unknown`
outcome can reach the recipient twice; that is the at-least-once the dispatcher documents.
"""

from __future__ import annotations

import base64
from urllib.parse import quote, urlencode

import aiohttp
import msgspec

from seqd.channels import outcomes
from seqd.channels.base import OutboundMessage, SendResult
from seqd.config import HttpConfig, TwilioConfig

# https://www.twilio.com/docs/api/errors/21610: the recipient replied STOP.
UNSUBSCRIBED = 21610
# 20003 "Authenticate" comes with HTTP 401: our credentials, not this message, are wrong.
# Retrying (rather than failing every enrollment at once) gives an operator the backoff
# schedule to fix the token; attempts still run out if nobody does.
_RETRY_ON_AUTH = 401


class TwilioAnswer(msgspec.Struct):
    """The fields of Twilio's message resource and error document that seqd reads."""

    sid: str | None = None
    code: int | None = None
    message: str | None = None


_decode_answer = msgspec.json.Decoder(TwilioAnswer).decode


class TwilioSender:
    name = "twilio"

    def __init__(self, config: TwilioConfig, http: HttpConfig) -> None:
        self._config = config
        base = config.base_url.rstrip("/")
        sid = quote(config.account_sid, safe="")
        self._url = f"{base}/2010-04-01/Accounts/{sid}/Messages.json"
        self._callback: str | None = None
        if config.status_callback:
            public = http.public_url.rstrip("/")
            self._callback = f"{public}{http.base_path}/inbound/twilio/status"
        credentials = f"{config.account_sid}:{config.auth_token}".encode()
        self._authorization = "Basic " + base64.b64encode(credentials).decode("ascii")
        self._timeout = aiohttp.ClientTimeout(total=config.timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No connection cap here: dispatch.concurrency bounds in-flight sends per channel.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=self._timeout,
                headers={"Authorization": self._authorization, "User-Agent": "seqd"},
            )
        return self._session

    def form(self, message: OutboundMessage) -> dict[str, str]:
        """The request's form fields."""
        fields = {"To": message.to, "Body": message.body}
        sender = message.sender
        if sender is not None:
            if sender.messaging_service_sid:
                fields["MessagingServiceSid"] = sender.messaging_service_sid
            else:
                fields["From"] = sender.address
        elif self._config.messaging_service_sid:
            fields["MessagingServiceSid"] = self._config.messaging_service_sid
        elif self._config.from_number:
            fields["From"] = self._config.from_number
        if self._callback is not None:
            # The enrollment id names its shard, so the status endpoint finds the step
            # without a global sid → message index.
            query = urlencode({"e": message.enrollment_id, "s": message.step})
            fields["StatusCallback"] = f"{self._callback}?{query}"
        return fields

    async def send(self, message: OutboundMessage) -> SendResult:
        try:
            async with self._client().post(self._url, data=self.form(message)) as response:
                status = response.status
                headers = response.headers
                body = await response.read()
        except outcomes.TRANSPORT_ERRORS as exc:
            return outcomes.from_exception("twilio", exc)
        try:
            answer = _decode_answer(body)
        except msgspec.DecodeError:
            answer = TwilioAnswer()
        if 200 <= status < 300:
            return SendResult(outcome="sent", provider_id=answer.sid)
        error = f"twilio {status}"
        if answer.code is not None:
            error += f" code {answer.code}"
        if answer.message:
            error += f": {answer.message}"
        if outcomes.is_retryable_status(status) or status == _RETRY_ON_AUTH:
            return SendResult(
                outcome="retry", error=error, retry_after=outcomes.retry_after(headers)
            )
        return SendResult(outcome="failed", error=error, suppress=answer.code == UNSUBSCRIBED)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
