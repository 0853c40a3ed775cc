"""seqd on a Valkey cluster: what an idle `seqd serve` costs each primary, per shard.

    python -m benchmarks.cluster [--seconds 20] [--shards 4,16,64]

A 3-primary cluster from the wheel's valkey-server and valkey-cli (tests/clusterutil.py,
the test suite's fixture), and for comparison one valkey-server. For each shard count a
`seqd serve` on a fresh prefix, every background part on (dispatcher, outbox reader,
webhook deliverer, intake consumer), no work: after it has settled, INFO commandstats
on every node before and after `--seconds`, summed over the nodes. "Commands" count every
command the server ran, those run inside scripts included; "round trips" count what seqd
sent (the EVALSHA and plain commands, not what a script calls).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import redis

from benchmarks.results import record
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--shards", default="4,16,64")
    args = parser.parse_args()
    counts = [int(s) for s in args.shards.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cluster = ValkeyCluster(root / "cluster")
        single = ValkeyProcess(root / "single")
        cluster.start()
        single.start()
        try:
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
        f"""
An idle `seqd serve` (dispatcher, outbox reader, webhook deliverer, intake consumer; no
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
