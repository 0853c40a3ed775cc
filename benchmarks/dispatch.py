"""The dispatcher's speed and cost: steps/s, lateness, Redis memory and commands per step,
and arq draining the same burst in the same run.

    python -m benchmarks.dispatch [--n 10000] [--rate 4000] [--seconds 5] [--runs 3] [--profile]

A dedicated valkey-server with AOF on (appendfsync everysec) on a free port. N contacts
are enrolled through the real `enroll` script, all due at once, and the real dispatcher
(`Dispatcher.start()`, the loop `seqd serve` runs) drains them:

- into a no-op sink (the dispatcher's own cost), and into the `twilio` channel against a
  local server speaking the Messages API wire format (in a subprocess);
- lateness (send time - next_run_at) at a steady load below saturation: steps due at
  `--rate` per second (and half that) for `--seconds`, enrolled beforehand with their due
  times spread (the dispatcher's own lateness); and enrollments due one second after this
  same process makes them at `--rate` per second (the load generator competes with the
  dispatcher for the process and for Redis);
- Redis time in scripts per step (INFO commandstats `usec` of EVALSHA over the burst);
- Redis memory per active enrollment (`used_memory` delta over the enroll, every index
  included) and Redis commands per step (INFO commandstats delta over the no-op burst,
  commands run inside scripts included);
- arq: N deferred jobs of a no-op function, drained by an arq worker in burst mode.

`--profile` runs the no-op burst under cProfile and prints the top of the Python side.

`--conditions` / `--variants` (either or both) measures only the no-op burst of plain
sequences against the same burst of sequences with conditions on every step (`only_if` /
`skip_if` over contact fields, attributes, metadata and an earlier step's outcome, all
holding so the same steps are sent), with two A/B variants on every step, and with both,
in turn in one run on one server: the ratios to the same run's plain burst are the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import math
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis

from benchmarks.peers import PEERS, bullmq_ready
from benchmarks.results import cpu_model, median, percentile, record
from seqd import collector, ids, models
from seqd.channels.base import OutboundMessage, SendResult
from seqd.config import ChannelsConfig, Config, DispatchConfig, TwilioConfig
from seqd.embedded import find_binary, server_env
from seqd.engine.dispatcher import Dispatcher
from seqd.engine.lane import ROUND_MS
from seqd.engine.ports import Quiet
from seqd.engine.rounds import cut_pieces
from seqd.store import calls, scripts
from seqd.store.claims import Claimed, ClaimedEnrollment
from seqd.store.db import Store, connect
from seqd.store.dispatch import Dispatch
from seqd.store.enrollments import ENROLL_BATCH
from seqd.store.settles import Sent, Settled
from seqd.times import now_ms

TENANT = "bench"
PREFIX = "bench"
SHARDS = 16
TARGET_STEPS = 50_000
TARGET_P99_MS = 100
TARGET_BYTES = 400
TARGET_FLOOR = 0.6
TARGET_BULLMQ = 5.0
# The wait before the benchmark sequences' second step (new_sequence's `later_wait`), ms.
WAIT_MS = 1440 * 60_000
_SENT = SendResult(outcome="sent", provider_id="noop")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_valkey(directory: Path, jemalloc: bool = True) -> tuple[subprocess.Popen[bytes], str]:
    """The server `seqd serve` would start: the same binary, allocator preload included."""
    port = free_port()
    env, _ = server_env(find_binary(), jemalloc)
    proc = subprocess.Popen(
        [
            find_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--logfile",
            str(directory / "valkey.log"),
        ],
        env=env,
    )
    deadline = time.monotonic() + 10
    import redis

    while True:
        try:
            redis.Redis(port=port).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    return proc, f"redis://127.0.0.1:{port}/0"


# -- senders ---------------------------------------------------------------------------------
class NoopSender:
    name = "noop"

    async def send(self, message: OutboundMessage) -> SendResult:
        return _SENT

    async def close(self) -> None:
        pass


class LatenessSender:
    """Records send time - next_run_at per message (due times known from the enroll)."""

    name = "lateness"

    def __init__(self, due: dict[str, int]) -> None:
        self.due = due
        # Send times by enrollment: a step due at once may be sent before the enroll call
        # that made it has returned its due time.
        self.sent: dict[str, float] = {}

    async def send(self, message: OutboundMessage) -> SendResult:
        self.sent.setdefault(message.enrollment_id, time.time() * 1000)
        return _SENT

    @property
    def late_ms(self) -> list[float]:
        # (A step of an earlier phase still due when its dispatcher stopped, on a loaded
        # machine, is sent by this one: not one of this phase's.)
        return [at - self.due[eid] for eid, at in self.sent.items() if eid in self.due]

    async def close(self) -> None:
        pass


class One:
    def __init__(self, sender: Any) -> None:
        self.sender = sender

    def get(self, tenant: str, kind: str) -> Any:
        return self.sender

    async def close(self) -> None:
        await self.sender.close()


class Counting(Quiet):
    """An observer that says when `target` steps have been settled."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.done = asyncio.Event()

    def settled(self, n: int) -> None:
        self.count += n
        if self.count >= self.target:
            self.done.set()


# -- seeding ---------------------------------------------------------------------------------
async def make_contacts(store: Store, n: int, extra: tuple[str, ...] = ()) -> list[str]:
    """Contacts written straight with putContact (lookup indexes are not what is measured);
    `extra`: more field/value pairs for each."""
    out: list[str] = []
    now = int(time.time() * 1000)
    for start in range(0, n, 1000):
        trip = []
        for i in range(start, min(n, start + 1000)):
            cid = ids.new(ids.CONTACT)
            shard = ids.shard_of(cid, store.shards)
            fields = ["first_name", f"c{i}", "phone", f"+1415{i:07d}", *extra]
            trip.append(calls.put_contact(store.keys, shard, now, TENANT, cid, "create", fields))
            out.append(cid)
        for result in await store.runner.call_many(trip):
            if isinstance(result, Exception):
                raise result
    return out


async def enroll_direct(
    store: Store, seq_id: str, cids: list[str], wait_ms: int, now: int
) -> dict[str, int]:
    """The real `enroll` script with a first wait in ms (the API's unit is minutes)."""
    by_shard: dict[int, list[str]] = defaultdict(list)
    for cid in cids:
        by_shard[ids.shard_of(cid, store.shards)].append(cid)
    trip = []
    for shard, members in by_shard.items():
        for start in range(0, len(members), ENROLL_BATCH):
            items = [
                (ids.new_in_shard(ids.ENROLLMENT, shard, store.shards, now), cid, "", "", "", "")
                for cid in members[start : start + ENROLL_BATCH]
            ]
            trip.append(calls.enroll(store.keys, shard, now, TENANT, seq_id, wait_ms, items))
    due = {}
    for reply in await store.runner.call_many(trip):
        if isinstance(reply, Exception):
            raise reply
        for row in calls.enrolled(reply):
            if isinstance(row, calls.Enrolled) and not row.idempotent:
                due[row.id] = now + wait_ms
    return due


# Conditions on every step that hold for the benchmark's contacts (so the same steps go):
# a contact field, an attribute, the metadata, and (after the first) an earlier step.
_FIRST_ONLY_IF = {
    "all": [
        {"field": "first_name", "exists": True},
        {"not": {"field": "attributes.plan", "in": ["blocked", "churned"]}},
    ]
}
_SKIP_IF = {"field": "metadata.stop", "eq": True}


def _conditions(step: int) -> dict[str, Any]:
    only_if: dict[str, Any] = _FIRST_ONLY_IF
    if step:
        only_if = {"any": [{"step": step - 1, "is": "sent"}, _FIRST_ONLY_IF]}
    return {"only_if": only_if, "skip_if": _SKIP_IF}


# Two A/B variants of a step, half the enrollments each (`--variants`).
_VARIANTS = [
    {"id": "a", "weight": 50, "body": "Hi {{first_name|there}}, A"},
    {"id": "b", "weight": 50, "body": "Hello {{first_name|there}}, B"},
]


async def new_sequence(
    store: Store,
    name: str,
    steps: int = 2,
    conditions: bool = False,
    later_wait: int = 1440,
    variants: bool = False,
) -> models.Sequence:
    body = models.SequenceCreate(
        name=name,
        status="active",
        steps=[
            msgspec.convert(
                {"kind": "sms", "body": f"Hi {{{{first_name|there}}}}, step {i}",
                 "wait_minutes": 0 if i == 0 else later_wait,
                 **(_conditions(i) if conditions else {}),
                 **({"variants": _VARIANTS} if variants else {})},
                models.StepIn,
            )
            for i in range(steps)
        ],
    )  # fmt: skip
    return await store.sequences.create(TENANT, body)


# includes/stats.lua with every count a no-op: the scripts as they were before counters
# (`without_counters`), for interleaved runs against the same code with them.
_NO_COUNTERS = """-- @include stat_codes
local function stats_count() end
local function stats_count_sender() end
local function stats_variant() return NO_VARIANT end
local function stats_sender() end
local function stats_step() end
local function stats_credit() end
"""


@contextlib.contextmanager
def without_counters() -> Iterator[None]:
    """Run the scripts with the per-step counters switched off (a benchmark switch only: the
    product always counts). Script calls read `scripts.SCRIPTS` when they run."""
    saved = scripts.SCRIPTS
    scripts.GENERATED["stats"] = _NO_COUNTERS
    try:
        scripts.SCRIPTS = scripts.load_scripts()
    finally:
        del scripts.GENERATED["stats"]
    try:
        yield
    finally:
        scripts.SCRIPTS = saved


async def counters_ab(n: int, runs: int) -> None:
    """No-op bursts of `n` steps with the per-step counters on and off, interleaved (the
    order alternating per run) on one valkey-server: the counters' cost as a ratio of
    medians measured in the same conditions."""
    workdir = Path(tempfile.mkdtemp(prefix="seqd-bench-counters-"))
    proc, url = start_valkey(workdir)
    rates: dict[str, list[float]] = {"on": [], "off": []}
    stats_bytes: list[float] = []
    # Redis commands per step in each burst, by command (those inside scripts included).
    commands: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    try:
        client = connect(url, max_connections=256)
        store = await Store.open(client, PREFIX, SHARDS)
        config = DispatchConfig()
        cids = await make_contacts(store, n)
        for k in range(runs):
            for mode in ("on", "off") if k % 2 == 0 else ("off", "on"):
                switch = contextlib.nullcontext() if mode == "on" else without_counters()
                with switch:
                    await store.runner.load_all()
                    seq = await new_sequence(store, f"{mode}{k}")
                    await enroll_direct(store, seq.id, cids, 0, int(time.time() * 1000))
                    before = await command_calls(client)
                    rates[mode].append(await burst(store, One(NoopSender()), n, config))
                    after = await command_calls(client)
                    commands[mode].append({c: (after[c] - before.get(c, 0)) / n for c in after})
                if mode == "on":
                    # The counters of a 2-step sequence's day, every shard: n enrolled, sent
                    # step 0, scheduled step 1.
                    day = int(time.time() * 1000) // 86_400_000
                    keys = [store.keys.stats(s, seq.id, day) for s in range(SHARDS)]
                    stats_bytes.append(await memory_of(client, keys) * len(keys))
            print(f"run {k + 1}/{runs}: on {rates['on'][-1]:,.0f}, off {rates['off'][-1]:,.0f}")
        await store.close()
    finally:
        proc.terminate()
        proc.wait()
    on, off = median(rates["on"]), median(rates["off"])
    pairs = [a / b for a, b in zip(rates["on"], rates["off"], strict=True)]

    def per_step(mode: str, command: str | None = None) -> float:
        runs_of = commands[mode]
        if command is None:
            return median([sum(c.values()) for c in runs_of])
        return median([c.get(command, 0.0) for c in runs_of])

    body = f"""
`python -m benchmarks.dispatch --counters-ab --n {n} --runs {runs}`: no-op bursts of
{n:,} steps (16 shards, batch_size {DispatchConfig().batch_size}) on one valkey-server, the
per-step counters on (the scripts as shipped) and off (`without_counters`: includes/stats.lua
with every count a no-op, the scripts as they were before counters), the order alternating
per run. Steps/s are this loaded 2-core machine's and move between runs; the ratio of
each run's pair is the figure.

| | value |
| --- | --- |
| median steps/s, counters on / off | {on:,.0f} / {off:,.0f} |
| ratio of the medians (on / off) | {on / off:.3f} |
| each run's ratio | {", ".join(f"{r:.3f}" for r in pairs)} (median {median(pairs):.3f}) |
| Redis commands per step, counters on / off (inside scripts included) | {per_step("on"):.3f} / {per_step("off"):.3f} |
| HINCRBY per step, counters on / off | {per_step("on", "hincrby"):.4f} / {per_step("off", "hincrby"):.4f} |
| memory of the counters of one sequence-day, all {SHARDS} shards (2 steps, {n:,} enrolled and sent) | {median(stats_bytes):,.0f} B |
"""  # noqa: E501
    record("dispatch: per-step counters on and off (issue 24)", body)


def contact_key(store: Store, cid: str) -> str:
    return store.keys.contact(ids.shard_of(cid, SHARDS), cid)


async def memory_of(client: aioredis.Redis, keys: list[str]) -> float:
    """Mean MEMORY USAGE of `keys` (bytes)."""
    sizes = [int(await client.memory_usage(k, samples=0) or 0) for k in keys]
    return sum(sizes) / len(sizes)


async def used_memory(client: aioredis.Redis) -> int:
    info = await client.info("memory")
    return int(info["used_memory"])


async def command_calls(client: aioredis.Redis) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def script_usec(client: aioredis.Redis) -> int:
    """Redis time spent in EVALSHA so far (µs), the scripts' inner commands included."""
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("usec", 0))


# -- measurements ----------------------------------------------------------------------------
async def burst(store: Store, senders: Any, n: int, config: DispatchConfig) -> float:
    """Steps/s for the real dispatcher loop to send and settle `n` due steps."""
    counting = Counting(n)
    dispatcher = Dispatcher(store, config, senders, observer=counting)
    started = time.perf_counter()
    dispatcher.start()
    await asyncio.wait_for(counting.done.wait(), 600)
    elapsed = time.perf_counter() - started
    await dispatcher.stop()
    return n / elapsed


async def floor_burst(store: Store, n: int, config: DispatchConfig, wait_ms: int) -> float:
    """Steps/s of the store alone, the floor under the dispatcher: the store calls the
    dispatcher makes for a step, batched and pipelined as it makes them, driven by a
    minimal loop with none of its engine Python (plans, compose, budgets, sending).

    As `Dispatcher.run_once` does: one poll (`peekDue` per shard), the due shards cut into
    batch-sized pieces (`cut_pieces`), `lanes` lanes taking them in turn; each lane's one
    round trip (`Trip`) advances the piece it settled last, leases the piece it peeked at
    last (`leasePeeked`, and the suppression reads of its addresses) and peeks at the next
    (`claimDue`, `batch_size` per shard), then marks the leased piece's sends started
    (`Dispatch.started`) and settles every step of it as sent (a `Sent`, `wait_ms` to its
    next step, its event built as the dispatcher builds it); a shard whose peek was full
    is the lane's next piece while the round is under `ROUND_MS` old."""
    dispatch = Dispatch(store)
    lease_ms = int(config.lease_seconds * 1000)
    attempts = config.max_attempts
    batch_size = config.batch_size
    done = 0

    async def lane(pieces: list[list[int]], now: int, started: int) -> None:
        nonlocal done
        owed: dict[int, list[Settled]] = {}
        claimed: dict[str, ClaimedEnrollment] = {}
        held: list[tuple[int, Claimed]] = []
        request: dict[int, dict[str, tuple[str, list[tuple[str, str]]]]] = {}
        lookups: dict[tuple[str, str], list[str]] = {}
        full: list[int] = []
        while True:
            shards = full if full and now_ms() - started < ROUND_MS else []
            if not shards and pieces:
                shards = pieces.pop()
            if not shards and not owed and not held:
                return
            trip = dispatch.trip(now=now_ms(), max_attempts=attempts)
            if owed:
                trip.advance(owed, claimed)
            lease = None
            if held:
                lease = trip.lease(request, lease_ms=lease_ms, worker="floor", lookups=lookups)
            peek = trip.peek(shards, now=now, limit=batch_size, on_unknown=config.on_unknown)
            await trip.run()
            done += sum(len(items) for items in owed.values())
            owed, claimed = {}, {}
            if lease is not None:
                lost = {eid for got in lease.leased.values() for eid in got.lost}
                tokens = {shard: [got.token] for shard, got in lease.leased.items()}
                at = now_ms()
                await dispatch.started(tokens, now=at, max_attempts=attempts)
                for shard, item in held:
                    if item.id in lost:
                        continue
                    e = item.enrollment
                    owed.setdefault(shard, []).append(
                        Sent(id=item.id, token=lease.leased[shard].token, step=int(e.index),
                             kind="sms", at=at, wait=wait_ms, provider_id="noop")
                    )  # fmt: skip
                    claimed[item.id] = e
            full = [shard for shard, got in peek.claims.items() if got.seen >= batch_size]
            held, request, lookups = [], {}, {}
            for shard, got in peek.claims.items():
                for item in got.items:
                    e = item.enrollment
                    held.append((shard, item))
                    queue = request.setdefault(shard, {}).get(e.sequence)
                    if queue is None:
                        queue = request[shard][e.sequence] = (got.m[e.sequence], [])
                    queue[1].append((item.id, e.token))
                    phone = item.contact.get("phone")
                    if phone:
                        lookups.setdefault((e.tenant, "sms"), []).append(phone)

    began = time.perf_counter()
    while done < n:
        now = now_ms()
        heads = await dispatch.heads(now)
        due = [(s, count) for s, (at, count) in enumerate(heads) if at is not None and at <= now]
        if not due:
            await asyncio.sleep(0.001)
            continue
        pieces = cut_pieces(due, batch_size)
        lanes = min(config.lanes, len(pieces))
        await asyncio.gather(*(lane(pieces, now, now) for _ in range(lanes)))
    return done / (time.perf_counter() - began)


async def bullmq_noop(url: str, n: int, concurrency: int) -> tuple[float, float]:
    """BullMQ draining `n` no-op jobs added in bulk beforehand, on the same server: (jobs/s,
    node's CPU µs per job); (nan, nan) without node."""
    if not bullmq_ready():
        return math.nan, math.nan
    port = url.rsplit(":", 1)[1].split("/")[0]
    done = await asyncio.create_subprocess_exec(
        "node", str(PEERS / "noop.js"), str(n), port, str(concurrency),
        stdout=asyncio.subprocess.PIPE, cwd=PEERS,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(done.communicate(), 600)
    got = json.loads(out.decode().strip().splitlines()[-1])
    return float(got["rate"]), float(got["cpu_us"])


async def seeded(
    store: Store, cids: list[str], rate: int, seconds: float, config: DispatchConfig
) -> list[float]:
    """Lateness (ms) of steps due at `rate` per second for `seconds`, enrolled beforehand.

    The dispatcher's own lateness: due times are spread as they are in production (each
    step due a wait after the last), and no enrollment competes with it for the process
    or for Redis while it is measured (`steady` measures that case).
    """
    seq = await new_sequence(store, f"seeded-{rate}", steps=1)
    tick = 5
    per_tick = max(1, int(rate * tick / 1000))
    ticks = int(seconds * 1000 / tick)
    count = min(len(cids), per_tick * ticks)
    start = int(time.time() * 1000) + 1500 + count // 20  # seeding takes ~1 s per 20,000
    due: dict[str, int] = {}
    for first in range(0, count, per_tick * 50):
        parts = [
            enroll_direct(store, seq.id, cids[k : k + per_tick], 0, start + (k // per_tick) * tick)
            for k in range(first, min(count, first + per_tick * 50), per_tick)
        ]
        for got in await asyncio.gather(*parts):
            due.update(got)
    if time.time() * 1000 > start:
        print(f"seeding ran past the first due time by {time.time() * 1000 - start:.0f} ms")
    sender = LatenessSender(due)
    dispatcher = Dispatcher(store, config, One(sender))
    dispatcher.start()
    await asyncio.sleep(max(0.0, start / 1000 - time.time()) + seconds + 1.0)
    await dispatcher.stop()
    return sender.late_ms


async def steady(
    store: Store,
    cids: list[str],
    rate: int,
    seconds: float,
    config: DispatchConfig,
    lead_ms: int = 1000,
) -> list[float]:
    """Lateness (ms) of steps due `lead_ms` after enrollment, enrolled at `rate` per second
    by this same process while the dispatcher runs (0: due at once, like a first step
    with no wait, which the loop learns of only at its next poll)."""
    seq = await new_sequence(store, f"steady-{lead_ms}", steps=1)
    due: dict[str, int] = {}
    sender = LatenessSender(due)
    dispatcher = Dispatcher(store, config, One(sender))
    dispatcher.start()
    tick = 0.02
    per_tick = max(1, int(rate * tick))
    started = time.perf_counter()
    position = 0
    ticks = int(seconds / tick)
    for k in range(ticks):
        batch = [cids[(position + j) % len(cids)] for j in range(per_tick)]
        position += per_tick
        due.update(await enroll_direct(store, seq.id, batch, lead_ms, int(time.time() * 1000)))
        pause = started + (k + 1) * tick - time.perf_counter()
        if pause > 0:
            await asyncio.sleep(pause)
    await asyncio.sleep(1.5)
    await dispatcher.stop()
    return sender.late_ms


def twilio_server(port: int) -> None:
    """A local server speaking Twilio's Messages API (runs in its own process)."""
    import itertools

    from aiohttp import web

    counter = itertools.count()

    async def messages(request: web.Request) -> web.Response:
        form = await request.post()
        if "To" not in form or "Body" not in form or not request.headers.get("Authorization"):
            return web.json_response({"code": 21604, "message": "bad request"}, status=400)
        sid = f"SM{next(counter):032x}"
        return web.json_response(
            {"sid": sid, "status": "queued", "to": form["To"], "body": form["Body"]}, status=201
        )

    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", messages)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def arq_noop(ctx: dict[str, Any]) -> None:
    """arq's job: nothing, like the no-op sink."""


async def arq_drain(url: str, n: int, max_jobs: int) -> float:
    """Jobs/s for an arq worker (burst mode) to drain `n` deferred no-op jobs."""
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker

    settings = RedisSettings.from_dsn(url.rsplit("/", 1)[0] + "/1")
    pool = await create_pool(settings)
    await pool.flushdb()
    now = time.time()
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(now, tz=UTC)
    for _ in range(n):
        await pool.enqueue_job("arq_noop", _defer_until=when)
    worker = Worker(
        functions=[arq_noop],  # type: ignore[list-item]
        redis_settings=settings,
        burst=True,
        max_jobs=max_jobs,
        handle_signals=False,
    )
    started = time.perf_counter()
    await worker.async_run()
    elapsed = time.perf_counter() - started
    done = worker.jobs_complete
    await worker.close()
    await pool.aclose()
    return done / elapsed


async def system_malloc_burst(n: int, config: DispatchConfig) -> tuple[float, float]:
    """The no-op burst on the server as the wheel builds it (the C library's malloc, no
    jemalloc preload): (steps/s, valkey CPU µs per step), the allocator's share."""
    workdir = Path(tempfile.mkdtemp(prefix="seqd-bench-libc-"))
    proc, url = start_valkey(workdir, jemalloc=False)
    try:
        store = await Store.open(connect(url, max_connections=256), PREFIX, SHARDS)
        cids = await make_contacts(store, n)
        seq = await new_sequence(store, "burst")
        await enroll_direct(store, seq.id, cids, 0, int(time.time() * 1000))
        before = cpu_seconds(proc.pid)
        rate = await burst(store, One(NoopSender()), n, config)
        cpu = (cpu_seconds(proc.pid) - before) / n * 1e6
        await store.close()
    finally:
        proc.terminate()
        proc.wait()
    return rate, cpu


async def once(
    n: int,
    rate: int,
    seconds: float,
    profiler: cProfile.Profile | None,
    arq_n: int,
    bullmq_concurrency: int,
) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
    """One run of every measurement: (figures, memory by structure, commands in the burst)."""
    workdir = Path(tempfile.mkdtemp(prefix="seqd-bench-dispatch-"))
    proc, url = start_valkey(workdir)
    twilio_port = free_port()
    twilio = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
        [sys.executable, "-m", "benchmarks.dispatch", "--twilio-server", str(twilio_port)]
    )
    try:
        client = connect(url, max_connections=256)
        store = await Store.open(client, PREFIX, SHARDS)
        config = DispatchConfig()
        low = max(1, rate // 2)
        cids = await make_contacts(store, n)

        # Memory per active enrollment: everything the enroll wrote, indexes included.
        seq = await new_sequence(store, "burst")
        sample = cids[:200]
        contacts_before = await memory_of(client, [contact_key(store, c) for c in sample])
        before = await used_memory(client)
        now = int(time.time() * 1000)
        enrolled = list(await enroll_direct(store, seq.id, cids, 0, now))
        after = await used_memory(client)
        parts = {
            "enrollment hash": await memory_of(
                client,
                [store.keys.enrollment(ids.shard_of(e, SHARDS), e) for e in enrolled[:200]],
            ),
            "sequence queue entry (time index and active listing)": sum(
                [await memory_of(client, [store.keys.queue(s, seq.id)]) for s in range(SHARDS)]
            )
            / n,
            "contact's `e:<seq>` field": await memory_of(
                client, [contact_key(store, c) for c in sample]
            )
            - contacts_before,
        }
        outbox = 0
        for shard in range(SHARDS):
            outbox += int(await client.memory_usage(store.keys.outbox(shard)) or 0)
        per_enrollment = (after - before) / n
        outbox_share = outbox / n
        # The outbox is trimmed once delivered (webhooks): the lasting cost is the rest.
        for shard in range(SHARDS):
            await client.delete(store.keys.outbox(shard))
        lasting = (await used_memory(client) - before) / n

        await client.config_resetstat()
        # Every call over 1 ms goes to the slow log: the longest one is how long a script
        # held Redis.
        await client.config_set("slowlog-log-slower-than", 1000)
        await client.config_set("slowlog-max-len", 100_000)
        await client.slowlog_reset()
        before_calls = await command_calls(client)
        before_usec = await script_usec(client)
        if profiler is not None:
            profiler.enable()
        redis_cpu, python_cpu = cpu_seconds(proc.pid), time.process_time()
        noop_rate = await burst(store, One(NoopSender()), n, config)
        redis_cpu, python_cpu = cpu_seconds(proc.pid) - redis_cpu, time.process_time() - python_cpu
        if profiler is not None:
            profiler.disable()
        calls = await command_calls(client)
        slow = [int(row["duration"]) for row in await client.slowlog_get(100_000)]
        await client.slowlog_reset()
        # The same enrollments after their first step: the hash now holds `ua`, `sm` and the
        # provider's id of the step (`p0`, "noop" here; a Twilio sid is 34 characters).
        for shard in range(SHARDS):
            await client.delete(store.keys.outbox(shard))
        after_step = (await used_memory(client) - before) / n
        lua_us = (await script_usec(client) - before_usec) / n
        delta = {k: v - before_calls.get(k, 0) for k, v in calls.items()}
        delta = {k: v for k, v in delta.items() if v > 0}
        per_step = sum(delta.values()) / n
        # Commands the process sends itself: every call is a script (the poll's peekDue too).
        round_trips = delta.get("evalsha", 0) / n

        seq_floor = await new_sequence(store, "floor")
        await enroll_direct(store, seq_floor.id, cids, 0, int(time.time() * 1000))
        floor_rate = await floor_burst(store, n, config, WAIT_MS)

        libc_rate, libc_cpu = await system_malloc_burst(n, config)

        from benchmarks.enroll import wait_port

        wait_port(twilio_port, twilio)
        seq2 = await new_sequence(store, "twilio")
        await enroll_direct(store, seq2.id, cids, 0, int(time.time() * 1000))
        from seqd.channels import registry

        twilio_config = Config(
            channels=ChannelsConfig(
                sms="twilio",
                twilio=TwilioConfig(
                    account_sid="AC" + "0" * 32,
                    auth_token="secret",
                    from_number="+14155550100",
                    base_url=f"http://127.0.0.1:{twilio_port}",
                ),
            )
        )
        senders = registry.build(twilio_config)
        try:
            twilio_rate = await burst(store, senders, n, config)
        finally:
            await senders.close()

        late_low = await seeded(store, cids, low, seconds, config)
        late_seeded = await seeded(store, cids, rate, seconds, config)
        late = await steady(store, cids, rate, seconds, config)
        late_now = await steady(store, cids, low, seconds, config, lead_ms=0)
        arq_rate = await arq_drain(url, arq_n, config.concurrency)
        bullmq_rate, _ = await bullmq_noop(url, n, bullmq_concurrency)
        await store.close()
    finally:
        twilio.terminate()
        twilio.wait()
        proc.terminate()
        proc.wait()

    low = max(1, rate // 2)
    figures = {
        "noop": noop_rate,
        "noop_libc": libc_rate,
        "redis_cpu_libc_us": libc_cpu,
        "twilio": twilio_rate,
        "low_p50": percentile(late_low, 50),
        "low_p99": percentile(late_low, 99),
        "rate_p50": percentile(late_seeded, 50),
        "rate_p99": percentile(late_seeded, 99),
        "live_p50": percentile(late, 50),
        "live_p99": percentile(late, 99),
        "now_p50": percentile(late_now, 50),
        "now_p99": percentile(late_now, 99),
        "lasting": lasting,
        "after_step": after_step,
        "per_enrollment": per_enrollment,
        "outbox": outbox_share,
        "per_step": per_step,
        "lua_us": lua_us,
        "redis_cpu_us": redis_cpu / n * 1e6,
        "python_cpu_us": python_cpu / n * 1e6,
        "round_trips": round_trips,
        "longest_ms": max(slow, default=0) / 1000,
        "arq": arq_rate,
        "ratio": noop_rate / arq_rate,
        "floor": floor_rate,
        "floor_ratio": noop_rate / floor_rate,
        "bullmq": bullmq_rate,
        "bullmq_ratio": noop_rate / bullmq_rate,
    }
    return figures, parts, delta


# What a `--conditions` / `--variants` burst's steps carry: (conditions, variants).
REACTING = {
    "plain": (False, False),
    "conditions": (True, False),
    "variants": (False, True),
    "conditions + variants": (True, True),
}


async def reacting_burst(store: Store, n: int, name: str, pid: int) -> tuple[float, float, float]:
    """The dispatcher loop sending and settling the two steps of `n` new contacts'
    enrollments, both due at once (the second's conditions read the first's outcome), the
    steps carrying what REACTING[name] says: steps/s, CPU µs per step of this process and
    of valkey `pid`."""
    conditional, variants = REACTING[name]
    cids = await make_contacts(store, n)
    seq = await new_sequence(store, name, conditions=conditional, variants=variants, later_wait=0)
    await enroll_direct(store, seq.id, cids, 0, int(time.time() * 1000))
    steps = 2 * len(cids)
    redis_cpu, python_cpu = cpu_seconds(pid), time.process_time()
    rate = await burst(store, One(NoopSender()), steps, DispatchConfig())
    python_us = (time.process_time() - python_cpu) / steps * 1e6
    return rate, python_us, (cpu_seconds(pid) - redis_cpu) / steps * 1e6


async def reacting_main(n: int, runs: int) -> None:
    """Plain bursts and bursts with conditions, variants and both on every step, in turn
    (the order rotates each run); each kind's ratios to the same run's plain burst. Each
    run has a fresh valkey-server, warmed by an uncounted burst, so no run pays for the
    data (and AOF rewrites) of the ones before it."""
    got: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    names = list(REACTING)
    for k in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            proc, url = start_valkey(Path(tmp))
            try:
                store = await Store.open(connect(url, max_connections=256), PREFIX, SHARDS)
                await reacting_burst(store, n // 5, "conditions + variants", proc.pid)
                for name in names[k % 4 :] + names[: k % 4]:
                    got[name].append(await reacting_burst(store, n, name, proc.pid))
                await store.close()
            finally:
                proc.terminate()
                proc.wait()
        print(
            f"run {k + 1}/{runs}: "
            + ", ".join(
                f"{name} {got[name][-1][0]:,.0f}/s ({got[name][-1][1]:.1f} + "
                f"{got[name][-1][2]:.1f} µs)"
                for name in names
            )
        )

    def ratio(name: str, i: int) -> float:
        return median([a[i] / b[i] for a, b in zip(got[name], got["plain"], strict=True)])

    rows = "\n".join(
        f"| {name} | {median([g[0] for g in got[name]]):,.0f} | {ratio(name, 0):.3f} | "
        f"{median([g[1] for g in got[name]]):.1f} µs | {ratio(name, 1):.3f} | "
        f"{median([g[2] for g in got[name]]):.1f} µs | {ratio(name, 2):.3f} |"
        for name in names
    )
    each = ", ".join(f"{a[0] / b[0]:.2f}" for a, b in zip(got[names[3]], got["plain"], strict=True))
    record(
        "dispatch: conditions and A/B variants on every step (issue 22)",
        f"""
`python -m benchmarks.dispatch --conditions --variants --n {n} --runs {runs}` (through the
benchmark wrapper: one benchmark at a time, everything else on the machine at nice 19).
CPU: {cpu_model()}, {os.cpu_count()} cores. N = {n:,} enrollments due at once per burst,
each with two SMS steps due one after the other (2N steps a burst), {SHARDS} shards,
default dispatch settings, a no-op sink, the real dispatcher loop. {runs} runs, each on a
fresh valkey-server (AOF everysec) warmed by an uncounted burst of N/5, sending one burst
of each kind in an order that rotates from run to run; medians, and each ratio is the median of the runs' own ratios to the
same run's plain burst. Conditions: `only_if` over a contact field and an attribute (on
the second step also the first step's outcome, `{{"step": 0, "is": "sent"}}`) and `skip_if`
over the enrollment's metadata, all holding, so the same steps are sent. Variants: two
A/B variants, weight 50 each, on every step (picked by BLAKE2b of enrollment id and step,
recorded as `v<step>`).

| steps carry | steps/s | ratio to plain | CPU per step, this process | ratio | CPU per step, valkey-server | ratio |
| --- | --- | --- | --- | --- | --- | --- |
{rows}

Steps/s ratio of conditions + variants to plain, each run: {each}.
""",  # noqa: E501
    )


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main(
    n: int, rate: int, seconds: float, profile: bool, arq_n: int, runs: int, bullmq_concurrency: int
) -> None:
    profiler = cProfile.Profile() if profile else None
    results = []
    for k in range(runs):
        results.append(
            await once(n, rate, seconds, profiler if k == 0 else None, arq_n, bullmq_concurrency)
        )
        print(
            f"run {k + 1}/{runs}: " + ", ".join(f"{a} {b:,.1f}" for a, b in results[-1][0].items())
        )
    f = {key: median([r[0][key] for r in results]) for key in results[0][0]}
    parts = {key: median([r[1][key] for r in results]) for key in results[0][1]}
    delta = results[0][2]
    config = DispatchConfig()
    low = max(1, rate // 2)
    rn = f"{runs} runs, medians (the arq ratio: the median of each run's own)"
    if runs == 1:
        rn = "one run"

    def mark(ok: bool) -> str:
        return "met" if ok else "**not met**"

    top = sorted(delta.items(), key=lambda kv: -kv[1])[:8]
    _, allocator = server_env(find_binary())
    breakdown = ", ".join(f"{name} {size:.0f} B" for name, size in parts.items())
    body = f"""
N = {n:,} enrollments due at once, {SHARDS} shards, batch_size {config.batch_size},
concurrency {config.concurrency}, lanes {config.lanes}; a dedicated valkey-server with AOF
on (everysec), started as `seqd serve` starts its embedded one (allocator: {allocator}),
and the benchmark process on this machine (CPU: {cpu_model()}, {os.cpu_count()} cores).
{rn}.
Lateness "spread" = steps enrolled beforehand with due times spread at that rate (the
dispatcher's own lateness); "meanwhile" = this process enrolls while it dispatches.

| figure | value | target |
| --- | --- | --- |
| steps/s, no-op sink | {f["noop"]:,.0f} | {TARGET_STEPS:,} ({mark(f["noop"] >= TARGET_STEPS)}) |
| scripts-only floor (the store calls the dispatcher makes, batched and pipelined as it makes them, no engine Python: `floor_burst`): steps/s | {f["floor"]:,.0f} | |
| ratio seqd no-op / floor (median of each run's own) | {f["floor_ratio"]:.2f} | {TARGET_FLOOR} ({mark(f["floor_ratio"] >= TARGET_FLOOR)}) |
| BullMQ: {n:,} no-op jobs added in bulk, drained (concurrency {bullmq_concurrency}) | {f["bullmq"]:,.0f} jobs/s | |
| ratio seqd no-op / BullMQ (median of each run's own) | {f["bullmq_ratio"]:.1f}x | {TARGET_BULLMQ:.0f}x ({mark(f["bullmq_ratio"] >= TARGET_BULLMQ)}) |
| steps/s, no-op sink, the same server on the C library's malloc (no preload) | {f["noop_libc"]:,.0f} (valkey CPU {f["redis_cpu_libc_us"]:.1f} µs/step) | |
| steps/s, `twilio` channel against a local Messages API server | {f["twilio"]:,.0f} | |
| lateness p50 / p99, due times spread at {low:,} steps/s | {f["low_p50"]:.1f} ms / {f["low_p99"]:.1f} ms | p99 < {TARGET_P99_MS} ms ({mark(f["low_p99"] < TARGET_P99_MS)}) |
| lateness p50 / p99, due times spread at {rate:,} steps/s | {f["rate_p50"]:.1f} ms / {f["rate_p99"]:.1f} ms | p99 < {TARGET_P99_MS} ms ({mark(f["rate_p99"] < TARGET_P99_MS)}) |
| lateness p50 / p99 at {rate:,} steps/s, due 1 s after enrollment, enrolled meanwhile | {f["live_p50"]:.1f} ms / {f["live_p99"]:.1f} ms | |
| lateness p50 / p99 at {low:,} steps/s, due at enrollment (no wait), enrolled meanwhile (`idle_poll_ms` {config.idle_poll_ms}) | {f["now_p50"]:.1f} ms / {f["now_p99"]:.1f} ms | |
| Redis memory per active enrollment, lasting (outbox trimmed) | {f["lasting"]:.0f} B | {TARGET_BYTES} B ({mark(f["lasting"] <= TARGET_BYTES)}) |
| Redis memory per active enrollment after its first step (outbox trimmed; provider id "noop") | {f["after_step"]:.0f} B | |
| Redis memory per enrollment right after enroll, outbox event included | {f["per_enrollment"]:.0f} B (outbox {f["outbox"]:.0f} B) | |
| Redis commands per step (inside scripts included) | {f["per_step"]:.1f} | |
| Redis time in scripts per step (EVALSHA usec, peek + lease + advance) | {f["lua_us"]:.1f} µs | |
| CPU per step in the no-op burst: valkey-server / benchmark process | {f["redis_cpu_us"]:.1f} µs / {f["python_cpu_us"]:.1f} µs | |
| longest script call in the no-op burst (SLOWLOG) | {f["longest_ms"]:.1f} ms | a few ms |
| Redis commands the process sends per step (EVALSHA: peek, lease, advance, the poll's peekDue) | {f["round_trips"]:.3f} | |
| arq: {arq_n:,} deferred no-op jobs drained (max_jobs {config.concurrency}) | {f["arq"]:,.0f} jobs/s | |
| ratio seqd no-op / arq | {f["ratio"]:.1f}x | |

Memory per active enrollment by structure (MEMORY USAGE): {breakdown}.

Commands in the no-op burst (first run), most called: {", ".join(f"`{k}` {v / n:.2f}/step" for k, v in top)}.
"""  # noqa: E501
    record("dispatch", body)
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        print(out.getvalue())


async def compare_main(n: int, runs: int, bullmq_concurrency: int) -> None:
    """The no-op burst, the scripts-only floor and BullMQ's no-op drain on one valkey-server,
    interleaved (the order turning per run), with each one's CPU per step."""
    kinds = ["seqd", "floor", "bullmq"] if bullmq_ready() else ["seqd", "floor"]
    got: dict[str, list[tuple[float, float, float]]] = {k: [] for k in kinds}
    config = DispatchConfig()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_valkey(Path(tmp))
        try:
            store = await Store.open(connect(url, max_connections=256), PREFIX, SHARDS)
            cids = await make_contacts(store, n)
            for k in range(runs):
                for kind in kinds[k % len(kinds) :] + kinds[: k % len(kinds)]:
                    if kind == "bullmq":
                        valkey = cpu_seconds(proc.pid)
                        rate, own = await bullmq_noop(url, n, bullmq_concurrency)
                        # (The valkey figure includes the jobs' bulk add.)
                        got[kind].append((rate, own, (cpu_seconds(proc.pid) - valkey) / n * 1e6))
                        continue
                    seq = await new_sequence(store, f"{kind}{k}")
                    await enroll_direct(store, seq.id, cids, 0, int(time.time() * 1000))
                    valkey, python = cpu_seconds(proc.pid), time.process_time()
                    if kind == "seqd":
                        rate = await burst(store, One(NoopSender()), n, config)
                    else:
                        rate = await floor_burst(store, n, config, WAIT_MS)
                    got[kind].append((
                        rate,
                        (time.process_time() - python) / n * 1e6,
                        (cpu_seconds(proc.pid) - valkey) / n * 1e6,
                    ))  # fmt: skip
                each = ", ".join(f"{x} {got[x][-1][0]:,.0f}/s" for x in kinds)
                print(f"run {k + 1}/{runs}: {each}")
            await store.close()
        finally:
            proc.terminate()
            proc.wait()

    def ratio(peer: str) -> tuple[float, str]:
        each = [a[0] / b[0] for a, b in zip(got["seqd"], got[peer], strict=True)]
        return median(each), ", ".join(f"{r:.2f}" for r in each)

    def cpu(kind: str) -> float:
        """Median CPU per step, its own process and valkey together (µs)."""
        return median([r[1] + r[2] for r in got[kind]])

    rows = []
    for kind in kinds:
        rates = " / ".join(f"{r[0]:,.0f}" for r in got[kind])
        own = median([r[1] for r in got[kind]])
        valkey = median([r[2] for r in got[kind]])
        middle = median([r[0] for r in got[kind]])
        rows.append(
            f"| {kind} | {middle:,.0f} | {rates} | {own:.1f} | {valkey:.1f} | {cpu(kind):.1f} |"
        )
    floor, floor_each = ratio("floor")
    lines = [
        f"- seqd / floor: {floor:.2f} (per run: {floor_each}); target >= {TARGET_FLOOR}; "
        f"by CPU per step (the floor's / seqd's, own + valkey): {cpu('floor') / cpu('seqd'):.2f}"
    ]
    if "bullmq" in got:
        bull, bull_each = ratio("bullmq")
        lines.append(
            f"- seqd / BullMQ: {bull:.1f}x (per run: {bull_each}); target >= "
            f"{TARGET_BULLMQ:.0f}x; by CPU per step: {cpu('bullmq') / cpu('seqd'):.1f}x"
        )
    body = f"""
`python -m benchmarks.dispatch --compare --n {n} --runs {runs} --bullmq-concurrency {bullmq_concurrency}`
on CPU: {cpu_model()}, {os.cpu_count()} cores. N = {n:,} steps due at once per run, on one
valkey-server (AOF everysec, as `seqd serve` starts it), the kinds interleaved, the order
turning per run; medians, and the ratio as the median of each run's own.

- **seqd**: the real dispatcher loop (`Dispatcher.start()`, default settings: batch_size
  {config.batch_size}, lanes {config.lanes}) sending the first step of a two-step SMS
  sequence into a no-op sink;
- **floor**: the store alone: the store calls the dispatcher makes, batched and pipelined
  as it makes them (batch_size {config.batch_size} per shard, {config.lanes} lanes, each
  round trip advancing one piece, leasing and screening the next and peeking at the one
  after, then the sends' start marked), driven by a minimal loop that settles every
  leased step as sent: none of the engine's Python (plans, compose, budgets, sending);
- **bullmq**: BullMQ (Node.js) draining N no-op jobs added in bulk beforehand, concurrency
  {bullmq_concurrency} (its own CPU: node's; valkey's includes the bulk add).

| kind | steps/s (median) | runs | own CPU µs/step | valkey CPU µs/step | both |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

{chr(10).join(lines)}
"""  # noqa: E501
    record("dispatch: seqd against the scripts-only floor and BullMQ", body)


def cli() -> None:
    # The collector schedule `seqd` sets at start: seqd's code in this process runs as in seqd.
    collector.tune()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=4_000, help="steady load, steps/s")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--arq-n", type=int, default=None, help="arq jobs (default: --n)")
    parser.add_argument("--runs", type=int, default=3, help="whole runs; medians are reported")
    parser.add_argument("--profile", action="store_true", help="cProfile the first no-op burst")
    parser.add_argument(
        "--counters-ab",
        action="store_true",
        help="only no-op bursts with the per-step counters on and off, interleaved",
    )
    parser.add_argument("--twilio-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--bullmq-concurrency",
        type=int,
        default=256,
        help="BullMQ worker concurrency (256: seqd's send concurrency; faster than 100 here)",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="only the no-op burst, the scripts-only floor and BullMQ, interleaved",
    )
    parser.add_argument(
        "--variants",
        action="store_true",
        help="only bursts of plain steps and of steps with conditions, A/B variants and both",
    )
    parser.add_argument("--conditions", action="store_true", help="the same as --variants")
    args = parser.parse_args()
    if args.twilio_server:
        twilio_server(args.twilio_server)
        return
    import uvloop

    if args.counters_ab:
        uvloop.run(counters_ab(args.n, args.runs))
        return
    if args.variants or args.conditions:
        uvloop.run(reacting_main(args.n, args.runs))
        return

    if args.compare:
        uvloop.run(compare_main(args.n, args.runs, args.bullmq_concurrency))
        return
    uvloop.run(
        main(
            args.n, args.rate, args.seconds, args.profile, args.arq_n or args.n, args.runs,
            args.bullmq_concurrency,
        )
    )  # fmt: skip


if __name__ == "__main__":
    cli()
