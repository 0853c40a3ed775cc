"""How often CPython's cycle collector runs in a seqd process.

seqd's loops allocate container objects per item, tens of thousands of items a second
(stream entries as dicts, script arguments, events), and nearly all of them are freed by
reference counting as soon as they are done with. CPython's default schedule still runs a
young collection every 700 net allocations, and every 10th of those walks the older
generations too: about a quarter of the intake consumer's CPU. With a young collection
every 10,000 allocations the consumer went from about 15.5 to 12.5 µs per entry (same
machine, interleaved runs). Cycles are still collected, in fewer and bigger passes: a
young pass holds back at most that many objects of cyclic garbage.

`freeze` once startup is done moves what is alive then (modules, config, routes) out of
the collector's sight, so the full passes walk only what the work itself made.
"""

from __future__ import annotations

import gc

# (young, middle, old): a young pass every 10,000 net allocations, a middle one every 10
# young passes, a full one every 10 middle ones (and only when the long-lived objects grew
# by a quarter since the last, CPython's own rule).
THRESHOLDS = (10_000, 10, 10)


def tune() -> None:
    gc.set_threshold(*THRESHOLDS)


def freeze() -> None:
    gc.collect()
    gc.freeze()
