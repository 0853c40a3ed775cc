"""The collector schedule seqd runs with (seqd/collector.py): rarer passes, and cyclic
garbage still collected without anyone calling gc.collect()."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref
from collections.abc import Iterator

import pytest

from seqd import collector


@pytest.fixture
def tuned() -> Iterator[None]:
    before = gc.get_threshold()
    collector.tune()
    try:
        yield
    finally:
        gc.set_threshold(*before)


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_cycles_are_still_collected_on_the_tuned_schedule(tuned: None) -> None:
    gc.collect()
    alive: set[int] = set()
    refs = []
    made = 5 * collector.THRESHOLDS[0]
    for i in range(made):
        node = Node()
        alive.add(i)
        refs.append(weakref.ref(node, lambda _, i=i: alive.discard(i)))
        del node
    # No explicit collection: the young passes found the dropped cycles by themselves,
    # and at most about one young pass's worth is still waiting.
    assert len(alive) <= 2 * collector.THRESHOLDS[0]
    assert len(alive) < made


def test_the_seqd_command_runs_with_the_schedule() -> None:
    code = (
        "import gc, sys; from seqd import cli; "
        "cli.importer.main = lambda *a: print(gc.get_threshold()) or 0; "
        "sys.exit(cli.main(['import', 'x.csv', '--tenant', 'acme']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(collector.THRESHOLDS)
