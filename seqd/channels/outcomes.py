"""How an HTTP provider's answer, or its absence, becomes a SendResult.

One place for the rule both HTTP senders follow: the provider is known not to have the
message when the connection was never made (refused, DNS, connect timeout) → `retry`;
it may have it when the request went out and the answer did not come back (read timeout,
reset, disconnect) → `unknown`; 429 and 5xx → `retry`; other 4xx → `failed`. aiohttp
never re-sends a POST on its own (it retries only idempotent methods on a stale
keep-alive connection), so an error after the write really is ambiguous; neither does
pyreqwest (the `http` channel's client), whose pool retries only a request its connection
closed before a byte of it was written.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

import aiohttp
from pyreqwest import exceptions as reqwest

from seqd.channels.base import SendResult

# Statuses that say "not now" rather than "never": rate limits and the provider's own
# trouble. 408 is the server giving up on reading our request, so it was not processed.
_RETRY_STATUSES = frozenset({408, 425, 429})

# What an aiohttp or pyreqwest request raises for a network problem (never CancelledError).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    asyncio.TimeoutError,
    OSError,
    reqwest.RequestError,
    reqwest.BuilderError,
)
# Raised before a byte of the request was written: no connection could be made (refused,
# DNS, TLS, connect timeout), or none was free in time.
_UNSENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, reqwest.PoolTimeoutError)
# hyper's cause of an error in the connect phase (pyreqwest's `details`).
_REQWEST_CONNECT_CAUSE = "client error (Connect)"


def _unsent(exc: BaseException) -> bool:
    if isinstance(exc, _UNSENT):
        return True
    # pyreqwest's class names the phase loosely: a total timeout while the answer is
    # awaited is a ConnectTimeoutError, a connection closed after the request went out a
    # ConnectError. Only hyper's connect-phase cause says nothing was written.
    if isinstance(exc, reqwest.RequestError):
        causes = (exc.details or {}).get("causes") or []
        return any(cause.get("message") == _REQWEST_CONNECT_CAUSE for cause in causes)
    return False


def is_retryable_status(status: int) -> bool:
    return status >= 500 or status in _RETRY_STATUSES


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None when absent or bad."""
    value = headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def from_exception(provider: str, exc: BaseException) -> SendResult:
    """The outcome of a request that raised instead of answering."""
    # Order matters: ClientConnectorError is a ClientOSError, ConnectionTimeoutError a
    # TimeoutError; both happen before a byte of the request was written.
    if _unsent(exc):
        return SendResult(outcome="retry", error=f"{provider}: cannot connect: {exc}")
    if isinstance(exc, aiohttp.InvalidURL | reqwest.BuilderError):
        return SendResult(outcome="failed", error=f"{provider}: invalid URL: {exc}")
    if isinstance(exc, asyncio.TimeoutError | reqwest.RequestTimeoutError):
        return SendResult(outcome="unknown", error=f"{provider}: no answer in time")
    return SendResult(
        outcome="unknown", error=f"{provider}: connection lost: {type(exc).__name__}: {exc}"
    )
