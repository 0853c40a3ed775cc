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
import asyncio
import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks.results import median, record
from seqd.config import DispatchConfig

# The processes counted: this one and its valkey-server (set by the child). Without pids,
# callgrind_control acts on every callgrind run of the machine, other users' included.
_COUNTED: list[int] = []


def _control(*args: str) -> None:
    for pid in _COUNTED or [None]:
        target = [] if pid is None else [str(pid)]
        subprocess.run(["callgrind_control", *args, *target], capture_output=True, check=False)


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


# Bursts under sending rules (`--rules`; benchmarks/rules.py describes them): none (the plain
# burst), off (benchmarks.rules' "off" drain), on (schedule, quiet hours, 16 senders),
# closed (every step deferred by a closed window), open (the same, window open: sent);
# no_counters: the plain burst with the per-step counters off (`dispatch.without_counters`).
RULES = ("none", "off", "on", "closed", "open", "no_counters")
PLAIN = ("none", "no_counters")
# Bursts of a two-step sequence with both steps due at once (n/2 enrollments, n steps; the
# second step's conditions read the first's outcome), its steps carrying what
# `dispatch.REACTING` names: plain2 neither, then conditions, variants, or both (reacting).
REACTING_MODES = {
    "plain2": "plain",
    "conditions": "conditions",
    "variants": "variants",
    "reacting": "conditions + variants",
}


async def _burst(port: int, n: int, lanes: int, rules_mode: str = "none") -> None:
    """Seed `n` due steps, then count the burst that sends them."""
    from benchmarks import rules
    from benchmarks.dispatch import (
        PREFIX,
        REACTING,
        SHARDS,
        Counting,
        NoopSender,
        One,
        burst,
        enroll_direct,
        make_contacts,
        new_sequence,
        without_counters,
    )
    from seqd.config import ComplianceConfig, Config, DispatchConfig, SmsQuietHours
    from seqd.engine.dispatcher import Dispatcher
    from seqd.store.db import Store, connect
    from seqd.timing.policy import Policy

    # Slow under valgrind: generous timeouts.
    client = connect(f"redis://127.0.0.1:{port}/0", max_connections=256, socket_timeout=60)
    store = await Store.open(client, PREFIX, SHARDS)
    config = DispatchConfig(lanes=lanes)
    policy = None
    if rules_mode in PLAIN:
        cids = await make_contacts(store, n)
        seq_id = (await new_sequence(store, "instructions")).id
    elif rules_mode in REACTING_MODES:
        conditional, variants = REACTING[REACTING_MODES[rules_mode]]
        cids = await make_contacts(store, n // 2)
        seq = await new_sequence(
            store, rules_mode, conditions=conditional, variants=variants, later_wait=0
        )
        seq_id = seq.id
    else:
        cids = await make_contacts(store, n, ("timezone", rules.midday_zone()))
        always = {d: [["00:00", "24:00"]] for d in rules.DAYS}
        windows = {
            "off": None,
            "on": always,
            "closed": {d: [["15:00", "16:00"]] for d in rules.DAYS},
            "open": always,
        }[rules_mode]
        pool = await rules.senders(store) if rules_mode == "on" else []
        seq_id = await rules.sequence(store, rules_mode, windows, pool)
        quiet = SmsQuietHours(enabled=rules_mode != "off")
        policy = Policy(Config(compliance=ComplianceConfig(sms_quiet_hours=quiet)))
    await enroll_direct(store, seq_id, cids, 0, int(time.time() * 1000))
    switch = without_counters() if rules_mode == "no_counters" else contextlib.nullcontext()
    with switch:
        await store.runner.load_all()  # (not a NOSCRIPT and a compile in the count)
        _control("-i", "on")
        _control("-z")
        if policy is None:
            await burst(store, One(NoopSender()), n, config)
        else:
            counting = Counting(n)
            dispatcher = Dispatcher(
                store, config, One(NoopSender()), observer=counting, policy=policy
            )
            dispatcher.start()
            await asyncio.wait_for(counting.done.wait(), 3600)
            await dispatcher.stop()
    _control("-i", "off")
    _control("-d")
    await store.close()


def _run(n: int, lanes: int, rules_mode: str = "none") -> dict[str, float]:
    """One counted burst: instructions per step of valkey and of the dispatching process."""
    with tempfile.TemporaryDirectory(prefix="seqd-callgrind-") as out:
        command = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}/process.%p",
            sys.executable,
            "-m",
            "benchmarks.instructions",
            "--child",
            out,
            "--n",
            str(n),
            "--lanes",
            str(lanes),
            "--rules",
            rules_mode,
        ]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return {
            "valkey": _total(f"{out}/valkey.*") / n,
            "process": _total(f"{out}/process.*") / n,
        }


def compare(n: int, lanes: int, runs: int, modes: list[str]) -> None:
    """Interleaved counted bursts of `modes` (RULES), printed per run and as medians."""
    counts: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for k in range(runs):
        for mode in modes:
            counts[mode].append(_run(n, lanes, mode))
            got = {a: round(b) for a, b in counts[mode][-1].items()}
            print(f"run {k + 1}/{runs} {mode}: " + json.dumps(got))
    for mode in modes:
        valkey = median([c["valkey"] for c in counts[mode]])
        process = median([c["process"] for c in counts[mode]])
        print(f"{mode}: valkey {valkey:,.0f}, process {process:,.0f} instructions per step")


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
        "--rules",
        default="none",
        help="bursts under sending rules or with conditions / A/B variants, comma-separated, "
        f"counted in turn and printed (not recorded): {', '.join((*RULES, *REACTING_MODES))}",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        # Under callgrind (from _run): start valkey under it too, and count the burst.
        import uvloop

        from seqd import collector

        collector.tune()
        server, port = _server(args.child)
        _COUNTED[:] = [os.getpid(), server.pid]
        try:
            uvloop.run(_burst(port, args.n, args.lanes, args.rules))
        finally:
            server.terminate()
            server.wait()
        return
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("benchmarks.instructions needs valgrind and callgrind_control on the PATH")
        raise SystemExit(2)
    if args.rules != "none":
        compare(args.n, args.lanes, args.runs, args.rules.split(","))
        return
    main(args.n, args.lanes, args.runs)


if __name__ == "__main__":
    cli()
