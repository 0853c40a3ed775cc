"""valkey's cost of a step that ends its enrollment against one with a step after it.

    python -m benchmarks.completion [--base <rev>] [--rounds 5] [--n 10000] [--callgrind]

Each burst runs in its own process on a fresh valkey-server (AOF everysec, the binary and
allocator `seqd serve` uses): `n` contacts enrolled in a plain SMS sequence with every first
step due at once, drained by the real dispatcher loop into a no-op sink. The sequence has
one step (`last`: every step completes its enrollment, as in benchmarks/e2e.py) or two
(`middle`: every step schedules the next, a day later). Per step it reports valkey-server's
CPU, EVALSHA's `usec` from INFO commandstats (the scripts, their inner commands included)
and the Redis commands the scripts ran; with `--callgrind`, valkey-server runs under
`valgrind --tool=callgrind`, counting only during the burst, and instructions per step are
reported instead of times (they repeat to about 0.1 % on a shared machine).

With `--base`, the same bursts of that commit (checked out into a temporary git worktree,
its own code first on PYTHONPATH) alternate with this checkout's, round by round.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from benchmarks.compare import checkouts, head_rev, run_in
from benchmarks.results import cpu_model, median, record

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {"last": 1, "middle": 2}

# Code of the snippets run in each side's process (here and in benchmarks.script_costs), with
# only names benchmarks.dispatch has had since 66df47a: a fresh valkey-server as `seqd serve`
# starts it, under callgrind (counting nothing until told) when asked.
SERVER = """
import glob, json, subprocess, sys, tempfile, time
import redis, uvloop
from benchmarks import dispatch as d

def server(workdir, callgrind):
    port = d.free_port()
    env, _ = d.server_env(d.find_binary(), True)
    command = [d.find_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir,
               "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
               "--logfile", workdir + "/valkey.log"]
    if callgrind:
        command = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                   "--callgrind-out-file=" + workdir + "/callgrind.%p", *command]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            redis.Redis(port=port).ping()
            return proc, f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)

def control(pid, *args):
    subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, check=False)
"""

BURST = (
    SERVER
    + """
def instructions(workdir):
    best = 0
    for path in glob.glob(workdir + "/callgrind.*"):
        for line in open(path, errors="replace"):
            if line.startswith("totals:"):
                best = max(best, int(line.split()[1]))
    return best

async def run(n, steps, callgrind):
    workdir = tempfile.mkdtemp(prefix="seqd-completion-")
    proc, url = server(workdir, callgrind)
    try:
        client = d.connect(url, max_connections=256, socket_timeout=120)
        store = await d.Store.open(client, d.PREFIX, d.SHARDS)
        cids = await d.make_contacts(store, n)
        seq = await d.new_sequence(store, "completion", steps=steps)
        await d.enroll_direct(store, seq.id, cids, 0, int(time.time() * 1000))
        await store.runner.load_all()
        calls, usec = await d.command_calls(client), await d.script_usec(client)
        if callgrind:
            control(proc.pid, "-i", "on")
            control(proc.pid, "-z")
        valkey = d.cpu_seconds(proc.pid)
        await d.burst(store, d.One(d.NoopSender()), n, d.DispatchConfig())
        valkey = d.cpu_seconds(proc.pid) - valkey
        if callgrind:
            control(proc.pid, "-i", "off")
            control(proc.pid, "-d")
        after, usec = await d.command_calls(client), await d.script_usec(client) - usec
        inner = {k: v - calls.get(k, 0) for k, v in after.items()
                 if k not in ("evalsha", "eval", "info") and v - calls.get(k, 0) > 0}
        await store.close()
        got = {"valkey_us": valkey / n * 1e6, "usec": usec / n,
               "commands": sum(inner.values()) / n,
               "by_command": {k: round(v / n, 3) for k, v in sorted(inner.items())}}
        if callgrind:
            proc.terminate()
            proc.wait()
            got["instructions"] = instructions(workdir) / n
    finally:
        proc.terminate()
        proc.wait()
    print(json.dumps(got))

d.collector.tune()
uvloop.run(run(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"))
"""
)


def one_burst(checkout: Path, n: int, shape: str, callgrind: bool) -> dict[str, object]:
    return run_in(checkout, BURST, str(n), str(SHAPES[shape]), "1" if callgrind else "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--base", help="an earlier commit to alternate with (any git revision)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--callgrind", action="store_true", help="count valkey's instructions")
    args = parser.parse_args()
    metric = "instructions" if args.callgrind else "usec"
    runs: dict[tuple[str, str], list[dict[str, object]]] = {}
    with checkouts(args.base, "seqd-completion-base-") as sides:
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for side in order:
                for shape in SHAPES:
                    got = one_burst(sides[side], args.n, shape, args.callgrind)
                    runs.setdefault((side, shape), []).append(got)
                    print(
                        f"round {r + 1} {side} {shape}: {metric} {got[metric]:,.1f}, "
                        f"valkey CPU {got['valkey_us']:.1f} µs, commands {got['commands']:.2f}"
                        f" {got['by_command']}",
                        flush=True,
                    )

    def med(side: str, shape: str, key: str) -> float:
        return median([float(str(run[key])) for run in runs[(side, shape)]])

    unit = "instructions per step" if args.callgrind else "EVALSHA µs per step"
    header = "| side | " + " | ".join(f"{s}: {unit}" for s in SHAPES) + " | last - middle |"
    header += " valkey CPU µs, last | commands per step, last |\n|---" + "|---" * 5 + "|\n"
    rows = ""
    for side in sides:
        last, middle = med(side, "last", metric), med(side, "middle", metric)
        rows += (
            f"| {side} | {last:,.1f} | {middle:,.1f} | {last - middle:,.1f} "
            f"| {med(side, 'last', 'valkey_us'):.1f} | {med(side, 'last', 'commands'):.2f} |\n"
        )
    command = "python -m benchmarks.completion" + (f" --base {args.base}" if args.base else "")
    command += f" --rounds {args.rounds} --n {args.n}" + (" --callgrind" if args.callgrind else "")
    record(
        "completion: valkey per last step" + (" (callgrind)" if args.callgrind else ""),
        f"""
`{command}` at {head_rev()}, CPU: {cpu_model()}, {os.cpu_count()} cores; medians of
{args.rounds} interleaved rounds, each one burst of {args.n:,} due first steps (no-op sink)
per side and shape. `last`: a one-step sequence (each step completes its enrollment);
`middle`: a two-step one (each step schedules the next).

{header}{rows}""",
    )
    print(header + rows)


if __name__ == "__main__":
    main()
