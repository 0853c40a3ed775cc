"""Enrollments per second through each way in: single POSTs, the batch endpoint, the intake
stream; each beside a peer measured in the same run on the same valkey-server.

    python -m benchmarks.enroll [--n 4000] [--repeat 3] [--clients 32] [--load 1000000]
        [--batch-clients 16] [--workers N] [--batch-only]

A private valkey-server (no persistence) and a real `seqd serve` subprocess (its default
workers, one per core, unless --workers; dispatcher and intake consumer off, so only
enrolling runs) on free ports; the HTTP clients run in this process. The intake figure is
the consumer draining a stream filled beforehand (the writer's own rate, raw pipelined
XADD, is its peer). Medians of `--repeat` runs, each with a fresh sequence so every
enrollment is really created.

Where the time goes, per enrolled item: the CPU time of valkey-server and of the seqd
processes (`seqd serve`'s supervisor and workers for the HTTP ways, this process for the
intake consumers), from /proc, and the `enroll` script's own time from INFO commandstats;
and the CPU the rest of the machine spent meanwhile (/proc/stat), which tells a squeezed
run.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import redis.asyncio as aioredis

from benchmarks.e2e import children, cpu_model
from benchmarks.results import median, record
from seqd import collector, models
from seqd.config import Config, IntakeConfig
from seqd.embedded import find_binary, server_env
from seqd.intake import Intake
from seqd.store import upserts
from seqd.store.db import Store, connect
from seqd.store.outbox import Outbox

TENANT = "bench"
PREFIX = "bench"
SEQUENCE = models.SequenceCreate(
    name="Bench",
    status="active",
    steps=[models.StepIn(kind="sms", wait_minutes=1440, body="Hi {{first_name|there}}")],
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start_valkey(port: int, directory: Path) -> subprocess.Popen[bytes]:
    """The server `seqd serve` would start (allocator preload included), without AOF."""
    return subprocess.Popen(
        [find_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory), "--logfile", str(directory / "log")],
        env=server_env(find_binary())[0],
    )  # fmt: skip


def start_server(env: dict[str, str], workers: int | None) -> subprocess.Popen[bytes]:
    """`seqd serve` (`workers` None: its default, one per core), its banner and logs out of
    the figures' way."""
    more = [] if workers is None else ["--workers", str(workers)]
    return subprocess.Popen(
        [sys.executable, "-m", "seqd", "serve", *more],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def timed(n: int, work: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await work()
    return n / (time.perf_counter() - started)


def cpu_seconds(pid: int, tree: bool = False) -> float:
    """User + system CPU time of a process so far, and with `tree` of its live children (a
    supervisor's workers) too (Linux /proc; 10 ms ticks)."""
    total = 0
    for each in (pid, *(children(pid) if tree else ())):
        fields = Path(f"/proc/{each}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU time every process of the machine spent so far (/proc/stat: all but idle, iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


async def drained(outbox: Outbox, limit: float = 120) -> None:
    """Until the outbox readers have handled every event."""
    deadline = time.monotonic() + limit
    while True:
        if not await outbox.backlog():
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the outbox did not drain")
        await asyncio.sleep(0.01)


class Costs:
    """µs per item of valkey CPU, seqd CPU, this process's CPU (the HTTP clients) and the
    scripts' time (INFO commandstats), around one way in."""

    def __init__(
        self, client: aioredis.Redis, valkey: int, seqd: int, outbox: Outbox | None = None
    ) -> None:
        self.client, self.valkey, self.seqd, self.outbox = client, valkey, seqd, outbox
        self.rows: dict[str, list[tuple[float, ...]]] = {}
        # CPU the rest of the machine spent meanwhile (other users' work, the kernel's).
        self.others: dict[str, list[float]] = {}

    async def measure(
        self, name: str, n: int, work: Awaitable[float], *, seqd: int | None = None
    ) -> float:
        """`seqd`: the pid doing seqd's part when not `seqd serve` (then no clients)."""
        await self.client.config_resetstat()
        # `seqd serve`: the supervisor and its workers.
        pids = ((self.valkey, False), (seqd or self.seqd, seqd is None), (os.getpid(), False))
        before = [cpu_seconds(*pid) for pid in pids]
        workers = {pid: cpu_seconds(pid) for pid in children(self.seqd)}
        machine = busy_seconds()
        rate = await work
        # The outbox reader's part (each `created` event into the event log) counted too.
        if self.outbox is not None:
            await drained(self.outbox)
        after = [cpu_seconds(*pid) for pid in pids]
        machine = busy_seconds() - machine
        split = [1e6 * (cpu_seconds(pid) - was) / n for pid, was in workers.items()]
        others = 1e6 * (machine - sum(after) + sum(before)) / n
        self.others.setdefault(name, []).append(others)
        print(
            f"{name}: {rate:,.0f}/s; seqd workers "
            + " + ".join(f"{w:.1f}" for w in split)
            + f" µs/item; other processes {others:.1f} µs/item",
            flush=True,
        )
        stats = await self.client.info("commandstats")
        script = stats.get("cmdstat_evalsha", {}).get("usec", 0)
        per = [1e6 * (a - b) / n for a, b in zip(after, before, strict=True)]
        if seqd is not None:
            per[2] = math.nan
        self.rows.setdefault(name, []).append((*per, script / n))
        return rate

    def cells(self, name: str) -> str:
        values = [median([r[k] for r in self.rows[name]]) for k in range(4)]
        return " | ".join("–" if math.isnan(v) else f"{v:.1f}" for v in values)


async def make_contacts(store: Store, n: int) -> list[str]:
    out: list[str] = []
    for start in range(0, n, 500):
        rows = [{"phone": f"+1415{i:07d}"} for i in range(start, min(n, start + 500))]
        for result in await upserts.upsert_many(store, TENANT, rows):
            assert isinstance(result, upserts.Upserted)
            out.append(result.contact.id)
    return out


async def single_posts(
    base: str, headers: dict[str, str], sid: str, contacts: list[str], clients: int
) -> float:
    url = f"{base}/sequences/{sid}/enrollments"
    queue = list(contacts)

    async def client(session: aiohttp.ClientSession) -> None:
        while queue:
            cid = queue.pop()
            async with session.post(url, json={"contact_id": cid}, headers=headers) as resp:
                assert resp.status == 201, await resp.text()
                await resp.read()

    async def run() -> None:
        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(client(session) for _ in range(clients)))

    return await timed(len(contacts), run)


async def authed_gets(base: str, headers: dict[str, str], eid: str, n: int, clients: int) -> float:
    """The peer of single POSTs: the cheapest authenticated request (one key, one HGETALL)."""
    url = f"{base}/enrollments/{eid}"
    left = [n]

    async def client(session: aiohttp.ClientSession) -> None:
        while left[0] > 0:
            left[0] -= 1
            async with session.get(url, headers=headers) as resp:
                assert resp.status == 200
                await resp.read()

    async def run() -> None:
        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(client(session) for _ in range(clients)))

    return await timed(n, run)


async def batches(
    base: str, headers: dict[str, str], sid: str, contacts: list[str], clients: int
) -> float:
    """Existing contacts by id, 1,000 items a request."""
    return await batch_items(base, headers, sid, [{"contact_id": c} for c in contacts], clients)


async def inline_batches(
    base: str, headers: dict[str, str], sid: str, start: int, n: int, clients: int
) -> float:
    """New contacts given inline (E.164 phones no contact has yet), 1,000 items a request;
    the time of every 100,000th item printed on a long run."""
    items = [{"contact": {"phone": f"+1646{i:07d}"}} for i in range(start, start + n)]
    return await batch_items(base, headers, sid, items, clients, 100_000 if n > 100_000 else 0)


async def batch_items(
    base: str,
    headers: dict[str, str],
    sid: str,
    items: list[dict[str, Any]],
    clients: int,
    progress: int = 0,
) -> float:
    """`clients` connections posting 1,000 items a request. Lean clients, so their CPU
    (counted: it shares the cores) stays small: bodies encoded before the clock starts, and
    each answer checked by counting its `enrolled` outcomes in the bytes, not decoded."""
    url = f"{base}/sequences/{sid}/enrollments/batch"
    bodies = [
        (len(items[i : i + 1000]), msgspec.json.encode({"items": items[i : i + 1000]}))
        for i in range(0, len(items), 1000)
    ]
    sent = {**headers, "Content-Type": "application/json"}

    bodies.reverse()  # popped from the end: in order
    done, started = [0], time.perf_counter()

    async def client(session: aiohttp.ClientSession) -> None:
        while bodies:
            count, body = bodies.pop()
            async with session.post(url, data=body, headers=sent) as resp:
                answer = await resp.read()
                assert resp.status == 200, answer[:500]
                assert answer.count(b'"outcome":"enrolled"') == count, answer[:500]
            done[0] += count
            if progress and done[0] % progress == 0:
                print(f"{done[0]:,} items at {time.perf_counter() - started:.1f} s", flush=True)

    async def run() -> None:
        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(connector=connector) as session:
            await asyncio.gather(*(client(session) for _ in range(clients)))

    return await timed(len(items), run)


async def plain_hset(client: aioredis.Redis, n: int) -> float:
    """The peer of the batch endpoint: what a BullMQ-like bulk add costs with no logic —
    one HSET of a small hash and one ZADD per job, pipelined 1,000 at a time."""

    async def run() -> None:
        for start in range(0, n, 1000):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(n, start + 1000)):
                key = f"{PREFIX}:peer:job:{i}"
                pipe.hset(key, mapping={"t": TENANT, "s": "seq", "c": "con", "st": "active"})
                pipe.zadd(f"{PREFIX}:peer:due", {key: i})
            await pipe.execute()

    rate = await timed(n, run)
    await client.delete(f"{PREFIX}:peer:due", *[f"{PREFIX}:peer:job:{i}" for i in range(n)])
    return rate


async def fill_intake(client: aioredis.Redis, stream: str, sid: str, contacts: list[str]) -> float:
    """Raw redis-py XADD, pipelined 1,000 at a time: what a writer can push (the peer)."""

    async def run() -> None:
        for start in range(0, len(contacts), 1000):
            pipe = client.pipeline(transaction=False)
            for cid in contacts[start : start + 1000]:
                pipe.xadd(stream, {"tenant": TENANT, "sequence_id": sid, "contact_id": cid})
            await pipe.execute()

    return await timed(len(contacts), run)


async def drain_intake(config: Config, store: Store, n: int, consumers: int) -> float:
    """`consumers` consumers of the group in this process (as several seqd processes would
    be): while one waits for Redis, another parses its batch."""
    group = [Intake(config, store, consumer=f"bench-{i}") for i in range(consumers)]
    await group[0].stream.ensure_group()
    done = [0]

    async def consume(consumer: Intake) -> None:
        while done[0] < n:
            finished = await consumer.run_once(block_ms=0)
            done[0] += finished  # after the await: `done[0] += await ...` loses updates

    async def run() -> None:
        await asyncio.gather(*(consume(c) for c in group))

    try:
        return await timed(n, run)
    finally:
        for c in group:
            await c.stream.close()


async def ready(base: str) -> None:
    """Until /readyz answers 200 (a supervisor binds the port before its workers start)."""
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"{base}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("seqd serve is not ready")
            await asyncio.sleep(0.05)


async def main(args: argparse.Namespace) -> None:
    n, repeat, clients, consumers, load = (
        args.n,
        args.repeat,
        args.clients,
        args.consumers,
        args.load,
    )
    posting = args.batch_clients
    tmp = Path(tempfile.mkdtemp(prefix="seqd-bench-"))
    rport, hport = free_port(), free_port()
    valkey = start_valkey(rport, tmp)
    url = f"redis://127.0.0.1:{rport}/0"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("SEQD_")
    } | {
        "SEQD_REDIS_URL": url,
        "SEQD_REDIS_PREFIX": PREFIX,
        "SEQD_HTTP_PORT": str(hport),
        "SEQD_DISPATCH_ENABLED": "false",
        "SEQD_INTAKE_ENABLED": "false",
        "SEQD_LOG_LEVEL": "warning",
    }  # fmt: skip
    server = None
    try:
        wait_port(rport, valkey)
        store = await Store.open(connect(url), PREFIX, 16)
        _, secret = await store.tenants.create_key(TENANT)
        server = start_server(env, args.workers)
        wait_port(hport, server)
        await ready(f"http://127.0.0.1:{hport}")
        workers = len(children(server.pid)) or 1
        base = f"http://127.0.0.1:{hport}/v1"
        headers = {"Authorization": f"Bearer {secret}"}
        # Every worker started and warm (imports, caches, connections) before the clock.
        sid = (await store.sequences.create(TENANT, SEQUENCE)).id
        await inline_batches(base, headers, sid, 9_000_000, 4000, posting)
        contacts = await make_contacts(store, n)
        config = Config(intake=IntakeConfig(batch_size=1000))
        single, gets, batch, peer_hset, intake, xadd = [], [], [], [], [], []
        inline: list[float] = []
        costs = Costs(store.client, valkey.pid, server.pid, store.outbox)
        for _ in range(repeat):
            if not args.batch_only:
                small = contacts[: max(1, n // 4)]
                sid = (await store.sequences.create(TENANT, SEQUENCE)).id
                work = single_posts(base, headers, sid, small, clients)
                single.append(await costs.measure("single", len(small), work))
                eid = (await store.enrollments.list(TENANT, sid, limit=1, after=None,
                                                    statuses=["active"]))[0][0].id  # fmt: skip
                work = authed_gets(base, headers, eid, len(small), clients)
                gets.append(await costs.measure("gets", len(small), work))
            sid = (await store.sequences.create(TENANT, SEQUENCE)).id
            work = batches(base, headers, sid, contacts, posting)
            batch.append(await costs.measure("batch", n, work))
            sid = (await store.sequences.create(TENANT, SEQUENCE)).id
            work = inline_batches(base, headers, sid, len(inline) * n, n, posting)
            inline.append(await costs.measure("inline", n, work))
            peer_hset.append(await plain_hset(store.client, n))
            if not args.batch_only:
                sid = (await store.sequences.create(TENANT, SEQUENCE)).id
                xadd.append(await fill_intake(store.client, store.keys.intake(), sid, contacts))
                drained = drain_intake(config, store, n, consumers)
                # The intake consumers run in this process.
                intake.append(await costs.measure("intake", n, drained, seqd=os.getpid()))
                stats = (await store.sequences.stats([sid]))[sid]
                assert stats.active == n, stats
        loaded = math.nan
        if load:
            sid = (await store.sequences.create(TENANT, SEQUENCE)).id
            # Phones from 5,000,000 on: none of the runs above used them.
            work = inline_batches(base, headers, sid, 5_000_000, load, posting)
            loaded = await costs.measure("load", load, work)
        await store.close()
    finally:
        for proc in (server, valkey):
            if proc is not None:
                proc.terminate()
                proc.wait(10)

    def row(
        name: str, rates: list[float], target: int, peer: str, peer_rates: list[float], way: str
    ) -> str:
        m, p = median(rates), median(peer_rates)
        verdict = "met" if m >= target else "**not met**"
        return (
            f"| {name} | {m:,.0f}/s | {target:,}/s ({verdict}) | {peer} | {p:,.0f}/s "
            f"| {m / p:.2f} | {costs.cells(way)} |"
        )

    body = "\n".join(
        [
            f"N = {n:,} enrollments per run"
            + ("" if args.batch_only else
               f" ({max(1, n // 4):,} for single POSTs, {clients} concurrent clients)")
            + f", {repeat} runs, medians; valkey (AOF off, "
            f"allocator: {server_env(find_binary())[1]}) and `seqd serve` ({workers} "
            f"workers) on this machine "
            f"(CPU: {cpu_model()}, {os.cpu_count()} cores, shared), clients in the "
            "benchmark process.",
            "",
            "| way in | rate | target | peer (same run) | peer rate | ratio "
            "| valkey CPU µs/item | seqd CPU µs/item | clients CPU µs/item "
            "| scripts µs/item |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *([] if args.batch_only else [
                row("single POST", single, 3000, "authenticated GET of one enrollment", gets,
                    "single")]),
            row(f"batch endpoint (1,000/request, {posting} clients)", batch, 30000,
                "pipelined HSET+ZADD per job (BullMQ-like bulk add, no logic)", peer_hset,
                "batch"),
            row(f"batch endpoint, new contacts inline (1,000/request, {posting} clients)",
                inline, 20000, "the batch endpoint with contact_id items (above)", batch,
                "inline"),
            *([] if args.batch_only else [
                row(f"intake stream ({consumers} consumers draining)", intake, 50000,
                    "raw redis-py XADD, pipelined (the writer)", xadd, "intake")]),
            "",
            f"Inline new contacts against `contact_id` items in the same run: "
            f"{median(inline) / median(batch):.2f}× the rate (target 0.6×).",
            *(
                [
                    "",
                    f"Loading {load:,} new contacts through the batch endpoint (inline, 1,000 a "
                    f"request, {posting} clients, one run): {load / loaded:.1f} s, {loaded:,.0f}/s "
                    f"(target under 60 s); valkey, seqd, clients CPU and scripts µs/item "
                    f"{costs.cells('load').replace(' | ', ', ')}.",
                ]
                if load
                else []
            ),
            *([] if args.batch_only else [
                "",
                "The single POST's peer, per GET: valkey, seqd, clients CPU and scripts µs "
                f"{costs.cells('gets').replace(' | ', ', ')}."]),
            "",
            "CPU the rest of the machine spent meanwhile (other users' processes, the "
            "kernel's own work; /proc/stat), µs per item: "
            + ", ".join(f"{way} {median(v):.1f}" for way, v in costs.others.items())
            + ". Much of it means the figures above were squeezed by other work.",
            "",
            "CPU µs/item: user + system time over the run (10 ms ticks) per item of "
            "valkey-server, of the seqd processes (`seqd serve`'s supervisor and workers "
            "summed, for the HTTP ways, with their "
            "outbox reader turning each `created` event into the tenant's event log; the "
            "consumers' process for the intake, while `seqd serve` still reads the outbox: "
            "its CPU is left out, its Redis time is in valkey's), and of the benchmark's HTTP "
            "clients. Scripts: EVALSHA time from INFO commandstats (the `enroll` script, plus "
            "the rate limiter's and the outbox reader's scripts; wall time inside valkey, so "
            "it grows when valkey is descheduled). On 2 cores a way in cannot exceed about "
            "1e6 / max(valkey, seqd) items/s (each is one thread) nor "
            "2e6 / (valkey + seqd + clients).",
        ]
    )  # fmt: skip
    record("enroll", body)


if __name__ == "__main__":
    # The collector schedule `seqd` sets at start: seqd's code in this process runs as in seqd.
    collector.tune()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=4000, help="enrollments per run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32, help="concurrent single-POST clients")
    parser.add_argument(
        "--consumers", type=int, default=IntakeConfig().consumers, help="intake consumers"
    )
    parser.add_argument(
        "--load", type=int, default=0, help="then load this many new contacts, once (0: no)"
    )
    parser.add_argument(
        "--batch-clients", type=int, default=16, help="connections posting batches at once"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="seqd serve --workers (default: its own)"
    )
    parser.add_argument(
        "--batch-only", action="store_true", help="only the batch endpoint's two ways in"
    )
    asyncio.run(main(parser.parse_args()))
