"""Webhook deliveries: per shard, one HASH per (event, endpoint) and a queue per endpoint.

A delivery lives in its event's shard: the outbox reader schedules it in the same script
that acknowledges the outbox entry (`fanoutEvents`). Each endpoint has a queue ZSET
(delivery -> due ms) and the shard's `delivery_due` index holds each endpoint's earliest
score, so the deliverer polls S keys however many endpoints there are and claims per
endpoint (`claimWebhooks`), within that endpoint's free slots. Failed deliveries (every
attempt used) stay in the endpoint's failed list until retried or past retention.

Delivery hash fields: `t` tenant, `w` endpoint, `v` event id, `y` event type, `b` body
(the exact bytes signed), `a` attempts made, `st` pending|failed, `n` next attempt (ms),
`ca` created (ms), `la` last attempt (ms), `lc` last HTTP status, `le` last error,
`fa` failed at (ms), `k` fencing token (bumped by every claim and manual retry).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from seqd import ids
from seqd.errors import Conflict, NotFound
from seqd.event_models import WebhookDelivery
from seqd.store import calls, codec
from seqd.store.calls import Arg
from seqd.store.context import StoreContext
from seqd.store.scripts import ScriptError
from seqd.times import to_rfc3339

# Deliveries one purge or trim call deletes at most: bounds how long it holds Redis.
SWEEP_BATCH = 500

DeliveryOutcome = Literal["delivered", "retry", "failed", "drop"]


class ClaimedDelivery(msgspec.Struct, kw_only=True):
    """A delivery claimed for sending, with the token that lets its claimer finish it."""

    id: str
    shard: int
    token: str
    tenant: str
    endpoint_id: str
    event_id: str
    type: str
    body: bytes
    attempts: int


class DeliveryFinish(msgspec.Struct, frozen=True):
    """The outcome of one claimed delivery, to record (`Deliveries.finish_many`)."""

    item: ClaimedDelivery
    outcome: DeliveryOutcome
    now: int
    due_at: int = 0
    # Whether a request was made (counted in the attempts).
    attempted: bool = True
    status: int | None = None
    error: str = ""
    # After a delivered outcome, claim the endpoint's next due delivery with this lease.
    chain_lease_ms: int = 0

    def args(self) -> tuple[Arg, ...]:
        """The script's 9 values for this delivery (finishWebhooks-2.lua)."""
        return (
            self.now,
            self.item.id,
            self.item.token,
            self.outcome,
            self.due_at,
            1 if self.attempted else 0,
            "" if self.status is None else self.status,
            self.error,
            self.chain_lease_ms,
        )


_NOT_RECORDED: tuple[bool, ClaimedDelivery | None] = (False, None)


def delivery(did: str, h: dict[str, str]) -> WebhookDelivery:
    def when(field: str) -> str | None:
        value = h.get(field)
        return to_rfc3339(int(value)) if value else None

    status: Literal["pending", "failed"] = "failed" if h.get("st") == "failed" else "pending"
    lc = h.get("lc")
    return WebhookDelivery(
        id=did,
        endpoint_id=h["w"],
        event_id=h["v"],
        event_type=h["y"],
        status=status,
        attempts=int(h.get("a", 0)),
        next_attempt_at=when("n") if status == "pending" else None,
        last_attempt_at=when("la"),
        last_status=int(lc) if lc else None,
        last_error=h.get("le") or None,
        created_at=to_rfc3339(int(h["ca"])),
        failed_at=when("fa"),
    )


def _claimed(shard: int, row: list[Any]) -> ClaimedDelivery:
    did, token, flat = row
    h = codec.pairs(flat)
    return ClaimedDelivery(
        id=did,
        shard=shard,
        token=str(token),
        tenant=h["t"],
        endpoint_id=h["w"],
        event_id=h["v"],
        type=h["y"],
        body=h["b"].encode(),
        attempts=int(h.get("a", 0)),
    )


class Deliveries:
    def __init__(self, store: StoreContext) -> None:
        self.store = store
        self.keys = store.keys

    def _shard(self, did: str) -> int:
        return ids.shard_of(did, self.keys.shards)

    async def claim(
        self,
        shard: int,
        *,
        now: int,
        lease_ms: int,
        limit: int,
        per_endpoint: int,
        free: dict[str, int],
    ) -> list[ClaimedDelivery]:
        """Due deliveries of one shard; `free` caps endpoints that already have some in flight."""
        rows = await self.store.runner.run(
            calls.claim_webhooks(self.keys, shard, now, lease_ms, limit, per_endpoint, free)
        )
        return [_claimed(shard, row) for row in rows]

    async def finish(
        self,
        item: ClaimedDelivery,
        outcome: DeliveryOutcome,
        *,
        now: int,
        due_at: int = 0,
        attempted: bool = True,
        status: int | None = None,
        error: str = "",
        chain_lease_ms: int = 0,
    ) -> tuple[bool, ClaimedDelivery | None]:
        """Record an attempt's outcome: False when the claim was taken over meanwhile.

        With `chain_lease_ms`, a delivered outcome also claims the endpoint's next due
        delivery in the same shard (returned), so a busy endpoint's slot goes on at the
        cost of this one call."""
        finish = DeliveryFinish(
            item,
            outcome,
            now=now,
            due_at=due_at,
            attempted=attempted,
            status=status,
            error=error,
            chain_lease_ms=chain_lease_ms,
        )
        [result] = await self.finish_many([finish])
        if isinstance(result, Exception):
            raise result
        return result

    async def finish_many(
        self, finishes: Sequence[DeliveryFinish]
    ) -> list[tuple[bool, ClaimedDelivery | None] | Exception]:
        """Record several outcomes in one round trip (one script call per shard); per
        finish, in order, what `finish` returns or the ScriptError of its shard's call."""
        by_shard: dict[int, list[int]] = {}
        for i, f in enumerate(finishes):
            by_shard.setdefault(f.item.shard, []).append(i)
        calls_ = [
            calls.finish_webhooks(self.keys, shard, (finishes[i].args() for i in members))
            for shard, members in by_shard.items()
        ]
        replies = await self.store.runner.call_many(calls_)
        out: list[tuple[bool, ClaimedDelivery | None] | Exception] = [_NOT_RECORDED] * len(finishes)
        for (shard, members), reply in zip(by_shard.items(), replies, strict=True):
            for n, i in enumerate(members):
                if isinstance(reply, Exception):
                    out[i] = reply
                    continue
                row = reply[n]
                out[i] = (bool(row[0]), _claimed(shard, row[1]) if len(row) > 1 else None)
        return out

    async def retry(self, tenant: str, endpoint_id: str, did: str, now: int) -> WebhookDelivery:
        """Put a failed delivery back in its queue, due now, with a fresh schedule."""
        if not ids.is_valid(did, ids.DELIVERY):
            raise NotFound(f"no failed delivery {did}", field="delivery_id")
        retry = calls.retry_webhook(self.keys, self._shard(did), now, tenant, endpoint_id, did)
        try:
            flat = await self.store.runner.run(retry)
        except ScriptError as exc:
            if exc.code == "NOT_FOUND":
                raise NotFound(f"no failed delivery {did}", field="delivery_id") from None
            if exc.code == "NOT_FAILED":
                raise Conflict(
                    f"delivery {did} is {exc.detail}, not failed", status=exc.detail
                ) from None
            raise
        return delivery(did, codec.pairs(flat))

    async def list_failed(
        self, tenant: str, endpoint_id: str, *, limit: int, after: str | None
    ) -> tuple[list[WebhookDelivery], str | None, int]:
        index = [self.keys.failed_deliveries(s, endpoint_id) for s in range(self.keys.shards)]
        page, more = await self.store.merged_range(index, after, limit)
        pipe = self.store.client.pipeline(transaction=False)
        for did in page:
            pipe.hgetall(self.keys.delivery(self._shard(did), did))
        rows = await pipe.execute()
        data = [
            delivery(did, h)
            for did, h in zip(page, rows, strict=True)
            if h.get("t") == tenant and h.get("w") == endpoint_id
        ]
        total = await self.store.total(index)
        return data, (page[-1] if more and page else None), total

    async def purge(self, endpoint_id: str) -> None:
        """Delete every delivery of a deleted endpoint, shard by shard, in bounded batches."""
        for shard in range(self.keys.shards):
            purge = calls.purge_webhooks(self.keys, shard, endpoint_id, SWEEP_BATCH)
            while await self.store.runner.run(purge):
                pass

    async def trim(self, before_ms: int) -> int:
        """Delete failed deliveries of events older than `before_ms`; returns how many."""
        bound = ids.new(ids.DELIVERY, before_ms, 0)
        removed = 0
        for shard in range(self.keys.shards):
            trim = calls.trim_webhooks(self.keys, shard, bound, SWEEP_BATCH)
            while True:
                n = int(await self.store.runner.run(trim))
                removed += n
                if n < SWEEP_BATCH:
                    break
        return removed

    async def heads(self) -> list[int | None]:
        """Per shard, the earliest score of its delivery index (ms; claimed ones count at
        their lease end), None when the shard has nothing scheduled."""
        pipe = self.store.client.pipeline(transaction=False)
        for shard in range(self.keys.shards):
            pipe.zrange(self.keys.delivery_due(shard), 0, 0, withscores=True)
        rows = await pipe.execute()
        return [int(row[0][1]) if row else None for row in rows]

    async def next_due(self) -> int | None:
        """The earliest score over every shard, None when nothing is scheduled."""
        scores = [h for h in await self.heads() if h is not None]
        return min(scores) if scores else None
