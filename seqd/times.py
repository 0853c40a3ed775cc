"""Time on the wire (RFC 3339 UTC with milliseconds) and in the store (integer ms)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from functools import lru_cache


def now_ms() -> int:
    return int(time.time() * 1000)


@lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")


@lru_cache(maxsize=8192)
def to_rfc3339(ms: int) -> str:
    # Every response and event spells several times, mostly of the same few seconds (the
    # events of one script call share their times): strftime once per second, and each
    # value formatted once while it is in use.
    seconds, millis = divmod(ms, 1000)
    return f"{_second(seconds)}{millis:03d}Z"


def from_rfc3339(text: str) -> int:
    """Parse an RFC 3339 timestamp (any offset) to ms; ValueError when it is not one."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError("timestamp needs a UTC offset or Z")
    return int(dt.timestamp() * 1000)
