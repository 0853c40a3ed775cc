"""Writes a benchmark's figures into its own section of benchmarks/RESULTS.md."""

from __future__ import annotations

import platform
import re
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).parent / "RESULTS.md"
HEADER = (
    "# Benchmark results\n\nEach section is rewritten by its benchmark; medians of repeated runs.\n"
)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def cpu_model() -> str:
    """The machine's CPU model (/proc/cpuinfo: name, family and model numbers, which tell
    apart the generations a vendor's name hides, e.g. "AMD EPYC" family 25 model 17 is Zen 4)."""
    info: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        name, _, value = line.partition(":")
        info.setdefault(name.strip(), value.strip())
    if "model name" not in info:
        return "unknown"
    return f"{info['model name']} (family {info.get('cpu family')}, model {info.get('model')})"


def record(name: str, body: str) -> None:
    """Replace section `## name` of RESULTS.md with `body` (markdown), stamped with the machine."""
    stamp = (
        f"_{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"Python {platform.python_version()}_\n\n"
    )
    section = f"## {name}\n\n{stamp}{body.strip()}\n"
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)
    print(section)
