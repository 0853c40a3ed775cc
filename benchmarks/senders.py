"""What sending rules cost the dispatcher: no-op bursts of one-step sequences with no
senders, with a pool of 16 senders (round robin, limits set but ample), and with the
senders and a frequency cap (ample) on the same channel, as ratios to the first.

    python -m benchmarks.senders [--n 20000] [--pairs 3]

A dedicated valkey-server (AOF on, as benchmarks.dispatch starts it), N contacts enrolled
due at once through the real `enroll` script, drained by the real dispatcher loop into a
no-op sink; the three kinds of burst alternate, `--pairs` times each, and the medians are
reported (figures in RESULTS.md, section "Sending rules").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from benchmarks.dispatch import (
    PREFIX,
    SHARDS,
    TENANT,
    NoopSender,
    One,
    burst,
    enroll_direct,
    make_contacts,
    start_valkey,
)
from benchmarks.results import median, record
from seqd import collector, ids, models
from seqd.config import DispatchConfig, FrequencyCap, FrequencyCapsConfig
from seqd.senders.models import Limits, SenderRecord, StoredSettings
from seqd.store.db import Store, connect

POOL = 16
TARGET_RATIO = 0.8


async def _sequence(store: Store, name: str, pool: list[str]) -> models.Sequence:
    body = models.SequenceCreate(
        name=name,
        status="active",
        steps=[models.StepIn(kind="sms", body="Hi {{first_name|there}}")],
        senders=models.SenderPools(sms=pool),
        rotation="round_robin",
    )
    return await store.sequences.create(TENANT, body)


async def once(n: int, pairs: int) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {"plain": [], "senders": [], "senders_caps": []}
    with tempfile.TemporaryDirectory() as directory:
        proc, url = start_valkey(Path(directory))
        try:
            store = await Store.open(connect(url), PREFIX, SHARDS)
            cids = await make_contacts(store, n)
            now = int(time.time() * 1000)
            pool = []
            for k in range(POOL):
                record_ = SenderRecord(
                    id=ids.new(ids.SENDER, now),
                    channel="sms",
                    address=f"+1312555{k:04d}",
                    limits=Limits(per_hour=3_600_000, per_day=86_400_000),
                    created_at=now,
                    updated_at=now,
                )
                await store.senders.create(TENANT, record_, max_senders=POOL)
                pool.append(record_.id)
            sequences = {
                "plain": await _sequence(store, "plain", []),
                "senders": await _sequence(store, "senders", pool),
                "senders_caps": await _sequence(store, "senders_caps", pool),
            }
            caps = FrequencyCapsConfig(sms=FrequencyCap(limit=10_000, window_hours=24))
            config = DispatchConfig()
            collector.tune()
            for k in range(pairs):
                for mode, seq in sequences.items():
                    settings = StoredSettings(
                        frequency_caps=caps if mode == "senders_caps" else None
                    )
                    await store.settings.put(TENANT, settings)
                    await enroll_direct(store, seq.id, cids, 0, int(time.time() * 1000))
                    rate = await burst(store, One(NoopSender()), n, config)
                    rates[mode].append(rate)
                    print(f"pair {k + 1}/{pairs} {mode}: {rate:,.0f} steps/s")
            await store.close()
        finally:
            proc.terminate()
            proc.wait()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    rates = asyncio.run(once(args.n, args.pairs))
    plain = median(rates["plain"])
    with_senders = median(rates["senders"])
    with_caps = median(rates["senders_caps"])
    ratio = with_senders / plain

    def mark(ok: bool) -> str:
        return "met" if ok else "**not met**"

    met = mark(ratio >= TARGET_RATIO)
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())

    body = f"""
N = {args.n:,} one-step SMS enrollments due at once, {SHARDS} shards, default dispatch
settings, no-op sink; the three bursts alternate, {args.pairs} of each, medians. "Senders":
every step takes budget from a pool of {POOL} senders (round robin; per_hour and per_day
set, never reached): one takeBudget call per tenant per piece in the lease
round trip. "+ cap": the tenant also caps SMS per contact (never reached): one
takeFrequency call per shard per piece. Load average at the end: {load} (2 cores
shared with other work: compare the ratios, not the steps/s, across runs).

| burst | steps/s | ratio to none | target |
| --- | --- | --- | --- |
| no senders, no cap | {plain:,.0f} | 1.00 | |
| {POOL} senders | {with_senders:,.0f} | {ratio:.2f} | {TARGET_RATIO} ({met}) |
| {POOL} senders + frequency cap | {with_caps:,.0f} | {with_caps / plain:.2f} | |
"""
    print(body)
    record("Sending rules", body)


if __name__ == "__main__":
    main()
