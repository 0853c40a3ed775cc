"""The timing tests' fixed clock and local-time spelling."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

# Monday 2026-04-06 06:00 UTC: 02:00 in New York, 11:30 in Kolkata.
NOW = int(datetime(2026, 4, 6, 6, 0, tzinfo=ZoneInfo("UTC")).timestamp() * 1000)


def local(text: str, tz: str) -> str:
    """An RFC 3339 time as "YYYY-MM-DD HH:MM" in zone `tz`."""
    at = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(ZoneInfo(tz))
    return at.strftime("%Y-%m-%d %H:%M")
