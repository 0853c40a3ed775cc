"""Suppression lists: per tenant and channel, the phones and addresses seqd must not use.

A HASH value -> JSON {reason, created_at} (the dispatcher asks HEXISTS at send time) and
a ZSET of the same values for listing in a stable order; `suppress` writes both at once.
Values are normalised by the caller (E.164 phones, `models.normalize_email` addresses).
"""

from __future__ import annotations

import msgspec

from seqd import models
from seqd.kinds import Channel
from seqd.store import calls
from seqd.store.context import StoreContext
from seqd.times import now_ms, to_rfc3339


class StoredSuppression(msgspec.Struct, frozen=True):
    """What the HASH stores per value."""

    reason: str
    created_at: int


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(StoredSuppression).decode


def _public(channel: Channel, value: str, raw: str) -> models.Suppression:
    record = _decode(raw)
    return models.Suppression(
        channel=channel,
        value=value,
        reason=record.reason,
        created_at=to_rfc3339(record.created_at),
    )


class Suppressions:
    def __init__(self, store: StoreContext) -> None:
        self.store = store
        self.keys = store.keys

    async def add(
        self, tenant: str, channel: Channel, value: str, reason: str
    ) -> tuple[models.Suppression, bool]:
        """Suppress `value`; returns the record and whether it is new (an existing one stays)."""
        record = _encode(StoredSuppression(reason=reason, created_at=now_ms())).decode()
        changed, raw = await self.store.runner.run(
            calls.suppress(self.keys, tenant, channel, "add", value, record, "")
        )
        return _public(channel, value, raw), bool(changed)

    async def remove(
        self, tenant: str, channel: Channel, value: str, *, keep: str = ""
    ) -> models.Suppression | None:
        """Lift a suppression; returns what was removed. A record whose reason is `keep` stays."""
        changed, raw = await self.store.runner.run(
            calls.suppress(self.keys, tenant, channel, "remove", value, "", keep)
        )
        return _public(channel, value, raw) if changed else None

    async def get(self, tenant: str, channel: Channel, value: str) -> models.Suppression | None:
        raw = await self.store.client.hget(self.keys.suppressions(tenant, channel), value)
        return _public(channel, value, str(raw)) if raw else None

    async def suppressed(self, tenant: str, values: dict[str, str]) -> set[str]:
        """Which of {channel: value} are suppressed (one round trip)."""
        pipe = self.store.client.pipeline(transaction=False)
        channels = list(values)
        for channel in channels:
            pipe.hexists(self.keys.suppressions(tenant, channel), values[channel])
        found = await pipe.execute()
        return {c for c, hit in zip(channels, found, strict=True) if hit}

    async def list(
        self, tenant: str, *, channels: list[Channel], limit: int, after: str | None
    ) -> tuple[list[models.Suppression], str | None, int]:
        """A page in value order across `channels` (phones start with "+", so they never
        collide with addresses and one cursor serves both lists)."""
        index = [self.keys.suppression_index(tenant, c) for c in channels]
        page, more = await self.store.merged_range(index, after, limit)
        pipe = self.store.client.pipeline(transaction=False)
        for value in page:
            for channel in channels:
                pipe.hget(self.keys.suppressions(tenant, channel), value)
        rows = await pipe.execute()
        data = []
        for i, value in enumerate(page):
            for j, channel in enumerate(channels):
                raw = rows[i * len(channels) + j]
                if raw:
                    data.append(_public(channel, value, raw))
        total = await self.store.total(index)
        return data, (page[-1] if more and page else None), total
