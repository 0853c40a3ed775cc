"""The dashboard over one sequence of N enrollments: each page's latency and the RSS of a
real `seqd serve` with the store at that size.

    python -m benchmarks.ui [--rows 1000000] [--paused 2000] [--runs 5]

A private valkey-server (no persistence); N contacts and N enrollments in one sequence,
written through the store's own calls (the scripts, not the HTTP API), `--paused` of them
paused by hand, while `seqd serve` (dispatcher off) runs and turns the outbox into the
tenant's event log (waited for before the pages are read). Each page is read `--runs`
times over one signed-in session, interleaved: the median and the slowest. The RSS is the
server's VmRSS before the first page and its VmHWM (peak) after the last.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from benchmarks.e2e import cpu_model
from benchmarks.enroll import free_port, start_server, start_valkey, wait_port
from benchmarks.exports import make_contacts_from, peak_kib, seqd_env
from benchmarks.results import record
from seqd import models
from seqd.store.db import Store, connect
from seqd.store.enrollments import EnrollItem

TENANT = "bench"
PREFIX = "ui"
SHARDS = 16
CHUNK = 10_000


class Seeded:
    def __init__(self, secret: str, sequence: str, middle: str, phone: str) -> None:
        self.secret = secret
        self.sequence = sequence
        # An enrollment enrolled halfway through, and a contact's phone to search for.
        self.middle = middle
        self.phone = phone


async def seed(url: str, rows: int, paused: int) -> Seeded:
    store = await Store.open(connect(url, max_connections=64), PREFIX, SHARDS)
    try:
        _, secret = await store.tenants.create_key(TENANT)
        steps = [
            models.StepIn(kind="sms", wait_minutes=60 * 24, body="hi {{first_name|there}}"),
            models.StepIn(kind="sms", wait_minutes=60 * 24 * 3, body="again"),
        ]
        seq = await store.sequences.create(
            TENANT, models.SequenceCreate(name="big", status="active", steps=steps)
        )
        started, middle, some = time.perf_counter(), "", []
        for start in range(0, rows, CHUNK):
            cids = await make_contacts_from(store, start, min(CHUNK, rows - start))
            items = [EnrollItem(cid, {"row": start + i}) for i, cid in enumerate(cids)]
            done = await store.enrollments.enroll(TENANT, seq, items, full=False)
            ids = [d.id for d in done if d.id is not None]
            if start <= rows // 2 < start + CHUNK:
                middle = ids[rows // 2 - start]
            some += ids[: max(0, paused - len(some))]
        print(f"seeded {rows} enrollments in {time.perf_counter() - started:.0f} s", flush=True)
        for eid in some:
            await store.enrollments.transition(TENANT, eid, "pause", "manual")
        return Seeded(secret, seq.id, middle, f"+1415{rows // 2:07d}")
    finally:
        await store.close()


async def drained(url: str, timeout_s: float = 240) -> int:
    """Wait for the events reader to take every outbox entry into the tenant's log; the
    log's length."""
    store = await Store.open(connect(url), PREFIX, SHARDS)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            left = 0
            for shard in range(SHARDS):
                left += int(await store.client.xlen(store.keys.outbox(shard)))
            if left == 0 or time.monotonic() > deadline:
                return int(await store.client.xlen(store.keys.events(TENANT)))
            await asyncio.sleep(1)
    finally:
        await store.close()


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def timed_get(session: aiohttp.ClientSession, url: str) -> tuple[float, str]:
    started = time.perf_counter()
    async with session.get(url, allow_redirects=False) as resp:
        text = await resp.text()
        assert resp.status == 200, (url, resp.status, text[:300])
    return time.perf_counter() - started, text


async def main(rows: int, paused: int, runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        valkey = start_valkey(port, Path(tmp))
        wait_port(port, valkey)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            config = Path(tmp) / "seqd.toml"
            http = free_port()
            config.write_text(
                f'[redis]\nurl = "{url}"\nprefix = "{PREFIX}"\nshards = {SHARDS}\n'
                f"[http]\nport = {http}\n[dispatch]\nenabled = false\n"
            )
            # Running while the rows go in: its reader logs the events as they come, as in
            # production (the log's positions then follow the events' times).
            server = start_server(seqd_env(SEQD_CONFIG=str(config)))
            try:
                wait_port(http, server)
                seeded = await seed(url, rows, paused)
                started = time.perf_counter()
                logged = await drained(url)
                print(f"{logged} events logged in {time.perf_counter() - started:.0f} s")
                rss_before = vm_rss_kib(server.pid)
                timings = await pages(f"http://127.0.0.1:{http}", seeded, runs)
                peak = peak_kib(server.pid)
            finally:
                server.terminate()
                server.wait(30)
        finally:
            valkey.terminate()
            valkey.wait(10)
    lines = [
        "| page | median ms | slowest ms |",
        "| --- | ---: | ---: |",
    ]
    for name, secs in timings.items():
        lines.append(f"| {name} | {statistics.median(secs) * 1000:.1f} | {max(secs) * 1000:.1f} |")
    body = "\n".join(lines) + (
        f"\n\n`seqd serve` RSS: {rss_before / 1024:.0f} MiB before the first page, peak "
        f"(VmHWM) {peak / 1024:.0f} MiB after the last. {rows:,} enrollments in one sequence "
        f"({paused:,} paused), {logged:,} events in the tenant's log, {runs} reads of each "
        f"page interleaved over one session. CPU: {cpu_model()}. "
        f"`python -m benchmarks.ui --rows {rows} --paused {paused} --runs {runs}`."
    )
    record("dashboard over 1,000,000 enrollments", body)


async def pages(base: str, seeded: Seeded, runs: int) -> dict[str, list[float]]:
    jar = aiohttp.CookieJar(unsafe=True)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(base_url=base, cookie_jar=jar, timeout=timeout) as session:
        async with session.post(
            "/ui/login", data={"key": seeded.secret}, allow_redirects=False
        ) as resp:
            assert resp.status == 303, await resp.text()
        seq = f"/ui/sequences/{seeded.sequence}"
        _, first = await timed_get(session, seq + "?status=active")
        token = re.search(r"page_token=([^\"&]+)", first)
        assert token, "no next page on the sequence page"
        urls = {
            "sequences list": "/ui/",
            "sequence: funnel, per-step counts, first page": seq,
            "sequence: enrollments filtered status=active, 2nd page": (
                f"{seq}?status=active&page_token={token.group(1)}"
            ),
            "sequence: enrollments filtered status=paused": f"{seq}?status=paused",
            "enrollment timeline (enrolled halfway)": f"/ui/enrollments/{seeded.middle}",
            "contacts list": "/ui/contacts",
            "contacts search (a phone)": f"/ui/contacts?q={seeded.phone.replace('+', '%2B')}",
            "forecast (72 h)": "/ui/forecast",
            "dispatcher": "/ui/dispatcher",
        }
        timings: dict[str, list[float]] = {name: [] for name in urls}
        found: set[bool] = set()
        for _ in range(runs):
            for name, path in urls.items():
                secs, text = await timed_get(session, path)
                timings[name].append(secs)
                if name.startswith("contacts search"):
                    assert "con_" in text, "the contact was not found"
                if name.startswith("enrollment timeline"):
                    assert 'data-step="0"' in text or "No step done yet" in text
                    found.add("sequence.enrollment.created" in text)
    print(f"the enrollment's created event on its timeline's first page: {found}")
    return timings


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--paused", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.paused, args.runs))
