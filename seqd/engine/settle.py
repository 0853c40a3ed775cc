"""From what a send did to the outcome `advance` records (store/settles.py).

Pure functions of the job, its sequence's plan, the contact's suppressions and the
dispatch settings, like compose: no I/O, so the rules are tested without a store.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from seqd import models
from seqd.engine.compose import Job, suppressed_reason
from seqd.engine.plans import Plan
from seqd.store.claims import Claimed
from seqd.store.dispatch import SuppressionRecord
from seqd.store.settles import Cancel, Failed, Pause, Release, Retry, Sent, Settled, Skipped

_NO_SUPPRESSIONS: Mapping[str, SuppressionRecord] = {}


def retry_delay(
    backoff_ms: Sequence[float],
    attempts: int,
    retry_after: float | None,
    rand: Callable[[], float] = random.random,
) -> int:
    """ms until the next attempt after `attempts` made: the backoff (±10 %), or the
    provider's Retry-After when longer."""
    base = backoff_ms[min(attempts, len(backoff_ms) - 1)] if backoff_ms else 0
    delay = int(base * (0.9 + 0.2 * rand()))
    if retry_after is not None:
        delay = max(delay, int(retry_after * 1000))
    return delay


def released(job: Job, at: int, *, delay: int | None = None) -> Release:
    """`job` not sent (or given up on): due again, no attempt counted; as an unsettled
    claim when its send had started."""
    return Release(
        id=job.id, token=job.token, step=job.step, kind=job.kind, at=at, started=job.started,
        delay=delay,
    )  # fmt: skip


def unavailable(item: Claimed, now: int, backoff_ms: Sequence[float]) -> Retry:
    """The mirror says the sequence exists but its document cannot be read: retry, so a
    transient fault heals and a permanent one ends as failed after max_attempts."""
    e = item.enrollment
    return Retry(
        id=item.id, token=e.token, step=int(e.index), kind="", at=now,
        error="sequence document not found",
        delay=retry_delay(backoff_ms, int(e.attempts or 0), None),
    )  # fmt: skip


def settle(
    job: Job,
    plan: Plan,
    suppressed: Mapping[str, Mapping[str, SuppressionRecord]],
    *,
    now: int,
    on_unknown: Literal["resend", "hold"],
    backoff_ms: Sequence[float],
) -> Settled:
    """What `job`'s send came to; `now` is used only when it has no result (released).
    `suppressed`: enrollment id -> {channel: record} as screened before the send."""
    result = job.result
    if result is None:
        return released(job, now)
    at = job.at
    outcome = result.outcome
    if outcome == "sent":
        # Spelled out: this is the one per step of a burst.
        return Sent(
            id=job.id, token=job.token, step=job.step, kind=job.kind, at=at,
            provider_id=result.provider_id, wait=plan.wait_after(job.step),
            variant=job.variant, sender=job.sender,
        )  # fmt: skip
    if result.suppress:
        # The provider says the recipient unsubscribed: this step is not sent, and the
        # enrollment goes on as it would with the address suppressed before the send.
        now_suppressed = dict(suppressed.get(job.id, _NO_SUPPRESSIONS))
        now_suppressed[job.kind] = SuppressionRecord(reason=models.CancelReason.OPTED_OUT.value)
        if any(s.kind not in now_suppressed for s in plan.steps[job.step + 1 :]):
            return Skipped(
                id=job.id, token=job.token, step=job.step, kind=job.kind, at=at,
                reason="suppressed", wait=plan.wait_after(job.step),
            )  # fmt: skip
        reason = suppressed_reason(now_suppressed[job.kind], job.kind)
        return Cancel(
            id=job.id, token=job.token, step=job.step, kind=job.kind, at=at, reason=reason,
            error=result.error,
        )  # fmt: skip
    if outcome == "failed":
        return Failed(
            id=job.id, token=job.token, step=job.step, kind=job.kind, at=at,
            error=result.error or "failed",
        )  # fmt: skip
    if outcome == "unknown" and on_unknown == "hold":
        return Pause(
            id=job.id, token=job.token, step=job.step, kind=job.kind, at=at,
            reason=models.PausedReason.DELIVERY_UNKNOWN.value, error=result.error,
        )  # fmt: skip
    return Retry(
        id=job.id, token=job.token, step=job.step, kind=job.kind, at=at,
        error=result.error or outcome,
        delay=retry_delay(backoff_ms, job.attempts, result.retry_after),
    )  # fmt: skip
