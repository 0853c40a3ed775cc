"""The webhook deliverer: claim due deliveries, POST them signed, record each outcome.

Delivery state is only in Redis (`store/deliveries.py`): a claim moves a delivery's score
to the end of its lease and bumps its fencing token, so a process that dies mid-request
loses nothing (the delivery is due again after the lease) and a late finisher changes
nothing. Each endpoint gets at most `concurrency_per_endpoint` requests in flight per
process, and claims take only what fits, so a slow or dead receiver keeps its backlog in
Redis and never holds back other endpoints (nor the dispatcher: separate tasks, separate
connection pool).

Outcomes: any 2xx delivered; 410 disables the endpoint and fails the delivery; any other
answer, a timeout or a connection error is retried after the next wait of
`retry_schedule_seconds` (jittered), and fails (dead letter) when none is left.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Protocol

import aiohttp
import msgspec
import structlog
from yarl import URL

import seqd
from seqd.config import WebhooksConfig
from seqd.events import signing, ssrf
from seqd.loop import Heart, Loop
from seqd.store.db import Store
from seqd.store.deliveries import ClaimedDelivery, DeliveryFinish, DeliveryOutcome
from seqd.store.webhooks import EndpointRecord
from seqd.times import now_ms

log = structlog.get_logger(__name__)

NAME = "events.deliverer"
USER_AGENT = f"seqd/{seqd.__version__} (webhooks)"
# Bytes of a receiver's answer read (to reuse the connection) and quoted in last_error.
READ_LIMIT = 64 * 1024
QUOTE_CHARS = 200
# Housekeeping (trimming failed deliveries past retention) runs this often, in ms.
MAINTENANCE_MS = 60_000
GONE = 410
# A chain of deliveries on one slot re-reads its endpoint record after this long.
ENDPOINT_REFRESH_SECONDS = 1.0
# Parsed endpoint URLs kept (a few per endpoint over its life: PATCHes change them).
TARGETS_KEPT = 10_000


Recorded = asyncio.Future[tuple[bool, ClaimedDelivery | None]]


class DeliveryObserver(Protocol):
    def webhook_delivery(self, outcome: str) -> None: ...


class _Quiet:
    def webhook_delivery(self, outcome: str) -> None:
        pass


class Attempt(msgspec.Struct, frozen=True):
    """What one request got: an HTTP status, or none and the reason."""

    status: int | None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def session(config: WebhooksConfig) -> aiohttp.ClientSession:
    """The deliverer's one ClientSession: no pool-wide cap (per-endpoint limits apply),
    the SSRF-guarded resolver unless private targets are allowed. Call inside the loop."""
    connector = aiohttp.TCPConnector(
        limit=0, resolver=ssrf.resolver(allow_private=config.allow_private_targets)
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=config.timeout_seconds),
        headers={"User-Agent": USER_AGENT},
    )


def jittered(seconds: float, jitter: float, rng: random.Random) -> float:
    return seconds * rng.uniform(1 - jitter, 1 + jitter) if seconds else 0.0


class Deliverer:
    def __init__(
        self,
        store: Store,
        config: WebhooksConfig,
        session: aiohttp.ClientSession,
        *,
        clock: Callable[[], int] = now_ms,
        rng: random.Random | None = None,
        observer: DeliveryObserver | None = None,
        liveness: Heart | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.session = session
        self.clock = clock
        self.rng = rng or random.Random()
        self.observer: DeliveryObserver = observer or _Quiet()
        self.lease_ms = int(config.lease_seconds * 1000)
        self.in_flight: dict[str, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._next_maintenance = 0
        self._shard_turn = 0
        # Outcomes waiting for the recorder task, which writes all that are ready in one
        # round trip (a busy endpoint answers many slots in one turn of the event loop).
        self._outcomes: list[tuple[DeliveryFinish, Recorded]] = []
        self._recorder: asyncio.Task[None] | None = None
        self._targets: dict[str, URL] = {}
        self.loop = Loop(
            NAME,
            self._turn,
            idle_seconds=config.idle_poll_ms / 1000,
            deadline_seconds=config.timeout_seconds + 10 * config.idle_poll_ms / 1000 + 30,
            failed_event="webhook.round_failed",
            liveness=liveness,
        )

    # -- one round ------------------------------------------------------------------------
    async def run_once(self, now: int | None = None) -> int:
        """Claim what is due and fits, and start sending it; returns how many were claimed.

        Sends run as tasks: `drain()` waits for them (tests), the loop does not.
        """
        now = self.clock() if now is None else now
        if now >= self._next_maintenance:
            self._next_maintenance = now + MAINTENANCE_MS
            await self.store.deliveries.trim(now - self.config.failed_retention_hours * 3_600_000)
        capacity = self.config.max_in_flight - sum(self.in_flight.values())
        per_endpoint = self.config.concurrency_per_endpoint
        heads = await self.store.deliveries.heads()
        shards = len(heads)
        claimed: list[ClaimedDelivery] = []
        # Start at a different shard each round: no shard is always served last.
        self._shard_turn = (self._shard_turn + 1) % shards
        try:
            for i in range(shards):
                shard = (self._shard_turn + i) % shards
                head = heads[shard]
                if capacity <= 0:
                    break
                if head is None or head > now:
                    continue
                free = {ep: max(per_endpoint - n, 0) for ep, n in self.in_flight.items() if n}
                got = await self.store.deliveries.claim(
                    shard,
                    now=now,
                    lease_ms=self.lease_ms,
                    limit=capacity,
                    per_endpoint=per_endpoint,
                    free=free,
                )
                for item in got:
                    self.in_flight[item.endpoint_id] = self.in_flight.get(item.endpoint_id, 0) + 1
                capacity -= len(got)
                claimed += got
            if not claimed:
                return 0
            endpoints = await self.store.webhooks.lookup((c.tenant, c.endpoint_id) for c in claimed)
        except BaseException:
            # Nothing will be sent (a later shard's claim or the lookup failed): free the
            # slots, or an endpoint whose slots are all held this way is never claimed
            # again; the claims come back after the lease.
            for item in claimed:
                self._release(item.endpoint_id)
            raise
        started = time.monotonic()
        for item in claimed:
            task = asyncio.create_task(
                self._deliver(item, endpoints[(item.tenant, item.endpoint_id)], now, started)
            )
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return len(claimed)

    async def drain(self) -> None:
        """Wait until every send started so far is finished and recorded."""
        while self.tasks:
            await asyncio.wait(set(self.tasks))

    async def _deliver(
        self, item: ClaimedDelivery, endpoint: EndpointRecord | None, now: int, started: float
    ) -> None:
        """Send `item`, then whatever its endpoint's slot is handed next (a chain)."""
        fetched = time.monotonic()
        current: ClaimedDelivery | None = item
        try:
            while current is not None:
                current, now = await self._attempt(current, endpoint, now, started)
                started = time.monotonic()
                if current is not None and started - fetched > ENDPOINT_REFRESH_SECONDS:
                    # A long chain re-reads its endpoint: a PATCH or rotation applies soon.
                    pair = (current.tenant, current.endpoint_id)
                    endpoint = (await self.store.webhooks.lookup([pair]))[pair]
                    fetched = started
        except asyncio.CancelledError:
            raise
        except Exception:
            # The store failed to record the outcome: the claim's lease runs out and the
            # delivery is sent again (at least once).
            log.exception("webhook.finish_failed", delivery=(current or item).id)
        finally:
            self._release(item.endpoint_id)
            self.loop.wake()

    def _release(self, endpoint_id: str) -> None:
        left = self.in_flight.get(endpoint_id, 1) - 1
        if left > 0:
            self.in_flight[endpoint_id] = left
        else:
            self.in_flight.pop(endpoint_id, None)

    async def _attempt(
        self, item: ClaimedDelivery, endpoint: EndpointRecord | None, now: int, started: float
    ) -> tuple[ClaimedDelivery | None, int]:
        """One delivery; returns the next one claimed for this slot (if any) and the time."""
        if endpoint is None:
            # Deleted since the event: its deliveries go with it.
            await self._record(DeliveryFinish(item, "drop", now=now, attempted=False))
            self.observer.webhook_delivery("dropped")
            return None, now
        if not endpoint.enabled:
            reason = endpoint.disabled_reason or "disabled"
            error = f"endpoint disabled ({reason})"
            await self._record(
                DeliveryFinish(item, "failed", now=now, attempted=False, error=error)
            )
            self.observer.webhook_delivery("failed")
            return None, now
        result = await self.post(endpoint, item, now)
        # The outcome's time: the round's clock plus the request's own duration.
        at = now + int((time.monotonic() - started) * 1000)
        attempts = item.attempts + 1
        outcome: DeliveryOutcome
        due_at = 0
        if result.ok:
            outcome = "delivered"
        elif result.status == GONE:
            outcome = "failed"
            await self._disable(item.tenant, endpoint.id, at)
        elif attempts >= len(self.config.retry_schedule_seconds):
            outcome = "failed"
        else:
            outcome = "retry"
            wait = self.config.retry_schedule_seconds[attempts]
            due_at = at + int(jittered(wait, self.config.jitter, self.rng) * 1000)
        recorded, nxt = await self._record(
            DeliveryFinish(
                item,
                outcome,
                now=at,
                due_at=due_at,
                status=result.status,
                error=result.error,
                chain_lease_ms=0 if self.loop.stopping.is_set() else self.lease_ms,
            )
        )
        self.observer.webhook_delivery(outcome)
        if not result.ok:
            # A success is counted (observer), not logged: a line per delivery would cost
            # more than the delivery's own bookkeeping.
            log.info(
                "webhook.attempt",
                delivery=item.id,
                endpoint=endpoint.id,
                event_id=item.event_id,
                attempt=attempts,
                status=result.status,
                error=result.error or None,
                outcome=outcome,
            )
        if not recorded:
            # Its lease ran out and another claim took over: that claimer records the end.
            log.warning("webhook.stale_claim", delivery=item.id)
        return nxt, at

    async def _record(self, finish: DeliveryFinish) -> tuple[bool, ClaimedDelivery | None]:
        """Record an outcome, together with every other outcome ready by then."""
        recorded: Recorded = asyncio.get_running_loop().create_future()
        self._outcomes.append((finish, recorded))
        if self._recorder is None:
            self._recorder = asyncio.create_task(self._write_outcomes())
        return await recorded

    async def _write_outcomes(self) -> None:
        """Write the waiting outcomes, a batch per round trip, until none is left. A failed
        write fails its batch's waiters (their claims come back after the lease)."""
        batch: list[tuple[DeliveryFinish, Recorded]] = []
        try:
            while self._outcomes:
                batch, self._outcomes = self._outcomes, []
                try:
                    results = await self.store.deliveries.finish_many([f for f, _ in batch])
                except Exception as exc:
                    results = [exc] * len(batch)
                for (_, waiter), result in zip(batch, results, strict=True):
                    if waiter.done():  # its sender was cancelled
                        continue
                    if isinstance(result, Exception):
                        waiter.set_exception(result)
                    else:
                        waiter.set_result(result)
                batch = []
        finally:
            self._recorder = None
            # Cancelled (stop): nobody is left to wait for these.
            for _, waiter in batch + self._outcomes:
                waiter.cancel()
            self._outcomes = []

    async def post(self, endpoint: EndpointRecord, item: ClaimedDelivery, now: int) -> Attempt:
        """One signed POST of the delivery's body. Never raises for the receiver's faults."""
        # The receiver checks the timestamp against its clock: it is the wall clock's.
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": item.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signing.header(
                endpoint.signing_secrets(now), item.event_id, timestamp, item.body
            ),
        }
        try:
            async with self.session.post(
                self._target(endpoint.url), data=item.body, headers=headers, allow_redirects=False
            ) as resp:
                head = await resp.content.read(READ_LIMIT)
                if 200 <= resp.status < 300:
                    return Attempt(resp.status)
                quote = head[:QUOTE_CHARS].decode("utf-8", "replace").strip()
                error = f"HTTP {resp.status}" + (f": {quote}" if quote else "")
                return Attempt(resp.status, error)
        except TimeoutError:
            return Attempt(None, f"timeout after {self.config.timeout_seconds:g} s")
        except ssrf.ForbiddenTarget as exc:
            return Attempt(None, f"refused: {exc}")
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ssrf.ForbiddenTarget):
                return Attempt(None, f"refused: {exc.os_error}")
            return Attempt(None, f"connection failed: {exc.os_error or exc}")
        except aiohttp.ClientError as exc:
            return Attempt(None, f"request failed: {type(exc).__name__}: {exc}")
        except Exception as exc:  # an invalid stored URL, say: a failed attempt, not a crash
            if isinstance(exc, asyncio.CancelledError):
                raise
            return Attempt(None, f"request failed: {type(exc).__name__}: {exc}")

    def _target(self, url: str) -> URL:
        """An endpoint's URL, parsed (and an IP literal checked) once, not per delivery."""
        target = self._targets.get(url)
        if target is None:
            target = ssrf.parse(url)
            if not self.config.allow_private_targets:
                ssrf.check_literal(str(target.host))
            if len(self._targets) >= TARGETS_KEPT:
                self._targets.clear()
            self._targets[url] = target
        return target

    async def _disable(self, tenant: str, endpoint_id: str, now: int) -> None:
        def gone(record: EndpointRecord) -> EndpointRecord:
            return msgspec.structs.replace(
                record, enabled=False, disabled_reason="gone", updated_at=now
            )

        try:
            await self.store.webhooks.update(tenant, endpoint_id, gone)
        except Exception:
            log.exception("webhook.disable_failed", endpoint=endpoint_id)
            return
        log.warning("webhook.endpoint_disabled", endpoint=endpoint_id, reason="410 Gone")

    # -- the loop -------------------------------------------------------------------------
    def start(self) -> None:
        self.loop.start()

    async def stop(self) -> None:
        """Stop claiming; give requests in flight the timeout, then cancel them (their
        deliveries are sent again after the lease)."""
        # A round stuck on a Redis call gets the same bound as a request.
        await self.loop.stop(self.config.timeout_seconds)
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=self.config.timeout_seconds)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._recorder is not None:
            self._recorder.cancel()
            await asyncio.wait([self._recorder])

    async def _turn(self) -> float:
        """One round; with nothing claimable, sleep until the next due time, a finished
        request (free slots: `loop.wake`) or the poll interval, whichever comes first."""
        if await self.run_once():
            return 0.0
        idle_ms = self.config.idle_poll_ms
        nxt = await self.store.deliveries.next_due()
        now = self.clock()
        if nxt is not None and nxt > now:
            idle_ms = min(idle_ms, nxt - now)
        return idle_ms / 1000
