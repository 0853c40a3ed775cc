"""Time on the wire (RFC 3339 UTC with milliseconds) and in the store (integer ms)."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_ms() -> int:
    return int(time.time() * 1000)


def to_rfc3339(ms: int) -> str:
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def from_rfc3339(text: str) -> int:
    """Parse an RFC 3339 timestamp (any offset) to ms; ValueError when it is not one."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError("timestamp needs a UTC offset or Z")
    return int(dt.timestamp() * 1000)
