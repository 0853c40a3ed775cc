"""seqd on a Valkey cluster: a burst dispatched on 3 primaries vs one server, and what an
idle `seqd serve` costs per shard.

    python -m benchmarks.cluster [--n 20000] [--runs 3] [--seconds 20] [--shards 4,16,64]
                                 [--enrollments 2000] [--parts burst,wait,idle]

A 3-primary cluster from the wheel's valkey-server and valkey-cli (tests/clusterutil.py,
the test suite's fixture), and for comparison one valkey-server, both without AOF (the
fixture's settings) and on the same machine.

- Burst: N enrollments (`--burst-shards`, 48 by default: a multiple of the 3 primaries, as
  docs/scaling.md advises, so each holds the same number; one SMS step each, written by
  the real `enroll` script) due at once, drained by the real dispatcher loop in this
  process into a no-op sender; steps/s, each server's CPU (user + system, /proc) per
  step, and each primary's share of the commands (INFO commandstats, inside scripts
  included). The store kinds alternate run by run; medians.
- wait_replicas: on a 3-primary cluster with a replica each, enrollments through the real
  `Enrollments.enroll` with `redis.wait_replicas` 0 and 1 on the same cluster, alternating
  run by run: one at a time (each call's latency) and in batches of 500 (enrollments/s).
- Idle: for each shard count a `seqd serve` on a fresh prefix, every background part on
  (dispatcher, outbox reader, webhook deliverer, intake consumer), no work: after it has
  settled, INFO commandstats on every node before and after `--seconds`, summed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import redis

from benchmarks.dispatch import (
    TENANT,
    NoopSender,
    One,
    burst,
    enroll_direct,
    make_contacts,
    new_sequence,
)
from benchmarks.results import median, percentile, record
from seqd.config import DispatchConfig
from seqd.store.db import Store, connect
from seqd.store.enrollments import EnrollItem
from seqd.store.replication import ReplicaWait
from tests.clusterutil import ValkeyCluster
from tests.conftest import ValkeyProcess
from tests.opsutil import Daemon

SETTLE = 3.0


def _stats(ports: list[int]) -> Counter[str]:
    """Calls of each command the nodes on `ports` have run (INFO and CLUSTER left out)."""
    calls: Counter[str] = Counter()
    for port in ports:
        with redis.Redis(port=port) as node:
            stats = node.info("commandstats")
        for name, row in stats.items():
            command = name.removeprefix("cmdstat_")
            if not command.startswith(("info", "cluster")):
                calls[command] += int(row["calls"])
    return calls


def idle(url: str, ports: list[int], shards: int, seconds: float, workdir: Path) -> Counter[str]:
    """Calls/s of each command an idle seqd with `shards` shards costs the nodes on `ports`."""
    prefix = f"idle{shards}x{time.monotonic_ns() % 10**6}"
    daemon = Daemon(url, prefix, workdir, SEQD_REDIS_SHARDS=str(shards), SEQD_LOG_LEVEL="warning")
    daemon.start().wait_healthy()
    try:
        time.sleep(SETTLE)
        before = _stats(ports)
        started = time.monotonic()
        time.sleep(seconds)
        after = _stats(ports)
        elapsed = time.monotonic() - started
    finally:
        daemon.signal(signal.SIGTERM)
        daemon.wait()
    return Counter({name: (after[name] - before[name]) / elapsed for name in after})


def _cpu_ticks(pid: int) -> int:
    """User + system time of process `pid` so far, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def _pids(nodes: list[ValkeyProcess]) -> list[int]:
    return [node.process.pid for node in nodes if node.process is not None]


async def burst_once(
    url: str, nodes: list[ValkeyProcess], ports: list[int], n: int, shards: int
) -> tuple[float, list[float], list[float]]:
    """(steps/s, CPU µs per step of each node, share of the commands of each primary)."""
    store = await Store.open(connect(url), f"burst{time.monotonic_ns() % 10**9}", shards)
    try:
        seq = await new_sequence(store, "burst", steps=1)
        cids = await make_contacts(store, n)
        for start in range(0, n, 5000):
            await enroll_direct(
                store, seq.id, cids[start : start + 5000], 0, int(time.time() * 1000)
            )
        before_cpu = [_cpu_ticks(pid) for pid in _pids(nodes)]
        before = [_stats([port]) for port in ports]
        rate = await burst(store, One(NoopSender()), n, DispatchConfig())
        after = [_stats([port]) for port in ports]
        after_cpu = [_cpu_ticks(pid) for pid in _pids(nodes)]
    finally:
        await store.close()
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    cpu = [(b - a) * tick_us / n for a, b in zip(before_cpu, after_cpu, strict=True)]
    commands = [(b - a).total() for a, b in zip(before, after, strict=True)]
    return rate, cpu, [c / sum(commands) for c in commands]


def bursts(cluster: ValkeyCluster, single: ValkeyProcess, n: int, runs: int, shards: int) -> str:
    results: dict[str, list[tuple[float, list[float], list[float]]]] = {"cluster": [], "one": []}
    for run in range(runs):
        for kind in ("cluster", "one") if run % 2 == 0 else ("one", "cluster"):
            if kind == "cluster":
                got = asyncio.run(
                    burst_once(cluster.url, cluster.nodes, cluster.primary_ports(), n, shards)
                )
            else:
                got = asyncio.run(burst_once(single.url, [single], [single.port], n, shards))
            results[kind].append(got)
            print(kind, f"{got[0]:,.0f} steps/s", [f"{c:.1f}" for c in got[1]], got[2])
    one_rate = median([r[0] for r in results["one"]])
    cluster_rate = median([r[0] for r in results["cluster"]])
    one_cpu = median([r[1][0] for r in results["one"]])
    nodes = len(results["cluster"][0][1])
    node_cpu = [median([r[1][i] for r in results["cluster"]]) for i in range(nodes)]
    shares = [median([r[2][i] for r in results["cluster"]]) for i in range(nodes)]
    each_cpu = ", ".join(f"{c:.1f}" for c in node_cpu)
    each_share = ", ".join(f"{s:.0%}" for s in shares)
    return f"""
Burst: N = {n:,} enrollments due at once, {shards} shards, drained by the dispatcher in one
process into a no-op sender; {runs} runs each, alternating, medians.

| store | steps/s | valkey CPU µs/step, each node | share of commands, each primary |
| --- | --- | --- | --- |
| one server | {one_rate:,.0f} | {one_cpu:.1f} | 100% |
| 3-primary cluster | {cluster_rate:,.0f} ({cluster_rate / one_rate:.2f}x) \
| {each_cpu} (sum {sum(node_cpu):.1f}) | {each_share} |
"""


async def enroll_once(url: str, n: int, wait: ReplicaWait | None) -> tuple[list[float], float]:
    """(latency in µs of each of n single enrollments, enrollments/s of n more in batches of
    500), on a fresh prefix with `wait`."""
    store = await Store.open(connect(url), f"wait{time.monotonic_ns() % 10**9}", 16, wait=wait)
    try:
        seq = await new_sequence(store, "wait", steps=1)
        cids = await make_contacts(store, 2 * n)
        latencies = []
        for cid in cids[:n]:
            started = time.perf_counter()
            await store.enrollments.enroll(TENANT, seq, [EnrollItem(cid, {})], full=False)
            latencies.append((time.perf_counter() - started) * 1e6)
        started = time.perf_counter()
        for first in range(n, 2 * n, 500):
            items = [EnrollItem(c, {}) for c in cids[first : first + 500]]
            await store.enrollments.enroll(TENANT, seq, items, full=False)
        rate = n / (time.perf_counter() - started)
    finally:
        await store.close()
    return latencies, rate


def waits(cluster: ValkeyCluster, n: int, runs: int) -> str:
    """The cost of redis.wait_replicas = 1 against 0, interleaved on one replicated cluster."""
    on = ReplicaWait(1, 1000)
    results: dict[str, list[tuple[list[float], float]]] = {"0": [], "1": []}
    for run in range(runs):
        for kind in ("0", "1") if run % 2 == 0 else ("1", "0"):
            got = asyncio.run(enroll_once(cluster.url, n, on if kind == "1" else None))
            results[kind].append(got)
            print(f"wait_replicas={kind}", f"{median(got[0]):.0f} µs", f"{got[1]:,.0f}/s")
    rows = {}
    for kind, got in results.items():
        every = [lat for latencies, _ in got for lat in latencies]
        rows[kind] = (
            median([median(latencies) for latencies, _ in got]),
            percentile(every, 99),
            median([rate for _, rate in got]),
        )
    (l0, p0, r0), (l1, p1, r1) = rows["0"], rows["1"]
    return f"""
wait_replicas: a 3-primary cluster with a replica each; {n:,} single enrollments one after
another (latency of each call) and {n:,} more in batches of 500 spread over 16 shards
(enrollments/s), wait_replicas 0 and 1 alternating, {runs} runs each, medians.

| wait_replicas | single: median µs | single: p99 µs | batches: enrollments/s |
| --- | --- | --- | --- |
| 0 | {l0:,.0f} | {p0:,.0f} | {r0:,.0f} |
| 1 | {l1:,.0f} ({l1 / l0:.2f}x) | {p1:,.0f} | {r1:,.0f} ({r1 / r0:.2f}x) |
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--shards", default="4,16,64")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--enrollments", type=int, default=2000)
    parser.add_argument("--burst-shards", type=int, default=48)
    parser.add_argument("--parts", default="burst,wait,idle")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    counts = [int(s) for s in args.shards.split(",")] if "idle" in parts else []
    rows = []
    load = os.getloadavg()[0]
    burst_table = wait_table = ""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cluster = ValkeyCluster(root / "cluster")
        single = ValkeyProcess(root / "single")
        cluster.start()
        single.start()
        try:
            if "wait" in parts:
                replicated = ValkeyCluster(root / "replicated", replicas=1)
                replicated.start()
                try:
                    wait_table = waits(replicated, args.enrollments, args.runs)
                finally:
                    replicated.stop()
            if "burst" in parts:
                burst_table = bursts(cluster, single, args.n, args.runs, args.burst_shards)
            for shards in counts:
                for name, url, ports in (
                    ("3-primary cluster", cluster.url, cluster.primary_ports()),
                    ("one server", single.url, [single.port]),
                ):
                    rates = idle(url, ports, shards, args.seconds, root / name)
                    rows.append((name, shards, rates))
                    print(name, shards, f"{rates.total():.0f}/s", rates.most_common(8))
        finally:
            cluster.stop()
            single.stop()
    table = "\n".join(
        f"| {name} | {shards} | {rates.total():,.0f} | {rates['evalsha']:,.0f} "
        f"| {rates.total() / shards:,.1f} | {_top(rates, shards)} |"
        for name, shards, rates in rows
    )
    record(
        "cluster",
        f"Load average (1 min) when the run started: {load:.1f} on {os.cpu_count()} cores.\n"
        + burst_table
        + wait_table
        + f"""
Idle: an idle `seqd serve` (dispatcher, outbox reader, webhook deliverer, intake consumer; no
enrollment due, no event, no endpoint) on a fresh prefix, measured over {args.seconds:.0f} s
after {SETTLE:.0f} s to settle: INFO commandstats deltas summed over the nodes (every
command the servers ran, inside scripts included; INFO and CLUSTER left out). valkey
{_version()}, 3 primaries without replicas on this 2-core machine (shared).

| store | shards | commands/s | EVALSHA/s | commands/s per shard | most run, per shard and second |
| --- | --- | --- | --- | --- | --- |
{table}
""",
    )


def _top(rates: Counter[str], shards: int) -> str:
    return ", ".join(
        f"{name.replace('|', ' ')} {rate / shards:.1f}"
        for name, rate in rates.most_common(6)
        if rate > 0
    )


def _version() -> str:
    from seqd.embedded import find_binary

    out = subprocess.run([find_binary(), "--version"], capture_output=True, text=True).stdout
    return out.split()[2].removeprefix("v=") if out else "?"


if __name__ == "__main__":
    main()
