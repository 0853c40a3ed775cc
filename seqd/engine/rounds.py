"""What a dispatcher round did, and how due shards are cut into pieces for its lanes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Round:
    """What one `run_once` did."""

    # Steps claimed, and of those: handed to a sender, settled by `advance`, found stale.
    claimed: int = 0
    sent: int = 0
    settled: int = 0
    stale: int = 0
    # Some shard had a full batch: more may be due right now.
    more: bool = False
    # The earliest due time of the shards that were not due (ms), if any.
    next_due: int | None = None


@dataclass(slots=True)
class Tally:
    """What one piece of a round came to."""

    claimed: int
    sent: int
    settled: int
    stale: int


def cut_pieces(due: list[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Due shards (with their due counts) cut into groups of about one batch each, the
    first group last (workers pop from the end).

    When little is due, every due shard is in one group: one claim pipeline and one advance
    pipeline per round, so a round stays a few round trips. Under load, each group is about
    one script call's worth, so workers interleave: one composes while Redis runs another's
    claim, instead of every lane waiting on Redis at the same time.
    """
    out: list[list[int]] = []
    group: list[int] = []
    size = 0
    for shard, count in due:
        group.append(shard)
        size += min(count, batch_size)
        if size >= batch_size:
            out.append(group)
            group, size = [], 0
    if group:
        out.append(group)
    out.reverse()
    return out
