"""GET /forecast: how many steps are due per hour or day, counted from the due index."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from aiohttp import web
from msgspec import Meta

from seqd import models
from seqd.api.auth import tenant_of
from seqd.api.routing import route
from seqd.api.wire import read_query, respond
from seqd.appkeys import STORE
from seqd.kinds import Kind
from seqd.times import now_ms, to_rfc3339

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


class ForecastQuery(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    hours: Annotated[int, Meta(ge=1, le=744, description="how far ahead: 1 to 744 (31 days)")] = 72
    group_by: Literal["hour", "day"] = "hour"
    sequence_id: (
        Annotated[str, Meta(max_length=64, description="only this sequence's steps")] | None
    ) = None
    channel: Annotated[Kind, Meta(description="only steps of this kind")] | None = None
    sender_id: (
        Annotated[
            str,
            Meta(
                max_length=64,
                description=(
                    "only steps known now to go from this sender (GET /senders): of a"
                    " sequence whose pool for the sender's channel is this sender alone, or"
                    " whose contact a sticky rotation pinned to it. A step whose sender is"
                    " picked when it goes (round robin, or a sticky contact's first step in"
                    " a pool of several) is in no sender's buckets: `unassigned` counts"
                    " those of pools with this sender"
                ),
            ),
        ]
        | None
    ) = None


class ForecastBucket(models.Output, kw_only=True):
    start: Annotated[models.Timestamp, Meta(description="the hour's (UTC day's) start")]
    count: int


class Forecast(models.Output, kw_only=True):
    generated_at: models.Timestamp
    until: models.Timestamp
    group_by: Literal["hour", "day"]
    overdue: Annotated[
        int, Meta(description="steps due before `generated_at`: going out now, or late")
    ]
    total: Annotated[int, Meta(description="steps due from `generated_at` to `until`")]
    buckets: list[ForecastBucket]
    unassigned: (
        Annotated[
            int,
            Meta(
                description=(
                    "with sender_id: steps due before `until` (overdue included) of a pool"
                    " with this sender whose sender is picked when they go: they may go"
                    " from it or another of the pool; null without sender_id"
                )
            ),
        ]
        | None
    ) = None


def bucket_edges(now: int, hours: int, width: int) -> list[int]:
    """`now`, the bucket boundaries (multiples of `width`) after it, and the end: the first
    bucket is the rest of the current hour (day), the last ends `hours` after `now`."""
    end = now + hours * HOUR_MS
    edges = [now]
    edge = now - now % width + width
    while edge < end:
        edges.append(edge)
        edge += width
    edges.append(end)
    return edges


@route(
    "GET",
    "/forecast",
    summary="Steps due per hour or day ahead, counted from the due index of active sequences",
    tag="sequences",
    query=ForecastQuery,
    responses={200: Forecast},
    errors=(404,),
)
async def forecast(request: web.Request) -> web.Response:
    query = read_query(request, ForecastQuery)
    store, tenant = request.app[STORE], tenant_of(request)
    if query.sequence_id is not None:
        seqs = [await store.sequences.get(tenant, query.sequence_id, with_stats=False)]
    else:
        seqs = await store.sequences.all_of(tenant)
    # A paused or draft sequence's queue sends nothing until it is active.
    seqs = [s for s in seqs if s.status == models.SequenceStatus.ACTIVE]
    now = now_ms()
    width = HOUR_MS if query.group_by == "hour" else DAY_MS
    edges = bucket_edges(now, query.hours, width)
    unassigned = None
    if query.sender_id is None:
        overdue, counts = await store.forecasts.count(seqs, edges, query.channel)
    else:
        sender = await store.senders.get(tenant, query.sender_id)
        kind = sender.channel
        if query.channel is not None and query.channel != kind:
            seqs = []  # no step of another channel goes from it
        own = {r.id: r for r in await store.senders.all(tenant)}
        # Each sequence's pool for the sender's channel as the dispatcher takes it
        # (engine/budgets.py): the senders that exist, of that channel.
        pools = {
            seq.id: [s for s in seq.senders.of(kind) if (r := own.get(s)) and r.channel == kind]
            for seq in seqs
        }
        overdue, counts, unassigned = await store.forecasts.count_sender(
            seqs, edges, query.sender_id, kind, pools
        )
    buckets = [
        ForecastBucket(start=to_rfc3339(lo - lo % width), count=n)
        for lo, n in zip(edges, counts, strict=False)
    ]
    return respond(
        Forecast(
            generated_at=to_rfc3339(now),
            until=to_rfc3339(edges[-1]),
            group_by=query.group_by,
            overdue=overdue,
            total=sum(counts),
            buckets=buckets,
            unassigned=unassigned,
        )
    )
