"""valkey's instructions per step of each script call a dispatched step makes, call by call.

    python -m benchmarks.script_costs [--base <rev>] [--rounds 3] [--n 3000] [--shape middle]

benchmarks.completion counts a whole burst of the real dispatcher loop, whose pieces, polls
and pipelines vary with timing (its counts moved by about 10 % between runs here). This one
makes the same store calls one at a time on a fresh valkey-server (AOF everysec) under
`valgrind --tool=callgrind`, counting only while a call runs, and sums them per kind: per
due shard, `claimDue` (the peek, `batch_size` members), `leasePeeked` with the suppression
reads of the leased addresses, the sends' start mark, and `advance` settling every step as
sent (a `Sent` with the step's event built as the dispatcher builds it); until all `n` steps
went. `--shape middle`: a two-step sequence (each step schedules the next); `last`: a
one-step one (each step completes its enrollment). Counts are instructions of valkey-server
per step, the call's parsing, Lua, commands, reply and AOF feed included.

With `--base`, the same run of that commit (a temporary git worktree, its own code first on
PYTHONPATH) alternates with this checkout's, round by round.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from benchmarks.compare import checkouts, head_rev, run_in
from benchmarks.completion import SERVER
from benchmarks.results import cpu_model, median, record

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {"last": 1, "middle": 2}
PHASES = ("claimDue", "leasePeeked", "started", "advance")

# Run inside each side's process, with only names the store and benchmarks.dispatch have
# had since 3c45250 (SERVER: benchmarks.completion).
RUN = (
    SERVER
    + """
from seqd.store.dispatch import Dispatch
from seqd.store.settles import Sent

PHASES = ("claimDue", "leasePeeked", "started", "advance")

def totals(path):
    best = 0
    for line in open(path, errors="replace"):
        if line.startswith(("totals:", "summary:")):
            best = max(best, int(line.split()[1]))
    return best

async def run(n, steps):
    workdir = tempfile.mkdtemp(prefix="seqd-script-costs-")
    proc, url = server(workdir, True)
    counted = dict.fromkeys(PHASES, 0)
    dumps = []

    async def measured(phase, calls):
        # One toggle and dump per kind of call and round: callgrind_control is slow.
        control(proc.pid, "-i", "on")
        results = [await call for call in calls]
        control(proc.pid, "-i", "off")
        control(proc.pid, "-d")
        dumps.append(phase)
        return results

    try:
        client = d.connect(url, max_connections=64, socket_timeout=600)
        store = await d.Store.open(client, d.PREFIX, d.SHARDS)
        cids = await d.make_contacts(store, n)
        seq = await d.new_sequence(store, "costs", steps=steps)
        await d.enroll_direct(store, seq.id, cids, 0, d.now_ms())
        await store.runner.load_all()
        dispatch, config = Dispatch(store), d.DispatchConfig()
        attempts, wait = config.max_attempts, 86_400_000 if steps > 1 else -1
        done = 0
        while done < n:
            now = d.now_ms()
            heads = await dispatch.heads(now)
            due = [s for s, (at, _) in enumerate(heads) if at is not None and at <= now]
            trips = [dispatch.trip(now=now, max_attempts=attempts) for _ in due]
            peeks = [trip.peek([shard], now=now, limit=config.batch_size,
                               on_unknown=config.on_unknown) for trip, shard in zip(trips, due)]
            await measured("claimDue", [trip.run() for trip in trips])
            pieces = [(shard, peek.claims[shard]) for shard, peek in zip(due, peeks)
                      if peek.claims[shard].items]
            trips, leases = [], []
            for shard, got in pieces:
                request, lookups = {shard: {}}, {}
                for item in got.items:
                    e = item.enrollment
                    request[shard].setdefault(e.sequence, (got.m[e.sequence], []))[1].append(
                        (item.id, e.token))
                    if item.contact.get("phone"):
                        lookups.setdefault((e.tenant, "sms"), []).append(item.contact["phone"])
                trips.append(dispatch.trip(now=d.now_ms(), max_attempts=attempts))
                leases.append(trips[-1].lease(request, worker="costs", lookups=lookups,
                                              lease_ms=int(config.lease_seconds * 1000)))
            await measured("leasePeeked", [trip.run() for trip in trips])
            tokens = [lease.leased[shard].token for (shard, _), lease in zip(pieces, leases)]
            at = d.now_ms()
            await measured("started", [dispatch.started({shard: [token]}, now=at)
                                       for (shard, _), token in zip(pieces, tokens)])
            trips = []
            for (shard, got), token in zip(pieces, tokens):
                owed = {shard: [Sent(id=i.id, token=token, step=int(i.enrollment.index),
                                     kind="sms", at=at, wait=wait, provider_id="noop")
                                for i in got.items]}
                trips.append(dispatch.trip(now=d.now_ms(), max_attempts=attempts))
                trips[-1].advance(owed, {i.id: i.enrollment for i in got.items})
                done += len(got.items)
            await measured("advance", [trip.run() for trip in trips])
        await store.close()
    finally:
        proc.terminate()
        proc.wait()
    files = sorted(glob.glob(workdir + "/callgrind.*.*"), key=lambda p: int(p.rsplit(".", 1)[1]))
    for phase, path in zip(dumps, files, strict=True):
        counted[phase] += totals(path)
    print(json.dumps({phase: counted[phase] / n for phase in PHASES}))

uvloop.run(run(int(sys.argv[1]), int(sys.argv[2])))
"""
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--base", help="an earlier commit to alternate with (any git revision)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="middle")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {}
    with checkouts(args.base, "seqd-script-costs-base-") as sides:
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for side in order:
                out = run_in(sides[side], RUN, str(args.n), str(SHAPES[args.shape]))
                got = {k: float(v) for k, v in out.items()}
                runs.setdefault(side, []).append(got)
                shown = ", ".join(f"{k} {v:,.0f}" for k, v in got.items())
                print(f"round {r + 1} {side}: {shown}, total {sum(got.values()):,.0f}", flush=True)
    header = "| side | " + " | ".join(PHASES) + " | total |\n" + "|---" * (len(PHASES) + 2) + "|"
    rows = ""
    for side, got in runs.items():
        cells = [median([run[p] for run in got]) for p in PHASES]
        total = median([sum(run.values()) for run in got])
        rows += f"\n| {side} | " + " | ".join(f"{c:,.0f}" for c in cells) + f" | {total:,.0f} |"
    command = "python -m benchmarks.script_costs" + (f" --base {args.base}" if args.base else "")
    command += f" --rounds {args.rounds} --n {args.n} --shape {args.shape}"
    record(
        f"script costs: valkey instructions per {args.shape} step, call by call",
        f"""
`{command}` at {head_rev()}, CPU: {cpu_model()}, {os.cpu_count()} cores; medians of
{args.rounds} interleaved rounds of {args.n:,} due first steps ({args.shape} shape), each
call counted alone under callgrind (valkey-server only, per step).

{header}{rows}
""",
    )


if __name__ == "__main__":
    main()
