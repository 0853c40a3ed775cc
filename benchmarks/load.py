"""API latency under sustained mixed load while the dispatcher sends at a high rate.

    python -m benchmarks.load [--seconds 8] [--clients 16] [--backlog 20000]

A dedicated valkey-server (AOF everysec) and a real `seqd serve` subprocess on loopback,
the `log` channel writing to a file. `--clients` concurrent clients run a mix of API
calls for `--seconds` (and at most `--max-requests`), twice in the same run:

- **peer**: the dispatcher disabled (`SEQD_DISPATCH_ENABLED=false`), nothing to send;
- **busy**: `--backlog` enrollments of three SMS steps due at once, the dispatcher
  sending them throughout the window (the backlog left at the end says it stayed busy).

The mix, by route class: `read` (GET a sequence, contact or enrollment: 45 %), `list`
(a page of a sequence's enrollments or of contacts: 20 %), `write` (POST a contact,
enroll a contact inline, pause then resume an enrollment: 35 %). Reported: p50/p99
latency per class in both runs and their ratio, requests/s, errors (any 5xx, transport
error or unexpected 4xx: must be 0), steps/s sent during the window.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.dispatch import free_port, start_valkey
from benchmarks.results import percentile, record
from benchmarks.rules import midday_zone
from seqd import models
from seqd.store.db import Store, connect
from seqd.store.enrollments import EnrollItem

TENANT = "load"
STEPS = 3


class Target:
    """What the clients work on: ids that exist, and the key."""

    def __init__(self, secret: str, sid: str, cids: list[str], eids: list[str]) -> None:
        self.auth = {"Authorization": f"Bearer {secret}"}
        self.sid, self.cids, self.eids = sid, cids, eids


async def seed(url: str, prefix: str, contacts: int, enroll: int) -> Target:
    store = await Store.open(connect(url, max_connections=128), prefix, 16)
    try:
        _, secret = await store.tenants.create_key(TENANT)
        steps = [
            models.StepIn(kind="sms", body=f"step {i} {{{{first_name}}}}") for i in range(STEPS)
        ]
        seq = await store.sequences.create(
            TENANT, models.SequenceCreate(name="load", status="active", steps=steps)
        )
        cids: list[str] = []
        # The contacts' zone is one where it is about midday, so that SMS quiet hours (in
        # their phones' zone, America/Los_Angeles) never defer the backlog to 08:00.
        zone = midday_zone()
        for start in range(0, contacts, 100):
            batch = await asyncio.gather(
                *(
                    store.contacts.create(
                        TENANT, {"first_name": f"c{i}", "phone": f"+1415{i:07d}", "timezone": zone}
                    )
                    for i in range(start, min(contacts, start + 100))
                )
            )
            cids += [c.id for c in batch]
        eids: list[str] = []
        for start in range(0, enroll, 500):
            results = await store.enrollments.enroll(
                TENANT, seq, [EnrollItem(c, {}) for c in cids[start : min(enroll, start + 500)]]
            )
            eids += [r.enrollment.id for r in results if r.enrollment is not None]
        return Target(secret, seq.id, cids, eids)
    finally:
        await store.close()


def start_seqd(
    url: str, prefix: str, workdir: Path, dispatch: bool
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEQD_")}
    env.update(
        SEQD_REDIS_URL=url,
        SEQD_REDIS_PREFIX=prefix,
        SEQD_HTTP_PORT=str(port),
        SEQD_LOG_FORMAT="json",
        SEQD_LOG_LEVEL="warning",
        SEQD_CHANNELS_LOG_PATH=str(workdir / "sent.log"),
        SEQD_DISPATCH_ENABLED="true" if dispatch else "false",
    )
    with open(workdir / "stderr.log", "wb") as err:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "seqd", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=err
        )
    return proc, f"http://127.0.0.1:{port}"


async def wait_up(http: aiohttp.ClientSession, base: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            async with http.get(base + "/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError("seqd did not start")


class Tally:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.requests = 0


async def client(
    http: aiohttp.ClientSession,
    api: str,
    target: Target,
    tally: Tally,
    until: float,
    budget: list[int],
    rng: random.Random,
) -> None:
    async def call(cls: str, method: str, path: str, expect: int, body: Any = None) -> Any:
        started = time.perf_counter()
        try:
            async with http.request(method, api + path, json=body, headers=target.auth) as resp:
                payload = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            tally.errors[f"{cls} {type(exc).__name__}"] += 1
            return None
        tally.latency[cls].append((time.perf_counter() - started) * 1000)
        tally.requests += 1
        if status != expect:
            tally.errors[f"{cls} {method} {status}"] += 1
            return None
        return payload

    n = 0
    while time.monotonic() < until and budget[0] > 0:
        budget[0] -= 1
        n += 1
        pick = rng.random()
        if pick < 0.15:
            await call("read", "GET", f"/sequences/{target.sid}", 200)
        elif pick < 0.30:
            await call("read", "GET", f"/contacts/{rng.choice(target.cids)}", 200)
        elif pick < 0.45:
            await call("read", "GET", f"/enrollments/{rng.choice(target.eids)}", 200)
        elif pick < 0.55:
            await call("list", "GET", f"/sequences/{target.sid}/enrollments?limit=50", 200)
        elif pick < 0.65:
            await call("list", "GET", "/contacts?limit=50", 200)
        elif pick < 0.77:
            phone = f"+1628{rng.randrange(10**7):07d}"
            await call("write", "POST", "/contacts", 201, {"phone": phone, "first_name": "w"})
        elif pick < 0.89:
            phone = f"+1707{rng.randrange(10**7):07d}"
            body = {"contact": {"phone": phone, "first_name": "e"}}
            # 201, or 200 when a drawn phone repeats (idempotent): both are fine.
            started = time.perf_counter()
            async with http.post(
                f"{api}/sequences/{target.sid}/enrollments", json=body, headers=target.auth
            ) as resp:
                await resp.read()
                tally.latency["write"].append((time.perf_counter() - started) * 1000)
                tally.requests += 1
                if resp.status not in (200, 201):
                    tally.errors[f"write enroll {resp.status}"] += 1
        else:
            eid = target.eids[n % len(target.eids)]
            # Pause, then resume: either may find it completed (409) when the dispatcher won.
            for action in ("pause", "resume"):
                started = time.perf_counter()
                async with http.post(
                    f"{api}/enrollments/{eid}/{action}", json={}, headers=target.auth
                ) as resp:
                    await resp.read()
                    tally.latency["write"].append((time.perf_counter() - started) * 1000)
                    tally.requests += 1
                    if resp.status not in (200, 409):
                        tally.errors[f"write {action} {resp.status}"] += 1


def sent_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


async def one_run(
    url: str, workdir: Path, prefix: str, dispatch: bool, args: argparse.Namespace
) -> dict[str, Any]:
    workdir.mkdir(parents=True)  # noqa: ASYNC240 - once, before the run
    backlog = args.backlog if dispatch else 0
    target = await seed(url, prefix, max(backlog, 2000), max(backlog, 1000))
    proc, base = start_seqd(url, prefix, workdir, dispatch)
    tally = Tally()
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30),
            connector=aiohttp.TCPConnector(limit=args.clients),
        ) as http:
            await wait_up(http, base)
            sent_before = sent_lines(workdir / "sent.log")
            started = time.monotonic()
            until = started + args.seconds
            budget = [args.max_requests]
            await asyncio.gather(
                *(
                    client(http, base + "/v1", target, tally, until, budget, random.Random(i))
                    for i in range(args.clients)
                )
            )
            elapsed = time.monotonic() - started
            sent = sent_lines(workdir / "sent.log") - sent_before
        store = await Store.open(connect(url), prefix, 16)
        try:
            queues = [store.keys.queue(s, target.sid) for s in range(16)]
            left = sum([await store.client.zcard(q) for q in queues])
        finally:
            await store.close()
    finally:
        proc.terminate()
        proc.wait(30)
    return {
        "tally": tally,
        "elapsed": elapsed,
        "steps_per_s": sent / elapsed,
        "due_left": left,
    }


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="seqd-load-") as tmp:
        root = Path(tmp)
        (root / "valkey").mkdir()
        valkey, url = start_valkey(root / "valkey")
        try:
            peer = await one_run(url, root / "peer", "loadpeer", False, args)
            busy = await one_run(url, root / "busy", "loadbusy", True, args)
        finally:
            valkey.terminate()
            valkey.wait(10)
    rows = []
    for cls in ("read", "list", "write"):
        p, b = peer["tally"].latency[cls], busy["tally"].latency[cls]
        rows.append(
            f"| {cls} | {len(p)} | {percentile(p, 50):.1f} | {percentile(p, 99):.1f} "
            f"| {len(b)} | {percentile(b, 50):.1f} | {percentile(b, 99):.1f} "
            f"| {percentile(b, 99) / percentile(p, 99):.2f} |"
        )
    errors = {**peer["tally"].errors, **{f"busy {k}": v for k, v in busy["tally"].errors.items()}}
    body = (
        f"{args.clients} concurrent clients for {args.seconds} s per run, one `seqd serve`, "
        f"AOF everysec, loopback. The busy run starts with {args.backlog} enrollments × "
        f"{STEPS} SMS steps due (`log` channel).\n\n"
        "| class | peer n | peer p50 ms | peer p99 ms | busy n | busy p50 ms | busy p99 ms "
        "| busy/peer p99 |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        + "\n".join(rows)
        + "\n\n"
        f"- requests/s: peer {peer['tally'].requests / peer['elapsed']:.0f}, busy "
        f"{busy['tally'].requests / busy['elapsed']:.0f}\n"
        f"- steps sent/s during the busy window: {busy['steps_per_s']:.0f} "
        f"({busy['due_left']} enrollments still due at its end)\n"
        f"- errors (5xx, transport, unexpected 4xx): {sum(errors.values())} {dict(errors) or ''}\n"
    )
    record("load", body)
    if errors:
        raise SystemExit(1)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--backlog", type=int, default=20000)
    parser.add_argument("--max-requests", type=int, default=200_000)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
