"""Instructions per dispatched step, counted by callgrind: a figure the shared machine's noise
does not move.

`python -m benchmarks.instructions` runs a no-op burst (the dispatch benchmark's, smaller)
with valkey-server and the dispatching process both under `valgrind --tool=callgrind`,
counting only from the burst's start to its end, and writes the counts per step to
`benchmarks/RESULTS.md`. Wall-clock rates on this machine moved by a factor of two within
minutes for the same code; instruction counts repeat to about 0.1 %, so a change to the
burst path can be judged by them first (then by the rate, over interleaved runs). They
count work, not time: cache misses and waiting are not in them.

Needs `valgrind` (and its `callgrind_control`) on the PATH.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks.results import median, record
from seqd.config import DispatchConfig


def _vgdb(out: str) -> str:
    """The vgdb prefix of one counted run's two callgrind processes: their own, so that
    `callgrind_control` reaches only them, and another run's (someone else's benchmark on a
    shared machine) neither zeroes nor switches off this one's counting."""
    return f"--vgdb-prefix={out}/vgdb"


def _control(out: str, *args: str) -> None:
    # Without a pid it acts on every callgrind run of the prefix: valkey's and this process's.
    subprocess.run(["callgrind_control", _vgdb(out), *args], capture_output=True, check=False)


def _total(pattern: str) -> int:
    """The largest `totals:` line of the dump files matching `pattern` (the burst's)."""
    best = 0
    for path in glob.glob(pattern):
        with open(path, errors="replace") as dump:
            for line in dump:
                if line.startswith("totals:"):
                    best = max(best, int(line.split()[1]))
    return best


def _server(out: str) -> tuple[subprocess.Popen[bytes], int]:
    """valkey-server as `seqd serve` starts it (allocator preload included), under callgrind
    with counting off until the burst."""
    import redis

    from benchmarks.dispatch import free_port
    from seqd.embedded import find_binary, server_env

    binary = find_binary()
    env, _ = server_env(binary, True)
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="seqd-bench-instr-")
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}/valkey.%p",
        _vgdb(out),
        binary,
        *("--port", str(port), "--bind", "127.0.0.1", "--dir", workdir, "--save", ""),
        *("--appendonly", "yes", "--appendfsync", "everysec"),
        *("--logfile", f"{workdir}/valkey.log"),
    ]
    quiet = subprocess.DEVNULL
    server = subprocess.Popen(command, env=env, stdout=quiet, stderr=quiet)
    deadline = time.monotonic() + 60
    while True:
        try:
            redis.Redis(port=port).ping()
            return server, port
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                server.terminate()
                raise
            time.sleep(0.1)


async def _burst(out: str, port: int, n: int, lanes: int, counters: bool = True) -> None:
    """Seed `n` due steps, then count the burst that sends them."""
    from benchmarks.dispatch import (
        PREFIX,
        SHARDS,
        NoopSender,
        One,
        burst,
        enroll_direct,
        make_contacts,
        new_sequence,
        without_counters,
    )
    from seqd.config import DispatchConfig
    from seqd.store.db import Store, connect

    # Slow under valgrind: generous timeouts.
    client = connect(f"redis://127.0.0.1:{port}/0", max_connections=256, socket_timeout=60)
    store = await Store.open(client, PREFIX, SHARDS)
    cids = await make_contacts(store, n)
    seq = await new_sequence(store, "instructions")
    await enroll_direct(store, seq.id, cids, 0, int(time.time() * 1000))
    switch = contextlib.nullcontext() if counters else without_counters()
    with switch:
        await store.runner.load_all()  # (not a NOSCRIPT and a compile in the count)
        _control(out, "-i", "on")
        _control(out, "-z")
        await burst(store, One(NoopSender()), n, DispatchConfig(lanes=lanes))
    _control(out, "-i", "off")
    _control(out, "-d")
    await store.close()


def _run(n: int, lanes: int, counters: bool = True) -> dict[str, float]:
    """One counted burst: instructions per step of valkey and of the dispatching process."""
    with tempfile.TemporaryDirectory(prefix="seqd-callgrind-") as out:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}/process.%p",
            _vgdb(out),
            sys.executable,
            "-m",
            "benchmarks.instructions",
            "--child",
            out,
            "--n",
            str(n),
            "--lanes",
            str(lanes),
            *([] if counters else ["--no-counters"]),
        ]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return {
            "valkey": _total(f"{out}/valkey.*") / n,
            "process": _total(f"{out}/process.*") / n,
        }


def main(n: int, lanes: int, runs: int) -> None:
    counts = []
    for k in range(runs):
        counts.append(_run(n, lanes))
        print(f"run {k + 1}/{runs}: " + json.dumps({a: round(b) for a, b in counts[-1].items()}))
    valkey = median([c["valkey"] for c in counts])
    process = median([c["process"] for c in counts])
    body = f"""
A no-op burst of {n:,} steps (16 shards, batch_size 200, lanes {lanes}) with valkey-server
(AOF everysec) and the dispatching process both under callgrind, counted from the burst's
start to its end; {runs} runs, medians (they repeat to about 0.1 %). Work, not time: cache
misses and waits are not in them.

| instructions per step | count |
| --- | --- |
| valkey-server (the peek, lease and advance scripts, the AOF) | {valkey:,.0f} |
| the dispatching process (Python) | {process:,.0f} |
"""
    record("instructions", body)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="steps in the counted burst")
    parser.add_argument("--lanes", type=int, default=DispatchConfig().lanes)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--no-counters", action="store_true", help="the per-step counters switched off"
    )
    parser.add_argument(
        "--counters-ab", action="store_true", help="runs with counters on and off, alternated"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        # Under callgrind (from _run): start valkey under it too, and count the burst.
        import uvloop

        from seqd import collector

        collector.tune()
        server, port = _server(args.child)
        try:
            uvloop.run(_burst(args.child, port, args.n, args.lanes, not args.no_counters))
        finally:
            server.terminate()
            server.wait()
        return
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("benchmarks.instructions needs valgrind and callgrind_control on the PATH")
        raise SystemExit(2)
    if args.counters_ab:
        counters_ab(args.n, args.lanes, args.runs)
        return
    main(args.n, args.lanes, args.runs)


def counters_ab(n: int, lanes: int, runs: int) -> None:
    """Instructions per step with the per-step counters on and off, runs alternated."""
    counts: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for k in range(runs):
        for counters in (True, False) if k % 2 == 0 else (False, True):
            counts[counters].append(_run(n, lanes, counters))
            got = {a: round(b) for a, b in counts[counters][-1].items()}
            print(f"run {k + 1}/{runs}, counters {'on' if counters else 'off'}: {json.dumps(got)}")
    rows = []
    for part, what in (("valkey", "valkey-server"), ("process", "the dispatching process")):
        on = median([c[part] for c in counts[True]])
        off = median([c[part] for c in counts[False]])
        rows.append(f"| {what} | {on:,.0f} | {off:,.0f} | {on / off:.4f} |")
    table = "\n".join(rows)
    body = f"""
`python -m benchmarks.instructions --counters-ab --n {n} --runs {runs}`: the counted no-op
burst of {n:,} steps with the per-step counters on and off (`dispatch.without_counters`),
runs alternated; medians.

| instructions per step | counters on | off | ratio |
| --- | --- | --- | --- |
{table}
"""
    record("instructions: per-step counters on and off (issue 24)", body)


if __name__ == "__main__":
    cli()
