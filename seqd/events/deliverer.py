"""The webhook deliverer: claim due deliveries, POST them signed, record each outcome.

Delivery state is only in Redis (`store/deliveries.py`): a claim moves a delivery's score
to the end of its lease and bumps its fencing token, so a process that dies mid-request
loses nothing (the delivery is due again after the lease) and a late finisher changes
nothing. Each endpoint gets at most `concurrency_per_endpoint` requests in flight per
process, and claims take only what fits, so a slow or dead receiver keeps its backlog in
Redis and never holds back other endpoints (nor the dispatcher: separate tasks, separate
connection pool).

A claimed delivery waits in its endpoint's lane (`EndpointLane`) until one of the endpoint's
senders takes it. A sender hands each outcome to the outcome writer and goes straight on
to the next delivery, so a slot never waits for Redis; the writer records every outcome
ready by then in one round trip per shard, and a delivered outcome's write claims the
endpoint's next due delivery into the lane. An outcome is written only after its request
was answered: a crash before the write loses the outcome, not the delivery, which is sent
again after its lease (webhooks are at least once).

Outcomes: any 2xx delivered; 410 disables the endpoint and fails the delivery; any other
answer, a timeout or a connection error is retried after the next wait of
`retry_schedule_seconds` (jittered), and fails (dead letter) when none is left.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import msgspec
import structlog
from pyreqwest import exceptions as reqwest

from seqd.config import WebhooksConfig
from seqd.events import signing, ssrf
from seqd.events.client import WebhookClient
from seqd.loop import Heart, Loop
from seqd.store.db import Store
from seqd.store.deliveries import ClaimedDelivery, DeliveryFinish, DeliveryOutcome
from seqd.store.webhooks import EndpointRecord
from seqd.times import now_ms

log = structlog.get_logger(__name__)

NAME = "events.deliverer"
# Bytes of a receiver's answer read at most (to reuse the connection), and characters of
# it quoted in last_error.
READ_LIMIT = 64 * 1024
QUOTE_CHARS = 200
# Housekeeping (trimming failed deliveries past retention) runs this often, in ms.
MAINTENANCE_MS = 60_000
GONE = 410
# A lane re-reads its endpoint record after this long: a PATCH or rotation applies soon.
ENDPOINT_REFRESH_SECONDS = 1.0
# An endpoint may hold this many times its concurrency in claimed deliveries: the rest
# wait in its lane, so a sender finds its next delivery there instead of waiting for the
# write that claims it.
PREFETCH = 8
# Outcome writes in flight at once. One: the outcomes answered during a write go in the
# next one, a bigger batch; two in flight cost more CPU per delivery (smaller batches,
# more round trips) and were no faster (benchmarks/RESULTS.md "webhooks").
WRITERS = 1


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


def session(config: WebhooksConfig) -> WebhookClient:
    """The deliverer's HTTP client (seqd/events/client.py: pyreqwest, no cookies, no
    redirects, the SSRF guard pinning each host name to a checked address unless private
    targets are allowed)."""
    return WebhookClient(config)


def _reason(exc: BaseException) -> str:
    """An error's message; a pyreqwest error's with its root cause (the OS error, the
    certificate problem, the DNS failure)."""
    if not isinstance(exc, reqwest.PyreqwestError):
        return str(exc)
    causes = (getattr(exc, "details", None) or {}).get("causes") or []
    return f"{exc.message}: {causes[-1]['message']}" if causes else exc.message


def jittered(seconds: float, jitter: float, rng: random.Random) -> float:
    return seconds * rng.uniform(1 - jitter, 1 + jitter) if seconds else 0.0


class EndpointLane:
    """One endpoint's deliveries held by this process: claimed and waiting in `ready`
    (each with the monotonic time after which its lease is too short to send it), being
    sent by one of `senders` tasks, or sent and waiting for their outcome's write."""

    __slots__ = ("endpoint", "fetched", "ready", "senders")

    def __init__(self, endpoint: EndpointRecord | None) -> None:
        self.endpoint = endpoint
        self.fetched = time.monotonic()
        self.ready: deque[tuple[ClaimedDelivery, float]] = deque()
        self.senders = 0


class Deliverer:
    def __init__(
        self,
        store: Store,
        config: WebhooksConfig,
        session: WebhookClient,
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
        # A delivery still waiting this long after its claim is left for the lease to
        # return: sent later, its request could outlast the lease and race a new claimer.
        self._sendable_seconds = config.lease_seconds - config.timeout_seconds
        # Deliveries held (claimed and not yet recorded) per endpoint id.
        self.in_flight: dict[str, int] = {}
        self.lanes: dict[str, EndpointLane] = {}
        self.sending = 0
        # Set while stop() cancels what is left: nothing new starts meanwhile.
        self._closed = False
        # Endpoints with waiting deliveries and no sender, for want of the process's cap.
        self._starved: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self._next_maintenance = 0
        self._shard_turn = 0
        # Outcomes waiting for the writer task, which writes all that are ready in one
        # round trip (a busy endpoint answers many senders in one turn of the event loop).
        self._outcomes: list[DeliveryFinish] = []
        self._writers: set[asyncio.Task[None]] = set()
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
        capacity = PREFETCH * self.config.max_in_flight - sum(self.in_flight.values())
        per_endpoint = PREFETCH * self.config.concurrency_per_endpoint
        heads = await self.store.deliveries.heads()
        shards = len(heads)
        claimed: list[tuple[ClaimedDelivery, float]] = []
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
                deadline = time.monotonic() + self._sendable_seconds
                got = await self.store.deliveries.claim(
                    shard,
                    now=now,
                    lease_ms=self.lease_ms,
                    # One script call claims at most what the process may send at once.
                    limit=min(capacity, self.config.max_in_flight),
                    per_endpoint=per_endpoint,
                    free=free,
                )
                for item in got:
                    self.in_flight[item.endpoint_id] = self.in_flight.get(item.endpoint_id, 0) + 1
                    claimed.append((item, deadline))
                capacity -= len(got)
            if not claimed:
                return 0
            new = {(c.tenant, c.endpoint_id) for c, _ in claimed if c.endpoint_id not in self.lanes}
            endpoints = await self.store.webhooks.lookup(new) if new else {}
        except BaseException:
            # Nothing will be sent (a later shard's claim or the lookup failed): free the
            # slots, or an endpoint whose slots are all held this way is never claimed
            # again; the claims come back after the lease.
            for item, _ in claimed:
                self._release(item.endpoint_id)
            raise
        for item, deadline in claimed:
            lane = self.lanes.get(item.endpoint_id)
            if lane is None:
                lane = self.lanes[item.endpoint_id] = EndpointLane(
                    endpoints[(item.tenant, item.endpoint_id)]
                )
            lane.ready.append((item, deadline))
        for endpoint_id in {item.endpoint_id for item, _ in claimed}:
            self._spawn(endpoint_id, self.lanes[endpoint_id])
        return len(claimed)

    async def drain(self) -> None:
        """Wait until every send started so far is finished and recorded (and whatever
        those writes claimed next, too)."""
        await self._settle(None)

    async def _settle(self, within: float | None) -> set[asyncio.Task[None]]:
        """Wait for the senders and the writer (each may start the other) to finish, at
        most `within` seconds; returns those still running."""
        loop = asyncio.get_running_loop()
        deadline = None if within is None else loop.time() + within
        while True:
            running = self.tasks | self._writers
            left = None if deadline is None else deadline - loop.time()
            if not running or (left is not None and left <= 0):
                return running
            await asyncio.wait(running, timeout=left, return_when=asyncio.FIRST_COMPLETED)

    def _spawn(self, endpoint_id: str, lane: EndpointLane) -> None:
        """Start senders for the lane's waiting deliveries, each with its first one, within
        the endpoint's concurrency and the process's cap."""
        while lane.ready and lane.senders < self.config.concurrency_per_endpoint:
            if self._closed:
                return
            if self.sending >= self.config.max_in_flight:
                self._starved.add(endpoint_id)
                return
            lane.senders += 1
            self.sending += 1
            task = asyncio.create_task(self._send(endpoint_id, lane, lane.ready.popleft()))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _send(
        self, endpoint_id: str, lane: EndpointLane, first: tuple[ClaimedDelivery, float]
    ) -> None:
        """Send `first`, then the lane's waiting deliveries one at a time until none is left."""
        job: tuple[ClaimedDelivery, float] | None = first
        try:
            while job is not None:
                item, deadline = job
                if time.monotonic() > deadline:
                    # Its lease may end before its request would: the lease returns it.
                    self._release(endpoint_id)
                else:
                    try:
                        await self._attempt(lane, item)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        # The endpoint's record could not be read: the claim's lease runs
                        # out and the delivery is sent again (at least once).
                        log.warning(
                            "webhook.endpoint_read_failed", delivery=item.id, error=str(exc)
                        )
                        self._release(endpoint_id)
                job = lane.ready.popleft() if lane.ready else None
        finally:
            lane.senders -= 1
            self.sending -= 1
            self._forget(endpoint_id, lane)
            # Lanes left waiting by the process-wide cap get this sender's place.
            while self._starved and self.sending < self.config.max_in_flight:
                waiting = self._starved.pop()
                other = self.lanes.get(waiting)
                if other is not None:
                    self._spawn(waiting, other)

    def _release(self, endpoint_id: str) -> None:
        left = self.in_flight.get(endpoint_id, 1) - 1
        if left > 0:
            self.in_flight[endpoint_id] = left
        else:
            self.in_flight.pop(endpoint_id, None)
            lane = self.lanes.get(endpoint_id)
            if lane is not None:
                self._forget(endpoint_id, lane)
        self.loop.wake()

    def _forget(self, endpoint_id: str, lane: EndpointLane) -> None:
        """Drop a lane that holds nothing: the next claim reads its endpoint afresh."""
        if endpoint_id not in self.in_flight and not lane.ready and not lane.senders:
            self.lanes.pop(endpoint_id, None)

    async def _attempt(self, lane: EndpointLane, item: ClaimedDelivery) -> None:
        """One delivery: its request, then its outcome handed to the writer."""
        if time.monotonic() - lane.fetched > ENDPOINT_REFRESH_SECONDS:
            pair = (item.tenant, item.endpoint_id)
            lane.endpoint = (await self.store.webhooks.lookup([pair]))[pair]
            lane.fetched = time.monotonic()
        endpoint = lane.endpoint
        now = self.clock()
        if endpoint is None:
            # Deleted since the event: its deliveries go with it.
            self._record(DeliveryFinish(item, "drop", now=now, attempted=False))
            self.observer.webhook_delivery("dropped")
            return
        if not endpoint.enabled:
            reason = endpoint.disabled_reason or "disabled"
            error = f"endpoint disabled ({reason})"
            self._record(DeliveryFinish(item, "failed", now=now, attempted=False, error=error))
            self.observer.webhook_delivery("failed")
            return
        result = await self.post(endpoint, item, now)
        at = self.clock()
        attempts = item.attempts + 1
        outcome: DeliveryOutcome
        due_at = 0
        if result.ok:
            outcome = "delivered"
        elif result.status == GONE:
            outcome = "failed"
            await self._disable(item.tenant, endpoint.id, at)
            # The lane's other deliveries fail without a request, as after a re-read.
            lane.endpoint = msgspec.structs.replace(
                endpoint, enabled=False, disabled_reason="gone", updated_at=at
            )
        elif attempts >= len(self.config.retry_schedule_seconds):
            outcome = "failed"
        else:
            outcome = "retry"
            wait = self.config.retry_schedule_seconds[attempts]
            due_at = at + int(jittered(wait, self.config.jitter, self.rng) * 1000)
        self._record(
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

    def _record(self, finish: DeliveryFinish) -> None:
        """Hand an outcome to the writer; the sender does not wait for it."""
        self._outcomes.append(finish)
        if len(self._writers) < WRITERS:
            self._writers.add(asyncio.create_task(self._write_outcomes()))

    async def _write_outcomes(self) -> None:
        """Write the waiting outcomes, a batch per round trip, until none is left. What a
        delivered outcome's write claims next joins its lane; a failed write frees its
        batch's slots (their claims come back after the lease)."""
        try:
            while self._outcomes:
                batch, self._outcomes = self._outcomes, []
                deadline = time.monotonic() + self._sendable_seconds
                try:
                    results = await self.store.deliveries.finish_many(batch)
                except Exception as exc:
                    results = [exc] * len(batch)
                failed = False
                for finish, result in zip(batch, results, strict=True):
                    endpoint_id = finish.item.endpoint_id
                    if isinstance(result, Exception):
                        failed = True
                        self._release(endpoint_id)
                        continue
                    recorded, nxt = result
                    if not recorded:
                        # Its lease ran out and another claim took over: that claimer
                        # records the end.
                        log.warning("webhook.stale_claim", delivery=finish.item.id)
                    lane = self.lanes.get(endpoint_id)
                    if nxt is None or lane is None:
                        self._release(endpoint_id)
                        continue
                    lane.ready.append((nxt, deadline))
                    self._spawn(endpoint_id, lane)
                if failed:
                    log.error(
                        "webhook.finish_failed",
                        error=next(str(r) for r in results if isinstance(r, Exception)),
                        outcomes=len(batch),
                    )
        finally:
            # Out of the count before it ends, so an outcome recorded from now on starts
            # a writer of its own instead of waiting for one that has left.
            writer = asyncio.current_task()
            if writer is not None:
                self._writers.discard(writer)

    async def post(self, endpoint: EndpointRecord, item: ClaimedDelivery, now: int) -> Attempt:
        """One signed POST of the delivery's body. Never raises for the receiver's faults."""
        # The receiver checks the timestamp against its clock: it is the wall clock's.
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": item.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signing.header(
                endpoint.signing_secrets(now), item.event_id, timestamp, item.body
            ),
        }
        try:
            client, target = await self.session.for_url(endpoint.url)
            request = (
                client.post(target)
                .headers(headers)
                .body_bytes(item.body)
                # The answer's first READ_LIMIT bytes are read with its head (the
                # connection is reused when that is all of it); the rest is never read.
                .streamed_read_buffer_limit(READ_LIMIT)
                .build_streamed()
            )
            async with request as resp:
                status = resp.status
                if 200 <= status < 300:
                    return Attempt(status)
                head = await resp.body_reader.read(QUOTE_CHARS * 4) or b""
            quote = bytes(head).decode("utf-8", "replace")[:QUOTE_CHARS].strip()
            return Attempt(status, f"HTTP {status}" + (f": {quote}" if quote else ""))
        except TimeoutError:
            return Attempt(None, f"timeout after {self.config.timeout_seconds:g} s")
        except ssrf.ForbiddenTarget as exc:
            return Attempt(None, f"refused: {exc}")
        except (reqwest.ConnectError, OSError) as exc:
            return Attempt(None, f"connection failed: {_reason(exc)}")
        except Exception as exc:  # an invalid stored URL, say: a failed attempt, not a crash
            if isinstance(exc, asyncio.CancelledError):
                raise
            return Attempt(None, f"request failed: {type(exc).__name__}: {_reason(exc)}")

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
        """Stop claiming; give the requests in flight, the deliveries already claimed and
        the outcomes not yet written the timeout, then cancel what is left (its
        deliveries are sent again after the lease)."""
        # A round stuck on a Redis call gets the same bound as a request.
        await self.loop.stop(self.config.timeout_seconds)
        left = await self._settle(self.config.timeout_seconds)
        self._closed = True
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left)
        # What is still claimed comes back after its lease; a restart starts with nothing held.
        self.lanes.clear()
        self.in_flight.clear()
        self._starved.clear()
        self._outcomes.clear()
        self._closed = False

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
