"""Per-step counters: the read that sums them over the shards, the retention the scripts
read, a click's record and its link (their names and codes: store/counters.py).

The scripts that change an enrollment's state count what they did in the same call
(`includes/stats.lua`), so the counters agree with the events exactly and outlive the event
log. One HASH per (shard, sequence, UTC day) (`keys.SHARD_TEMPLATES["stats"]`), in the
shard's slot like every key those scripts write; field `<step>:<variant>:<code>` -> count,
and `@<sender>:<code>` -> count for the steps sent from a pool's sender (the sender is kept
on the enrollment as `r<step>`, so what is credited to a step later counts for it too).
A sequence-day therefore costs at most `shards` hashes of `(steps x variants + senders) x
15` fields, whatever the number of enrollments: listpack-encoded, 816 bytes for 4 steps and
1,536 for 8 (MEMORY USAGE, counts of 5 digits). Each hash expires `retention_days`
after its day ends; the retention is kept per shard (`stats_ttl`), since the
scripts may read only keys of their slot.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from seqd import ids, links, templates
from seqd.conditions import SKIPPED
from seqd.errors import NotFound
from seqd.store import calls
from seqd.store.context import StoreContext
from seqd.store.counters import NAMES, SENDER_MARK
from seqd.store.sequences import Sequences


class Cell:
    """The counts of one (step, variant, day), or of one (sender, day) (`sender` set, `step`
    and `variant` ""): counter name -> count. A sender's counts are also in its steps'."""

    __slots__ = ("counts", "day", "sender", "step", "variant")

    def __init__(self, step: str, variant: str, day: int, sender: str | None = None) -> None:
        self.step = step
        self.variant = variant
        self.day = day
        self.sender = sender
        self.counts: dict[str, int] = {}


class StepRecord(msgspec.Struct, kw_only=True):
    """What one step did for one enrollment, as its hash records it (the facts the counters
    count, for the dashboard's timeline): sent (`p<step>`: the provider's id, or a task
    step's task), the A/B variant (`v<step>`), the final delivery status (`d<step>`), the
    first click (`k<step>`, ms) and a skip (`o`'s letter)."""

    step: int
    provider_id: str | None = None
    variant: str | None = None
    delivery: str | None = None
    clicked_at: int | None = None
    skipped: bool = False


def step_records(h: dict[str, str], steps: int) -> list[StepRecord]:
    """The records of an enrollment's steps before its current one (`h`: its hash)."""
    outcomes = h.get("o", "")
    out = []
    for n in range(min(int(h.get("i") or 0), steps)):
        stored = h.get(f"d{n}", "")
        clicked = h.get(f"k{n}")
        out.append(
            StepRecord(
                step=n,
                provider_id=h.get(f"p{n}"),
                variant=h.get(f"v{n}"),
                # "<rank>:<status>[:<error code>]" (recordDelivery-1.lua)
                delivery=stored.split(":")[1] if stored.count(":") >= 1 else None,
                clicked_at=int(clicked) if clicked else None,
                skipped=outcomes[n : n + 1] == SKIPPED,
            )
        )
    return out


class Stats:
    """Reads of the counters, summed over the shards."""

    def __init__(self, store: StoreContext, sequences: Sequences) -> None:
        self.store = store
        self.sequences = sequences

    async def keep_for(self, days: int) -> None:
        """Counter hashes written from now on expire `days` after their day ends."""
        pipe = self.store.client.pipeline(transaction=False)
        for shard in range(self.store.shards):
            pipe.set(self.store.keys.stats_ttl(shard), days)
        await pipe.execute()

    async def cells(self, sequence_id: str, days: Iterable[int]) -> list[Cell]:
        """Every (step, variant, day) and (sender, day) counted for the sequence on `days`
        (UTC day numbers: epoch ms // DAY_MS), each summed over the shards."""
        keys = self.store.keys
        wanted = list(days)
        pipe = self.store.client.pipeline(transaction=False)
        for day in wanted:
            for shard in range(self.store.shards):
                pipe.hgetall(keys.stats(shard, sequence_id, day))
        replies: list[dict[str, str]] = await pipe.execute()
        cells: dict[tuple[str, str, int, str | None], Cell] = {}
        for n, flat in enumerate(replies):
            day = wanted[n // self.store.shards]
            for field, value in flat.items():
                sender: str | None = None
                if field.startswith(SENDER_MARK):
                    sender, _, code = field[len(SENDER_MARK) :].rpartition(":")
                    step = variant = ""
                else:
                    step, _, rest = str(field).partition(":")
                    variant, _, code = rest.rpartition(":")
                name = NAMES.get(code)
                if name is None:
                    continue
                cell = cells.get((step, variant, day, sender))
                if cell is None:
                    cell = cells[(step, variant, day, sender)] = Cell(step, variant, day, sender)
                cell.counts[name] = cell.counts.get(name, 0) + int(value)
        return list(cells.values())

    async def steps(self, tenant: str, enrollment_id: str, steps: int) -> list[StepRecord]:
        """`step_records` of one enrollment of `tenant` (none for another tenant's)."""
        if not ids.is_valid(enrollment_id, ids.ENROLLMENT):
            return []
        shard = ids.shard_of(enrollment_id, self.store.shards)
        key = self.store.keys.enrollment(shard, enrollment_id)
        h: dict[str, str] = await self.store.client.hgetall(key)  # type: ignore[assignment]
        return step_records(h, steps) if h.get("t") == tenant else []

    async def click(
        self, enrollment_id: str, step: int, *, bot: bool, now: int, event: dict[str, Any]
    ) -> tuple[bool, bool]:
        """Record a click on a tracked link of `step`: (enrollment found, counted)."""
        shard = ids.shard_of(enrollment_id, self.store.shards)
        call = calls.record_click(
            self.store.keys, shard, now, enrollment_id, step, bot, _encode(event).decode()
        )
        found, first = await self.store.runner.run(call)
        return bool(found), bool(first)

    async def link(self, enrollment_id: str, step: int, n: int) -> str | None:
        """Link number `n` of `step`'s body as rendered for the enrollment now (the sequence
        and the contact as they are: what a tracked link redirects to); None when the
        enrollment, the step or the link is gone."""
        client, keys = self.store.client, self.store.keys
        shard = ids.shard_of(enrollment_id, self.store.shards)
        tenant, sid, cid, md = await client.hmget(
            keys.enrollment(shard, enrollment_id), ["t", "s", "c", "md"]
        )
        if tenant is None:
            return None
        try:
            seq = await self.sequences.get(str(tenant), str(sid), with_stats=False)
        except NotFound:
            return None
        if step >= len(seq.steps):
            return None
        context: dict[str, Any] = {
            str(k): v for k, v in (await client.hgetall(keys.contact(shard, str(cid)))).items()
        }
        context["attributes"] = _decode(context.get("attributes") or "{}")
        context["metadata"] = _decode(md or "{}")
        try:
            body = templates.render(seq.steps[step].body, context)
        except templates.MissingVariable:
            return None
        return links.nth_link(body, n)


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
