"""Per-step stats of a sequence: GET /sequences/{id}/stats, from the counters the scripts
write (store/stats.py), summed over the shards, with the README's rates."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

import msgspec
from aiohttp import web
from msgspec import Meta

from seqd.api.auth import tenant_of
from seqd.api.routing import route
from seqd.api.wire import read_query, respond
from seqd.appkeys import STORE
from seqd.errors import FieldError, Invalid
from seqd.store.counters import DAY_MS, NO_STEP, NO_VARIANT
from seqd.store.stats import Cell

TAG = "stats"
# The longest range one request reads: its days times the shards are the hashes read.
MAX_DAYS = 400
_EPOCH = dt.date(1970, 1, 1)


GroupBy = Literal["step", "variant", "sender", "day"]


class StatsQuery(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    from_: Annotated[
        dt.date | None,
        Meta(
            description="first UTC day (YYYY-MM-DD), not after `to`, at most 400 days before"
            " it; default `to` - 29 days"
        ),
    ] = msgspec.field(name="from", default=None)
    to: Annotated[dt.date | None, Meta(description="last UTC day, included; default today")] = None
    group_by: GroupBy = "step"


class StatsCounts(msgspec.Struct, kw_only=True):
    """What the sequence's steps did (store/stats.py COUNTERS, in that order)."""

    scheduled: int = 0
    sent: int = 0
    delivered: int = 0
    undelivered: int = 0
    failed: int = 0
    skipped: int = 0
    deferred: int = 0
    replied: int = 0
    auto_replied: int = 0
    opted_out: int = 0
    unsubscribed: int = 0
    bounced: int = 0
    clicked: int = 0
    completed: int = 0
    cancelled: int = 0


Rate = Annotated[float, Meta(ge=0)] | None


class StatsRates(msgspec.Struct, kw_only=True):
    """Rates as the README defines them; null where the denominator is 0. `reached` is
    `delivered` where delivery reports came (delivered + undelivered > 0), else `sent`."""

    delivery_rate: Rate = None
    reply_rate: Rate = None
    click_rate: Rate = None
    opt_out_rate: Rate = None
    unsubscribe_rate: Rate = None
    bounce_rate: Rate = None
    failure_rate: Rate = None


class StatsRow(msgspec.Struct, kw_only=True):
    """One group's counts: `step` (null: outcomes of enrollments sent nothing yet),
    `step` and `variant` (a step's A/B variant; both null: what no variant was sent as, i.e.
    steps without variants and counts made before a send), `sender` (a pool's sender the
    steps were sent from; null: the rest, sent from the tenant's configured channel or
    counted before a send) or `day`, as `group_by` says; the others are null."""

    step: int | None = None
    variant: str | None = None
    sender: Annotated[str | None, Meta(description="group_by=sender: a sender's id")] = None
    day: dt.date | None = None
    counts: StatsCounts
    rates: StatsRates


class StepStats(msgspec.Struct, kw_only=True):
    sequence_id: str
    from_: dt.date = msgspec.field(name="from")
    to: dt.date
    group_by: GroupBy
    totals: StatsRow
    rows: list[StatsRow]


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def rates(c: StatsCounts) -> StatsRates:
    known = c.delivered + c.undelivered
    reached = c.delivered if known else c.sent
    return StatsRates(
        delivery_rate=_ratio(c.delivered, known),
        reply_rate=_ratio(c.replied, reached),
        click_rate=_ratio(c.clicked, reached),
        opt_out_rate=_ratio(c.opted_out, reached),
        unsubscribe_rate=_ratio(c.unsubscribed, reached),
        bounce_rate=_ratio(c.bounced, c.sent),
        failure_rate=_ratio(c.failed, c.sent + c.failed),
    )


def _add(into: StatsCounts, cell: Cell) -> None:
    for name, n in cell.counts.items():
        setattr(into, name, getattr(into, name) + n)


def _day(day: int) -> dt.date:
    return _EPOCH + dt.timedelta(days=day)


def _range(query: StatsQuery) -> tuple[dt.date, dt.date]:
    to = query.to or _day(int(dt.datetime.now(dt.UTC).timestamp() * 1000) // DAY_MS)
    first = query.from_ or to - dt.timedelta(days=29)
    if first > to:
        raise Invalid([FieldError("query.from", "after `to`")])
    if (to - first).days + 1 > MAX_DAYS:
        raise Invalid([FieldError("query.from", f"the range is longer than {MAX_DAYS} days")])
    return first, to


def _group(cell: Cell, group_by: str) -> tuple[int | None, str | None, dt.date | None]:
    step = None if cell.step == NO_STEP else int(cell.step)
    if group_by == "step":
        return step, None, None
    if group_by == "variant":
        # A variant belongs to its step; what no variant was sent as is one row.
        if cell.variant == NO_VARIANT:
            return None, None, None
        return step, cell.variant, None
    return None, None, _day(cell.day)


def _order(row: StatsRow) -> tuple[int, str, dt.date]:
    step = -1 if row.step is None else row.step
    return step, row.variant or "", row.day or _EPOCH


def _by_sender(total: StatsCounts, senders: dict[str, StatsCounts]) -> list[StatsRow]:
    """A row per sender, by id, and a row (sender null) of the rest: the totals less every
    sender's counts."""
    rest = StatsCounts()
    for name in msgspec.structs.fields(StatsCounts):
        n = getattr(total, name.name) - sum(getattr(c, name.name) for c in senders.values())
        setattr(rest, name.name, n)
    rows = [StatsRow(sender=sid, counts=c, rates=rates(c)) for sid, c in sorted(senders.items())]
    if any(msgspec.structs.astuple(rest)):
        rows.insert(0, StatsRow(counts=rest, rates=rates(rest)))
    return rows


@route(
    "GET",
    "/sequences/{id}/stats",
    summary="Per-step counts and rates of a sequence over UTC days",
    tag=TAG,
    query=StatsQuery,
    responses={200: StepStats},
    errors=(404,),
)
async def sequence_stats(request: web.Request) -> web.Response:
    store = request.app[STORE]
    query = read_query(request, StatsQuery)
    sid = request.match_info["id"]
    await store.sequences.get(tenant_of(request), sid)  # NotFound for another tenant's
    first, to = _range(query)
    start = (first - _EPOCH).days
    cells = await store.stats.cells(sid, range(start, start + (to - first).days + 1))
    total = StatsCounts()
    groups: dict[tuple[int | None, str | None, dt.date | None], StatsCounts] = {}
    senders: dict[str, StatsCounts] = {}
    for cell in cells:
        if cell.sender is not None:
            _add(senders.setdefault(cell.sender, StatsCounts()), cell)
            continue
        _add(total, cell)
        if query.group_by != "sender":
            _add(groups.setdefault(_group(cell, query.group_by), StatsCounts()), cell)
    if query.group_by == "sender":
        rows = _by_sender(total, senders)
    else:
        rows = [
            StatsRow(step=step, variant=variant, day=day, counts=c, rates=rates(c))
            for (step, variant, day), c in groups.items()
        ]
        rows.sort(key=_order)
    return respond(
        StepStats(
            sequence_id=sid,
            from_=first,
            to=to,
            group_by=query.group_by,
            totals=StatsRow(counts=total, rates=rates(total)),
            rows=rows,
        )
    )
