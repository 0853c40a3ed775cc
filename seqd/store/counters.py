"""The per-step counters' names and codes, and the Lua prelude that spells them for
includes/stats.lua (`-- @include stat_codes`); store/stats.py reads them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

# The counters, in the order the API lists them, with the short code stored in each field.
COUNTERS: Final[Mapping[str, str]] = {
    "scheduled": "sc",
    "sent": "se",
    "delivered": "dl",
    "undelivered": "ud",
    "failed": "fa",
    "skipped": "sk",
    "deferred": "df",
    "replied": "rp",
    "auto_replied": "ar",
    "opted_out": "oo",
    "unsubscribed": "us",
    "bounced": "bo",
    "clicked": "cl",
    "completed": "co",
    "cancelled": "ca",
}
NAMES: Final[Mapping[str, str]] = {code: name for name, code in COUNTERS.items()}
# The variant of a step without variants, and the step an outcome is credited to when the
# enrollment was sent nothing yet.
NO_VARIANT: Final = "-"
NO_STEP: Final = "-"
# Marks a per-sender field, "@<sender id>:<code>" (a step's field starts with a digit or "-").
SENDER_MARK: Final = "@"
DAY_MS: Final = 86_400_000
DEFAULT_RETENTION_DAYS: Final = 400


def lua_prelude() -> str:
    """The codes and defaults includes/stats.lua reads (`-- @include stat_codes`)."""
    codes = ", ".join(f"{name} = '{code}'" for name, code in COUNTERS.items())
    return (
        "-- Generated from store/stats.py: counter name -> the code stored in its field.\n"
        f"local STAT = {{{codes}}}\n"
        f"local NO_VARIANT, NO_STEP, SENDER_MARK = '{NO_VARIANT}', '{NO_STEP}', '{SENDER_MARK}'\n"
        f"local STAT_DAY_MS, STATS_RETENTION_DAYS = {DAY_MS}, {DEFAULT_RETENTION_DAYS}\n"
    )
