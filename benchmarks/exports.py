"""Exports at scale: rows/s and peak memory of `seqd export` and of `GET /exports/...`
(a real `seqd serve`) over N enrollments, against a small export, in the same run.

    python -m benchmarks.exports [--rows 1000000] [--small 20000]

A private valkey-server (no persistence); N contacts and N enrollments (metadata of about
40 bytes each) written through the store's own calls. Then, for the small set (one
sequence of `--small` enrollments) and the whole tenant (`--rows`): `seqd export
enrollments --format csv` as a subprocess (its peak RSS from wait4), and `GET
/v1/exports/enrollments?format=csv` streamed from a `seqd serve` subprocess (dispatcher
off; its peak RSS, VmHWM, read after each export). Constant memory means the large
export's peak is about the small one's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from benchmarks.e2e import cpu_model
from benchmarks.enroll import free_port, start_server, start_valkey, wait_port
from benchmarks.results import record
from seqd import models
from seqd.store import upserts
from seqd.store.db import Store, connect
from seqd.store.enrollments import EnrollItem

TENANT = "bench"
PREFIX = "xp"
SHARDS = 16


async def seed(url: str, rows: int, small: int) -> tuple[str, str]:
    """The tenant's key and the small sequence's id; `rows` enrollments in all."""
    store = await Store.open(connect(url, max_connections=64), PREFIX, SHARDS)
    try:
        _, secret = await store.tenants.create_key(TENANT)
        step = models.StepIn(kind="sms", wait_minutes=600, body="hi")
        seqs = []
        for name, n in (("small", small), ("rest", rows - small)):
            seq = await store.sequences.create(
                TENANT, models.SequenceCreate(name=name, status="active", steps=[step])
            )
            seqs.append((seq, n))
        started, done = time.perf_counter(), 0
        for seq, n in seqs:
            for start in range(0, n, 10_000):
                cids = await make_contacts_from(store, done, min(10_000, n - start))
                items = [EnrollItem(cid, {"source": "benchmark", "row": done + i})
                         for i, cid in enumerate(cids)]  # fmt: skip
                await store.enrollments.enroll(TENANT, seq, items, full=False)
                done += len(cids)
            print(f"seeded {done} enrollments in {time.perf_counter() - started:.0f} s")
        return secret, seqs[0][0].id
    finally:
        await store.close()


async def make_contacts_from(store: Store, first: int, n: int) -> list[str]:
    out: list[str] = []
    for start in range(first, first + n, 500):
        rows = [{"phone": f"+1415{i:07d}"} for i in range(start, min(first + n, start + 500))]
        for result in await upserts.upsert_many(store, TENANT, rows):
            assert isinstance(result, upserts.Upserted)
            out.append(result.contact.id)
    return out


def seqd_env(**more: str) -> dict[str, str]:
    """The environment of a seqd subprocess: SEQD_BENCH (the benchmark wrapper's mark, read
    through the parent by its renicer) is no setting of seqd's, which refuses unknown ones."""
    return {**{k: v for k, v in os.environ.items() if k != "SEQD_BENCH"}, **more}


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def cli_export(config: Path, out: Path, sequence: str | None) -> tuple[float, int, int]:
    """Seconds, rows and peak RSS (KiB) of `seqd export` in a subprocess."""
    args = [sys.executable, "-m", "seqd", "--config", str(config), "export", "enrollments"]
    args += ["--tenant", TENANT, "--format", "csv", "--out", str(out)]
    if sequence:
        args += ["--sequence-id", sequence]
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, env=seqd_env())
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    assert status == 0, status
    with out.open() as f:
        rows = sum(1 for _ in f) - 1
    return elapsed, rows, usage.ru_maxrss


async def http_export(base: str, secret: str, sequence: str | None) -> tuple[float, int]:
    url = f"{base}/v1/exports/enrollments?format=csv"
    if sequence:
        url += f"&sequence_id={sequence}"
    rows, started = 0, time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(url, headers={"Authorization": f"Bearer {secret}"}) as resp:
            assert resp.status == 200, await resp.text()
            async for chunk in resp.content.iter_chunked(1 << 16):
                rows += chunk.count(b"\n")
    return time.perf_counter() - started, rows - 1


async def main(rows: int, small: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        valkey = start_valkey(port, Path(tmp))
        wait_port(port, valkey)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            secret, small_seq = await seed(url, rows, small)
            config = Path(tmp) / "seqd.toml"
            http = free_port()
            config.write_text(
                f'[redis]\nurl = "{url}"\nprefix = "{PREFIX}"\nshards = {SHARDS}\n'
                f"[http]\nport = {http}\n[dispatch]\nenabled = false\n"
            )
            table = []
            for label, seq, n in (("small", small_seq, small), ("all", None, rows)):
                secs, got, kib = cli_export(config, Path(tmp) / f"{label}.csv", seq)
                assert got == n, (label, got, n)
                table.append(("seqd export", n, secs, kib))
            env = seqd_env(SEQD_CONFIG=str(config))
            server = start_server(env)
            try:
                wait_port(http, server)
                for seq, n in ((small_seq, small), (None, rows)):
                    secs, got = await http_export(f"http://127.0.0.1:{http}", secret, seq)
                    assert got == n, (got, n)
                    table.append(("GET /v1/exports/enrollments", n, secs, peak_kib(server.pid)))
            finally:
                server.terminate()
                server.wait(30)
        finally:
            valkey.terminate()
            valkey.wait(10)
    lines = [
        "| export (CSV) | rows | seconds | rows/s | peak RSS of the exporting process |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, n, secs, kib in table:
        lines.append(f"| {name} | {n:,} | {secs:.1f} | {n / secs:,.0f} | {kib / 1024:.0f} MiB |")
    body = "\n".join(lines) + (
        f"\n\nCPU: {cpu_model()}. `python -m benchmarks.exports --rows {rows} --small {small}`. "
        "The HTTP rows' peak is the `seqd serve` process's VmHWM after each export (the "
        "large export follows the small one, so an equal peak means it added nothing)."
    )
    record("exports", body)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=20_000)
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.small))
