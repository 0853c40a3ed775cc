"""The CPU one HTTP send costs seqd, by client: the `http` channel as shipped against tuned
aiohttp and clients with native cores, each POSTing to the same raw sink.

    python -m benchmarks.http_send [--n 20000] [--reps 3] [--concurrency 100]

Each run starts a fresh sink process (`benchmarks/sink.py`, a fixed 201) and sends `--n`
POSTs of the channel's JSON document (about 300 bytes, an `Idempotency-Key` header each),
`--concurrency` in flight, from this process. The figure is this process's CPU time (user
+ system, every thread: the Rust clients run their own runtime threads) per request, read
from `getrusage`, and the sink's, so that a client doing less work at the sink shows.
Kinds, interleaved rep by rep:

- **seqd**: `HttpSmsSender.send` as the dispatcher calls it (document built and encoded,
  the answer decoded and classified);
- **aiohttp**: one tuned `ClientSession` (connector sized to the concurrency, no automatic
  headers, no decompression), the same bytes and headers;
- **curl_cffi**: `curl_cffi.AsyncSession` (libcurl's multi interface on the loop);
- **pyqwest**, **pyreqwest**: Rust (hyper/reqwest) clients with an asyncio face.
Clients not installed are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import resource
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from benchmarks.dispatch import cpu_seconds
from benchmarks.e2e import Sink, cpu_model
from benchmarks.results import record
from seqd.channels.base import OutboundMessage
from seqd.channels.http_sms import HttpSmsSender, WebhookSms, _encode
from seqd.config import HttpSmsConfig

KINDS = ("seqd", "aiohttp", "curl_cffi", "pyqwest", "pyreqwest")
HEADERS = {"Content-Type": "application/json", "User-Agent": "seqd"}


def message(i: int) -> OutboundMessage:
    return OutboundMessage(
        kind="sms",
        tenant="bench",
        enrollment_id=f"enr_{i:022d}",
        contact_id=f"con_{i:022d}",
        sequence_id="seq_0000000000000000000000",
        step=0,
        to=f"+1415{i % 10_000_000:07d}",
        body="Hi there, this is the first step of a sequence.",
    )


def payload(i: int) -> tuple[bytes, str]:
    m = message(i)
    doc = WebhookSms(
        to=m.to,
        sender="+15550001111",
        body=m.body,
        tenant=m.tenant,
        enrollment_id=m.enrollment_id,
        contact_id=m.contact_id,
        sequence_id=m.sequence_id,
        step=m.step,
        idempotency_key=m.key,
    )
    return _encode(doc), m.key


Send = Callable[[int], Awaitable[None]]


Close = Callable[[], Awaitable[Any]]


async def client(kind: str, url: str, concurrency: int) -> tuple[Send, Close]:
    """The send of one request by `kind`, and how to close the client."""
    if kind == "seqd":
        sender = HttpSmsSender(HttpSmsConfig(url=url, from_number="+15550001111"))

        async def send_seqd(i: int) -> None:
            result = await sender.send(message(i))
            assert result.outcome == "sent", result

        return send_seqd, sender.close
    if kind == "aiohttp":
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            skip_auto_headers=("Accept", "Accept-Encoding"),
            auto_decompress=False,
        )

        async def send_aiohttp(i: int) -> None:
            body, key = payload(i)
            headers = {**HEADERS, "Idempotency-Key": key}
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                assert resp.status == 201

        return send_aiohttp, session.close
    if kind == "curl_cffi":
        from curl_cffi.requests import AsyncSession

        curl = AsyncSession(max_clients=concurrency)

        async def send_curl(i: int) -> None:
            body, key = payload(i)
            resp = await curl.post(url, data=body, headers={**HEADERS, "Idempotency-Key": key})
            assert resp.status_code == 201

        return send_curl, curl.close
    if kind == "pyqwest":
        import pyqwest

        transport = pyqwest.HTTPTransport(
            enable_gzip=False, enable_brotli=False, enable_zstd=False, enable_otel=False
        )
        qwest = pyqwest.Client(transport)

        async def send_qwest(i: int) -> None:
            body, key = payload(i)
            resp = await qwest.post(url, headers={**HEADERS, "Idempotency-Key": key}, content=body)
            assert resp.status == 201

        async def close_qwest() -> None:
            await transport.aclose()

        return send_qwest, close_qwest
    if kind == "pyreqwest":
        from pyreqwest.client import ClientBuilder

        reqwest = await ClientBuilder().max_connections(concurrency).build().__aenter__()

        async def send_reqwest(i: int) -> None:
            body, key = payload(i)
            request = (
                reqwest.post(url).headers({**HEADERS, "Idempotency-Key": key}).body_bytes(body)
            )
            resp = await request.build().send()
            await resp.bytes()
            assert resp.status == 201

        async def close_reqwest() -> None:
            await reqwest.__aexit__(None, None, None)

        return send_reqwest, close_reqwest
    raise ValueError(kind)


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def once(kind: str, n: int, concurrency: int) -> dict[str, float]:
    sink = Sink()
    try:
        async with aiohttp.ClientSession() as probe:
            await sink.up(probe)
        send, close = await client(kind, sink.url, concurrency)
        for i in range(concurrency):  # connections opened, code paths warm
            await send(i)
        queue = iter(range(n))

        async def lane() -> None:
            for i in queue:
                await send(i)

        sink_before, before, started = cpu_seconds(sink.proc.pid), cpu_self(), time.monotonic()
        await asyncio.gather(*(lane() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
        cpu, sink_cpu = cpu_self() - before, cpu_seconds(sink.proc.pid) - sink_before
        await close()
        return {"rate": n / elapsed, "cpu_us": cpu / n * 1e6, "sink_us": sink_cpu / n * 1e6}
    finally:
        sink.stop()


def installed(kind: str) -> bool:
    module = {"seqd": "aiohttp", "aiohttp": "aiohttp"}.get(kind, kind)
    return importlib.util.find_spec(module) is not None


async def main(args: argparse.Namespace) -> None:
    kinds = [k for k in args.only.split(",") if k and installed(k)]
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    for rep in range(args.reps):
        for kind in kinds:
            result = await once(kind, args.n, args.concurrency)
            runs[kind].append(result)
            print(
                f"rep {rep} {kind}: {result['rate']:,.0f} req/s, {result['cpu_us']:.0f} µs CPU "
                f"per request (sink {result['sink_us']:.0f})",
                flush=True,
            )
    lines = [
        f"CPU: {cpu_model()}. {args.n:,} POSTs a run, {args.concurrency} in flight; medians of "
        f"{args.reps} interleaved reps. The machine is shared with other work: compare "
        "within this table.",
        "",
        "| client | client CPU µs per request | per rep | sink µs | requests/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind, results in runs.items():
        cpu = statistics.median(r["cpu_us"] for r in results)
        reps = " / ".join(f"{r['cpu_us']:.0f}" for r in results)
        sink = statistics.median(r["sink_us"] for r in results)
        rate = statistics.median(r["rate"] for r in results)
        lines.append(f"| {kind} | {cpu:.0f} | {reps} | {sink:.0f} | {rate:,.0f} |")
    command = (
        f"`python -m benchmarks.http_send --n {args.n} --reps {args.reps} "
        f"--concurrency {args.concurrency} --only {','.join(kinds)}`"
    )
    record("HTTP send: CPU per request by client", command + "\n\n" + "\n".join(lines))


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--only", default=",".join(KINDS))
    args = parser.parse_args()
    import uvloop

    uvloop.run(main(args))


if __name__ == "__main__":
    cli()
