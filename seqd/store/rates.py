"""Send counts per 10-second bucket in Redis: the send rate across every seqd process.

A process's own counters (Prometheus) cannot tell `seqd status` what the other processes
sent, so each process adds its counts to the current bucket's HASH about once a second
(`metrics.RateRecorder`), and readers sum the buckets of the last minute (`seqd status`) or
hour (the dashboard's per-minute series). Buckets expire on their own; the cost is one
small pipeline per process per second, not per step.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from seqd.store.context import StoreContext

BUCKET_SECONDS = 10
# Webhook delivery attempts are counted in the same buckets under this channel name.
WEBHOOK_CHANNEL = "webhook"
# Steps' lateness (send time minus due time) in the same buckets: "late:ms" its sum in ms,
# "late:n" the steps it was measured on.
LATENESS_CHANNEL = "late"
# A bucket outlives the longest window read (the dashboard's hour) with room for clock skew
# between hosts: 390 small hashes for the whole deployment.
KEEP_SECONDS = 3900


class MinuteRates(msgspec.Struct, frozen=True):
    """One minute of the series: its start (ms), steps sent, their mean lateness (s)."""

    start: int
    sent: int
    lateness: float


class SendWindow(msgspec.Struct, kw_only=True):
    """Steps by channel and outcome over the last `seconds` (at most a minute)."""

    seconds: float
    counts: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)

    def per_second(self, channel: str, outcome: str = "sent") -> float:
        return self.counts.get(channel, {}).get(outcome, 0) / self.seconds


def bucket_of(now_ms: int) -> int:
    return now_ms // 1000 // BUCKET_SECONDS


class SendRates:
    def __init__(self, store: StoreContext) -> None:
        self.client = store.client
        self.keys = store.keys

    async def add(self, counts: Mapping[tuple[str, str], int], now_ms: int) -> None:
        """Add `{(channel, outcome): steps}` to the bucket of `now_ms`."""
        if not counts:
            return
        key = self.keys.sends(bucket_of(now_ms))
        pipe = self.client.pipeline(transaction=False)
        for (channel, outcome), n in counts.items():
            pipe.hincrby(key, f"{channel}:{outcome}", n)
        pipe.expire(key, KEEP_SECONDS)
        await pipe.execute()

    async def window(self, now_ms: int, seconds: int = 60) -> SendWindow:
        """The last `seconds` (a multiple of 10): the complete buckets and the current one.

        The window is `seconds` plus the part of the current bucket already elapsed, and
        rates are divided by exactly that span, so a fresh bucket does not halve them.
        """
        current = bucket_of(now_ms)
        full = max(1, seconds // BUCKET_SECONDS)
        pipe = self.client.pipeline(transaction=False)
        for bucket in range(current - full, current + 1):
            pipe.hgetall(self.keys.sends(bucket))
        rows: list[dict[str, str]] = await pipe.execute()
        counts: dict[str, dict[str, int]] = {}
        for row in rows:
            for field, value in row.items():
                channel, _, outcome = field.rpartition(":")
                if channel == LATENESS_CHANNEL:
                    continue
                per = counts.setdefault(channel, {})
                per[outcome] = per.get(outcome, 0) + int(value)
        elapsed = (now_ms / 1000) % BUCKET_SECONDS
        return SendWindow(seconds=full * BUCKET_SECONDS + elapsed, counts=counts)

    async def series(self, now_ms: int, minutes: int = 60) -> list[MinuteRates]:
        """Per minute over the last `minutes` (the current one last): steps sent (every
        channel but webhooks) and their mean lateness."""
        per_minute = 60 // BUCKET_SECONDS
        current = bucket_of(now_ms)
        first = current - current % per_minute - (minutes - 1) * per_minute
        pipe = self.client.pipeline(transaction=False)
        for bucket in range(first, current + 1):
            pipe.hgetall(self.keys.sends(bucket))
        rows: list[dict[str, str]] = await pipe.execute()
        out = []
        for m in range(minutes):
            sent = late_ms = late_n = 0
            for row in rows[m * per_minute : (m + 1) * per_minute]:
                for field, value in row.items():
                    channel, _, outcome = field.rpartition(":")
                    if channel == LATENESS_CHANNEL:
                        late_ms += int(value) if outcome == "ms" else 0
                        late_n += int(value) if outcome == "n" else 0
                    elif channel != WEBHOOK_CHANNEL and outcome == "sent":
                        sent += int(value)
            start = (first + m * per_minute) * BUCKET_SECONDS * 1000
            out.append(MinuteRates(start, sent, late_ms / late_n / 1000 if late_n else 0.0))
        return out
