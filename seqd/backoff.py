"""Pacing of a background loop's retries while Redis is away: doubling, capped, reset on success."""

from __future__ import annotations

# Longest pause between two attempts: bounds how long after Redis returns a loop resumes.
CAP_SECONDS = 2.0


class Backoff:
    """`failed()` is the next pause (base, twice that, … up to the cap); `reset()` on success."""

    def __init__(self, base_seconds: float, cap_seconds: float = CAP_SECONDS) -> None:
        self.base = base_seconds
        self.cap = max(cap_seconds, base_seconds)
        self.failures = 0

    def failed(self) -> float:
        pause = min(self.cap, self.base * float(2 ** min(self.failures, 30)))
        self.failures += 1
        return pause

    def reset(self) -> None:
        self.failures = 0
