"""Plain no-op dispatch of this checkout against an earlier commit, interleaved.

`python -m benchmarks.compare --base <rev> --rounds 9 --n 20000` checks `<rev>` out into a
temporary git worktree and runs, alternately, one burst of each side in its own process
(the side's code first on PYTHONPATH, its own `benchmarks.dispatch` helpers): `n` contacts,
a plain two-step SMS sequence, every first step due at once on a fresh valkey-server, the
real dispatcher loop with a no-op sink. It prints steps/s and the CPU per step of the
burst process and of valkey-server, and writes the medians and each round's ratio to
RESULTS.md. This is how "plain dispatch stays within noise" is checked across a change.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.results import median, record

ROOT = Path(__file__).resolve().parent.parent

# Run inside each side's process: only names that benchmarks.dispatch has had since b762d30.
BURST = """
import json, sys, tempfile, time
from pathlib import Path
import uvloop
from benchmarks import dispatch as d

async def run(n):
    proc, url = d.start_valkey(Path(tempfile.mkdtemp(prefix="seqd-compare-")))
    try:
        store = await d.Store.open(d.connect(url, max_connections=256), d.PREFIX, d.SHARDS)
        cids = await d.make_contacts(store, n)
        seq = await d.new_sequence(store, "burst")
        await d.enroll_direct(store, seq.id, cids, 0, int(time.time() * 1000))
        valkey, process = d.cpu_seconds(proc.pid), time.process_time()
        rate = await d.burst(store, d.One(d.NoopSender()), n, d.DispatchConfig())
        valkey, process = d.cpu_seconds(proc.pid) - valkey, time.process_time() - process
        await store.close()
    finally:
        proc.terminate()
        proc.wait()
    per_step = {"valkey_us": valkey / n * 1e6, "process_us": process / n * 1e6}
    print(json.dumps({"rate": rate, **per_step}))

d.collector.tune()
uvloop.run(run(int(sys.argv[1])))
"""


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def run_in(checkout: Path, snippet: str, *args: str) -> dict[str, Any]:
    """Run `snippet` in a fresh interpreter with `checkout`'s seqd and benchmarks on the
    path; its last line of output is a JSON object."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    out = subprocess.run(
        [sys.executable, "-c", snippet, *args],
        env=env,
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@contextmanager
def checkouts(base: str | None, prefix: str) -> Iterator[dict[str, Path]]:
    """The sides to alternate: this checkout ("head") and, with `base`, that revision checked
    out into a temporary git worktree ("base", first), removed afterwards."""
    if base is None:
        yield {"head": ROOT}
        return
    base_dir = Path(tempfile.mkdtemp(prefix=prefix)) / "tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(base_dir), base],
        check=True,
    )
    try:
        yield {"base": base_dir, "head": ROOT}
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_dir)], check=False
        )


def one_burst(checkout: Path, n: int) -> dict[str, float]:
    return run_in(checkout, BURST, str(n))


def head_rev() -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--base", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args()
    base_dir = Path(tempfile.mkdtemp(prefix="seqd-compare-base-")) / "tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(base_dir), args.base],
        check=True,
    )
    sides = {"base": base_dir, "head": ROOT}
    runs: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
    try:
        for r in range(args.rounds):
            # Alternate which side goes first, so a drift in the machine's load hits both.
            order = ["base", "head"] if r % 2 == 0 else ["head", "base"]
            for side in order:
                runs[side].append(one_burst(sides[side], args.n))
                got = runs[side][-1]
                print(
                    f"round {r + 1} {side}: {got['rate']:,.0f} steps/s, "
                    f"process {got['process_us']:.1f} µs, valkey {got['valkey_us']:.1f} µs"
                )
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_dir)], check=False
        )
    ratios = [h["rate"] / b["rate"] for b, h in zip(runs["base"], runs["head"], strict=True)]

    def med(side: str, key: str) -> float:
        return median([run[key] for run in runs[side]])

    rows = "\n".join(
        f"| {label} | {med('base', key):,.{digits}f} | {med('head', key):,.{digits}f} "
        f"| {med('head', key) / med('base', key):.3f} |"
        for label, key, digits in (
            ("steps/s, no-op sink", "rate", 0),
            ("CPU per step, burst process (µs)", "process_us", 1),
            ("CPU per step, valkey-server (µs)", "valkey_us", 1),
        )
    )
    spans = {
        side: f"{min(run['rate'] for run in runs[side]):,.0f}–"
        f"{max(run['rate'] for run in runs[side]):,.0f}"
        for side in runs
    }
    record(
        "dispatch: plain sequences against an earlier commit",
        f"""
`python -m benchmarks.compare --base {args.base} --rounds {args.rounds} --n {args.n}` at
{head_rev()}, CPU: {cpu_model()}, {os.cpu_count()} cores. Each round is one burst of
{args.n:,} first steps of a plain two-step SMS sequence due at once (16 shards, a no-op
sink, default dispatch settings, a fresh valkey-server with AOF everysec) for each side,
in its own process, the order alternating; medians of {args.rounds} rounds.

| figure | base {args.base} | head | head / base |
| --- | --- | --- | --- |
{rows}

Each round's ratio (head / base steps/s): {", ".join(f"{x:.3f}" for x in ratios)}
(median {median(ratios):.3f}). Range of steps/s: base {spans["base"]}, head {spans["head"]}.
""",
    )


if __name__ == "__main__":
    main()
