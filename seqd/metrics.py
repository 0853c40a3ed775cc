"""The process's metrics: counters the code bumps and gauges read from Redis at scrape time.

One `Metrics` per app (`app[METRICS]`, see `api/appkeys.py`), each with its own
`CollectorRegistry` rather than prometheus-client's global one, so two apps in one test
process never share a count. The parts of seqd call small methods:

- dispatcher: `step_sent(channel, outcome)` per step (`outcome` is the SendResult's:
  sent | retry | failed | unknown), `lateness(seconds)` per step fired (send time minus
  `next_run_at`), `claimed(n)` / `settled(n)` around a batch in flight;
- webhook deliverer: `webhook_delivery(outcome)` per attempt (delivered | retry | failed |
  dead | disabled);
- the access-log middleware: `http_request(method, route, status, seconds)`.

Backlogs (due steps per shard, intake and outbox streams) are not counted in memory: they
are read from Redis when /metrics is scraped (`refresh`), so every process reports the
same, true figures. `step_sent` also feeds `RateRecorder`, which adds this process's
counts to Redis once a second for the cross-process send rate of `seqd status`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from collections.abc import AsyncIterator

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from redis.exceptions import RedisError

from seqd.loop import cancel_and_wait
from seqd.store import backlog
from seqd.store.db import Store
from seqd.store.rates import LATENESS_CHANNEL, WEBHOOK_CHANNEL, SendRates
from seqd.times import now_ms

log = structlog.get_logger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds late a step fired: sub-second is the goal, minutes is an outage.
LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.steps = Counter(
            "seqd_steps",
            "Steps handed to a channel, by the send's outcome (sent, retry, failed, unknown)",
            ["channel", "outcome"],
            registry=r,
        )
        self.deferred = Counter(
            "seqd_steps_deferred",
            "Steps that came due outside their window or in quiet hours and were put off, by"
            " reason (window, skip_date, quiet_hours)",
            ["reason"],
            registry=r,
        )
        self.lateness_seconds = Histogram(
            "seqd_dispatch_lateness_seconds",
            "Send time minus the step's next_run_at",
            buckets=LATENESS_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "seqd_dispatch_in_flight", "Steps this process claimed and has not advanced", registry=r
        )
        self.webhooks = Counter(
            "seqd_webhook_deliveries",
            "Webhook delivery attempts by outcome",
            ["outcome"],
            registry=r,
        )
        self.imap_up = Gauge(
            "seqd_imap_mailbox_up",
            "1 while this process reads the mailbox (or another process holds it), 0 while it"
            " is retried after a refused login, a timeout or a dropped connection",
            ["mailbox"],
            registry=r,
        )
        self.imap_messages = Counter(
            "seqd_imap_messages",
            "Messages read from IMAP mailboxes and applied, by kind (reply, bounce, ...)",
            ["kind"],
            registry=r,
        )
        # No sequence or step label: per-step counts are the stats API's (store/stats.py).
        self.clicks = Counter(
            "seqd_clicks",
            "Tracked links followed; suspected_bot: a link scanner's (not counted in stats)",
            ["suspected_bot"],
            registry=r,
        )
        self.http_requests = Counter(
            "seqd_http_requests",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "seqd_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        # With `seqd serve --workers N` each worker answers for itself: the counters above
        # are the answering process's, named here.
        self.process = Gauge(
            "seqd_process",
            "1, labelled with the pid of the process that answered",
            ["pid"],
            registry=r,
        )
        self.process.labels(str(os.getpid())).set(1)
        # Read from Redis at scrape time.
        self.store_up = Gauge("seqd_store_up", "1 when Redis answered the last scrape", registry=r)
        self.due_scheduled = Gauge(
            "seqd_due_scheduled",
            "Steps in the queues of the shard's unpaused sequences (waiting, due or claimed)",
            ["shard"],
            registry=r,
        )
        self.due_backlog = Gauge(
            "seqd_due_backlog", "Steps due now and not claimed", ["shard"], registry=r
        )
        self.oldest_overdue = Gauge(
            "seqd_due_oldest_overdue_seconds",
            "Age of the oldest due, unclaimed step",
            registry=r,
        )
        self.intake_backlog = Gauge(
            "seqd_intake_backlog", "Intake stream entries not yet enrolled", registry=r
        )
        self.intake_rejected = Gauge(
            "seqd_intake_rejected", "Intake entries kept in the rejected stream", registry=r
        )
        self.outbox_backlog = Gauge(
            "seqd_outbox_backlog",
            "Outbox entries (one or more events each) not yet in the event log and webhook queues",
            registry=r,
        )
        self.webhook_backlog = Gauge(
            "seqd_webhook_backlog",
            "Webhook deliveries queued (first attempt or a retry)",
            registry=r,
        )
        self.webhook_failed = Gauge(
            "seqd_webhook_failed",
            "Webhook deliveries that used every attempt (dead letters kept for a retry)",
            registry=r,
        )
        self.rates = RateRecorder()
        self._http_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        # seqd_steps' children by (channel, outcome): `labels` costs a few µs a step.
        self._step_children: dict[tuple[str, str], Counter] = {}
        self._sent_total = 0

    # -- called by the parts of seqd ----------------------------------------------------
    def step_sent(self, channel: str, outcome: str, n: int = 1) -> None:
        key = (channel, outcome)
        child = self._step_children.get(key)
        if child is None:
            child = self._step_children[key] = self.steps.labels(channel, outcome)
        child.inc(n)
        self.rates.pending[key] += n
        if outcome == "sent":
            self._sent_total += n

    def lateness(self, seconds: float) -> None:
        late = seconds if seconds > 0.0 else 0.0
        self.lateness_seconds.observe(late)
        pending = self.rates.pending
        pending[_LATE_MS] += round(late * 1000)
        pending[_LATE_N] += 1

    def claimed(self, n: int) -> None:
        self.in_flight.inc(n)

    def settled(self, n: int) -> None:
        self.in_flight.dec(n)

    def step_deferred(self, reason: str) -> None:
        self.deferred.labels(reason).inc()

    def webhook_delivery(self, outcome: str) -> None:
        self.webhooks.labels(outcome).inc()
        self.rates.add(WEBHOOK_CHANNEL, outcome, 1)

    def click(self, suspected_bot: bool) -> None:
        self.clicks.labels("true" if suspected_bot else "false").inc()

    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        # Children cached per label set: labels() costs more than the increment itself.
        key = (method, route, status)
        children = self._http_children.get(key)
        if children is None:
            children = self._http_children[key] = (
                self.http_requests.labels(method, route, str(status)),
                self.http_seconds.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)

    @property
    def sent_total(self) -> int:
        """Steps this process sent since it started (systemd STATUS= derives a rate)."""
        return self._sent_total

    # -- scrape ---------------------------------------------------------------------------
    async def refresh(self, store: Store) -> None:
        """Set the Redis-side gauges; on a store error report it down and keep the rest."""
        try:
            snap = await backlog.read(store, now_ms())
        except (RedisError, OSError) as exc:
            log.warning("metrics.store_unavailable", error=type(exc).__name__)
            self.store_up.set(0)
            return
        self.store_up.set(1)
        for s in snap.shards:
            self.due_scheduled.labels(str(s.shard)).set(s.scheduled)
            self.due_backlog.labels(str(s.shard)).set(s.due)
        self.oldest_overdue.set(snap.oldest_overdue_seconds)
        self.intake_backlog.set(snap.intake.backlog)
        self.intake_rejected.set(snap.intake_rejected)
        self.outbox_backlog.set(snap.outbox.backlog)
        self.webhook_backlog.set(snap.webhooks.queued)
        self.webhook_failed.set(snap.webhooks.failed)

    def render(self) -> bytes:
        return generate_latest(self.registry)


_LATE_MS = (LATENESS_CHANNEL, "ms")
_LATE_N = (LATENESS_CHANNEL, "n")


class RateRecorder:
    """Step counts waiting to be added to Redis's per-bucket send counters."""

    def __init__(self) -> None:
        self.pending: collections.Counter[tuple[str, str]] = collections.Counter()

    def add(self, channel: str, outcome: str, n: int) -> None:
        self.pending[(channel, outcome)] += n

    async def flush(self, store: Store) -> None:
        if not self.pending:
            return
        counts, self.pending = self.pending, collections.Counter()
        try:
            await SendRates(store).add(counts, now_ms())
        except BaseException:
            # Put them back: the next flush tries again (a Redis blip must not lose them).
            self.pending.update(counts)
            raise


FLUSH_SECONDS = 1.0


@contextlib.asynccontextmanager
async def recording(metrics: Metrics, store: Store) -> AsyncIterator[None]:
    """While open, adds this process's send counts to Redis every second, and once at exit."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await metrics.rates.flush(store)
            except (RedisError, OSError) as exc:
                log.warning("metrics.rates_flush_failed", error=type(exc).__name__)

    task = asyncio.create_task(loop(), name="seqd.metrics.rates")
    try:
        yield
    finally:
        await cancel_and_wait(task)
        try:
            await metrics.rates.flush(store)
        except (RedisError, OSError) as exc:
            log.warning("metrics.rates_flush_failed", error=type(exc).__name__)
