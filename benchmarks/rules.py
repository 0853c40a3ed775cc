"""What send windows and SMS quiet hours cost the dispatcher.

    python -m benchmarks.rules [--n 10000] [--deferred 20000] [--runs 3]

A dedicated valkey-server (as benchmarks.dispatch starts it). The real dispatcher loop drains
N steps due at once into a no-op sink, twice per run, in turn:

- rules on: every sequence under a schedule (open all day, so each step is checked and its
  next step timed in the contact's zone, and nothing is moved) and SMS quiet hours on, the
  contacts in a zone where it is midday;
- rules off: no schedule, quiet hours off.

The ratio on/off is the figure (target at least 0.8). Then a burst of `--deferred` steps
all due while their schedule's only window is closed: the dispatcher defers each (the
`defer` outcome) and the rate it does so is set beside the rate it sends the same burst
with the window open (target: at least as fast).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.dispatch import (
    PREFIX,
    SHARDS,
    TENANT,
    Counting,
    NoopSender,
    One,
    enroll_direct,
    make_contacts,
    start_valkey,
)
from benchmarks.results import median, record
from seqd import models
from seqd.config import ComplianceConfig, Config, DispatchConfig, SmsQuietHours
from seqd.engine.dispatcher import Dispatcher
from seqd.schedules import ScheduleCreate
from seqd.store.db import Store, connect
from seqd.timing.policy import Policy

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
TARGET_RATIO = 0.8


def midday_zone() -> str:
    """A fixed-offset zone where it is about midday now (quiet hours are then open)."""
    offset = 12 - datetime.now(UTC).hour
    offset = (offset + 12) % 24 - 12  # -12..11
    return "UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"


async def contacts(store: Store, n: int, zone: str) -> list[str]:
    return await make_contacts(store, n, ("timezone", zone))


async def sequence(store: Store, name: str, windows: dict[str, list[list[str]]] | None) -> str:
    schedule_id = None
    if windows is not None:
        made = await store.schedules.create(TENANT, ScheduleCreate(name=name, windows=windows))
        schedule_id = made.id
    body = models.SequenceCreate(
        name=name,
        status="active",
        schedule_id=schedule_id,
        steps=[
            models.StepIn(kind="sms", body="Hi {{first_name|there}}"),
            models.StepIn(kind="sms", body="Again", wait_minutes=1440),
        ],
    )
    return (await store.sequences.create(TENANT, body)).id


async def drain(store: Store, policy: Policy, seq_id: str, cids: list[str]) -> float:
    """Steps/s for the dispatcher loop to settle `len(cids)` steps due now."""
    await enroll_direct(store, seq_id, cids, 0, int(time.time() * 1000))
    counting = Counting(len(cids))
    dispatcher = Dispatcher(
        store, DispatchConfig(), One(NoopSender()), observer=counting, policy=policy
    )
    started = time.perf_counter()
    dispatcher.start()
    await asyncio.wait_for(counting.done.wait(), 900)
    elapsed = time.perf_counter() - started
    await dispatcher.stop()
    return len(cids) / elapsed


async def main(n: int, deferred: int, runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_valkey(Path(tmp))
        try:
            store = await Store.open(connect(url), PREFIX, SHARDS)
            zone = midday_zone()
            on = Policy(Config())
            off = Policy(
                Config(compliance=ComplianceConfig(sms_quiet_hours=SmsQuietHours(enabled=False)))
            )
            always = {d: [["00:00", "24:00"]] for d in DAYS}
            # The contacts' only window, 15:00-16:00 their time (about three hours from now,
            # within quiet hours' 08:00-21:00): closed for the whole burst.
            closed = {d: [["15:00", "16:00"]] for d in DAYS}
            rates: dict[str, list[float]] = {"on": [], "off": [], "ratio": []}
            for k in range(runs):
                seq_on = await sequence(store, f"on-{k}", always)
                seq_off = await sequence(store, f"off-{k}", None)
                rate_on = await drain(store, on, seq_on, await contacts(store, n, zone))
                rate_off = await drain(store, off, seq_off, await contacts(store, n, zone))
                rates["on"].append(rate_on)
                rates["off"].append(rate_off)
                rates["ratio"].append(rate_on / rate_off)
                print(f"run {k + 1}/{runs}: on {rate_on:,.0f}/s, off {rate_off:,.0f}/s")
            burst_sent = await drain(
                store, on, await sequence(store, "burst-open", always),
                await contacts(store, deferred, zone),
            )  # fmt: skip
            burst_deferred = await drain(
                store, on, await sequence(store, "burst-closed", closed),
                await contacts(store, deferred, zone),
            )  # fmt: skip
            print(f"burst: sent {burst_sent:,.0f}/s, deferred {burst_deferred:,.0f}/s")
            await store.close()
        finally:
            proc.terminate()
            proc.wait()
    ratio = median(rates["ratio"])
    met = "met" if ratio >= TARGET_RATIO else "**not met**"
    faster = "met" if burst_deferred >= burst_sent else "**not met**"
    each = ", ".join(f"{r:.2f}" for r in rates["ratio"])
    record(
        "rules",
        f"""
N = {n:,} SMS steps due at once, {SHARDS} shards, default dispatch settings, a no-op sink;
{runs} runs, rules on and off in turn, medians (the ratio: the median of each run's own).
"On": every sequence under a schedule (open all day, so every step is checked and its next
step timed in the contact's zone `{zone}`, and none is moved) and SMS quiet hours on.
"Off": no schedule, quiet hours off. The machine is shared (2 cores, other work running):
the absolute rates move from run to run, the ratio of runs made in turn less so.

| figure | value | target |
| --- | --- | --- |
| steps/s, rules on | {median(rates["on"]):,.0f} | |
| steps/s, rules off | {median(rates["off"]):,.0f} | |
| ratio on / off | {ratio:.2f} (runs: {each}) | >= {TARGET_RATIO} ({met}) |
| {deferred:,} steps due in a closed window: deferred per second | {burst_deferred:,.0f} | \
>= sent ({faster}) |
| the same burst with the window open: sent per second | {burst_sent:,.0f} | |
""",
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--deferred", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.deferred, args.runs))
