"""Enrollments: created by the `enroll` script, changed by `transition`, listed per sequence."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import msgspec

from seqd import ids, models
from seqd.errors import Conflict, Invalid, NotFound
from seqd.store import calls, codec
from seqd.store.context import StoreContext
from seqd.store.scripts import ScriptError
from seqd.times import now_ms, to_rfc3339

# Items one enroll call takes at most: bounds how long it holds Redis.
ENROLL_BATCH = 500

_encode = msgspec.json.Encoder().encode


class EnrollItem(msgspec.Struct, frozen=True):
    contact_id: str
    metadata: dict[str, Any]
    # `metadata` already encoded ("" for none), or None to encode it here.
    metadata_json: str | None = None
    # When the first step goes (ms), decided in the contact's zone (seqd/timing); None:
    # enrollment + the first step's wait_minutes.
    due: int | None = None
    # The enrollment's `z` of that decision (codec.zone_field; "" when no zone mattered).
    zone: str = ""
    # Into an exclusive sequence while the contact is busy in another: wait for it.
    queue: bool = False


class EnrollResult(msgspec.Struct, frozen=True):
    """Either an enrollment `id` (with `idempotent`, and the `enrollment` itself when asked
    for) or an error `code` with its `detail`."""

    id: str | None = None
    enrollment: models.Enrollment | None = None
    idempotent: bool = False
    code: str | None = None
    detail: str = ""
    # Queued behind the contact's live exclusive enrollment of this id (`id` made later).
    behind: str | None = None


def enroll_rules(seq: models.Sequence) -> tuple[str, str, str]:
    """enroll-3.lua's ARGV[6..8] for `seq`: steps version ("" for 1), reenroll, exclusive."""
    rule = seq.reenroll
    if isinstance(rule, models.ReenrollAfter):
        reenroll = str(rule.after_days * 86_400_000)
    else:
        reenroll = "never" if rule == "never" else ""
    version = "" if seq.version == 1 else str(seq.version)
    return version, reenroll, "1" if seq.exclusive else ""


class Enrollments:
    def __init__(self, store: StoreContext) -> None:
        self.store = store
        self.keys = store.keys

    def _shard(self, eid: str) -> int:
        return ids.shard_of(eid, self.keys.shards)

    async def enroll(
        self, tenant: str, seq: models.Sequence, items: list[EnrollItem], *, full: bool = True
    ) -> list[EnrollResult]:
        """Enroll many contacts in one sequence: one script call per shard and batch.

        `full`: each result carries its Enrollment (a new one is built here from the values
        passed to the script, which answers only its id); False gives ids only, for callers
        that report nothing more (the intake, the import).
        """
        now = now_ms()
        wait_ms = seq.steps[0].wait_minutes * 60_000
        shards = self.keys.shards
        rules = enroll_rules(seq)
        by_shard: dict[int, list[int]] = defaultdict(list)
        results: list[EnrollResult | None] = [None] * len(items)
        for i, item in enumerate(items):
            if not ids.is_valid(item.contact_id, ids.CONTACT):
                results[i] = EnrollResult(code="CONTACT_NOT_FOUND", detail=item.contact_id)
                continue
            by_shard[ids.shard_of(item.contact_id, shards)].append(i)
        trip: list[calls.Call] = []
        batches: list[list[int]] = []
        for shard, positions in by_shard.items():
            for start in range(0, len(positions), ENROLL_BATCH):
                batch = positions[start : start + ENROLL_BATCH]
                fresh = ids.many_in_shard(ids.ENROLLMENT, shard, shards, len(batch), now)
                values = []
                for i, eid in zip(batch, fresh, strict=True):
                    item = items[i]
                    md = item.metadata_json
                    if md is None:
                        md = _encode(item.metadata).decode() if item.metadata else ""
                    due = "" if item.due is None else str(item.due)
                    busy = "queue" if item.queue else ""
                    values.append((eid, item.contact_id, md, due, item.zone, busy))
                trip.append(
                    calls.enroll(self.keys, shard, now, tenant, seq.id, wait_ms, values, rules)
                )
                batches.append(batch)
        replies: list[Any]
        if len(trip) == 1:  # the single enrollment: no pipeline to build
            try:
                replies = [await self.store.runner.run(trip[0], acknowledged=True)]
            except ScriptError as exc:
                replies = [exc]
        else:
            replies = await self.store.runner.call_many(trip, acknowledged=True) if trip else []
        if replies and any(wait_ms == 0 if item.due is None else item.due <= now for item in items):
            self.store.made_due()
        # What every enrollment created by this call has in common.
        enrolled_at = to_rfc3339(now)
        default_due = now + wait_ms
        for batch, reply in zip(batches, replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            for i, row in zip(batch, calls.enrolled(reply), strict=True):
                if isinstance(row, ScriptError):
                    results[i] = EnrollResult(code=row.code, detail=row.detail)
                elif row.behind is not None:
                    results[i] = EnrollResult(id=row.id, behind=row.behind)
                elif row.idempotent:
                    enrollment = codec.enrollment(row.id, codec.pairs(row.flat)) if full else None
                    results[i] = EnrollResult(id=row.id, enrollment=enrollment, idempotent=True)
                elif full:
                    item = items[i]
                    source, zone = codec.zone_of(item.zone)
                    new = models.Enrollment(
                        id=row.id,
                        sequence_id=seq.id,
                        contact_id=item.contact_id,
                        current_step=0,
                        status=models.EnrollmentStatus.ACTIVE,
                        next_run_at=to_rfc3339(default_due if item.due is None else item.due),
                        enrolled_at=enrolled_at,
                        metadata=item.metadata,
                        updated_at=enrolled_at,
                        timezone_used=zone,
                        timezone_source=source,  # type: ignore[arg-type]
                        sequence_version=seq.version,
                    )
                    results[i] = EnrollResult(id=row.id, enrollment=new)
                else:
                    results[i] = EnrollResult(id=row.id)
        return [r for r in results if r is not None]

    async def get(self, tenant: str, eid: str) -> models.Enrollment:
        if ids.is_valid(eid, ids.ENROLLMENT):
            key = self.keys.enrollment(self._shard(eid), eid)
            h: dict[str, str] = await self.store.client.hgetall(key)  # type: ignore[assignment]
            if h.get("t") == tenant:
                return codec.enrollment(eid, h)
        raise NotFound(f"no enrollment {eid}", field="id")

    async def transition(
        self, tenant: str, eid: str, action: str, reason: str = ""
    ) -> models.Enrollment:
        if not ids.is_valid(eid, ids.ENROLLMENT):
            raise NotFound(f"no enrollment {eid}", field="id")
        move = calls.transition(self.keys, self._shard(eid), now_ms(), tenant, eid, action, reason)
        try:
            flat = await self.store.runner.run(move, acknowledged=True)
        except ScriptError as exc:
            if exc.code == "NOT_FOUND":
                raise NotFound(f"no enrollment {eid}", field="id") from None
            if exc.code == "INVALID_TRANSITION":
                raise Conflict(
                    f"cannot {action} an enrollment that is {exc.detail}", status=exc.detail
                ) from None
            raise
        return codec.enrollment(eid, codec.pairs(flat))

    async def _active_page(
        self, sid: str, limit: int, after: str | None
    ) -> tuple[list[str], str | None]:
        """Up to `limit` ids of the sequence's queues (all shards) after an active cursor,
        and the cursor after them (None when none follow)."""
        score, eid = parse_active_cursor(after) if after else ("", "")
        pages = [
            calls.page_queue(self.keys, shard, sid, score, eid, limit + 1)
            for shard in range(self.keys.shards)
        ]
        return _merge_queue_pages(await self.store.runner.call_many(pages), limit)

    async def paused_for(
        self, tenant: str, sid: str, reason: str, *, limit: int, after: str | None
    ) -> tuple[list[models.Enrollment], str | None, int]:
        """A page of the sequence's enrollments paused for `reason`, in id order, the cursor
        after it and their total. The paused index has no reasons: it is read whole (in
        pieces), a cost of the sequence's paused enrollments per request."""
        index = [self.keys.status_index(shard, sid, "paused") for shard in range(self.keys.shards)]
        matching: list[str] = []
        cursor: str | None = None
        while True:
            chunk, more = await self.store.merged_range(index, cursor, _PAUSED_CHUNK)
            pipe = self.store.client.pipeline(transaction=False)
            for eid in chunk:
                pipe.hmget(self.keys.enrollment(self._shard(eid), eid), "t", "pr")
            for eid, (t, pr) in zip(chunk, await pipe.execute(), strict=True):
                if t == tenant and pr == reason:
                    matching.append(eid)
            if not more or not chunk:
                break
            cursor = chunk[-1]
        rest = [eid for eid in matching if after is None or eid > after]
        page = rest[:limit]
        pipe = self.store.client.pipeline(transaction=False)
        for eid in page:
            pipe.hgetall(self.keys.enrollment(self._shard(eid), eid))
        data = [codec.enrollment(eid, h) for eid, h in zip(page, await pipe.execute(), strict=True)]
        return data, page[-1] if len(rest) > limit else None, len(matching)

    async def list(
        self,
        tenant: str,
        sid: str,
        *,
        limit: int,
        after: str | None,
        statuses: list[str],
        with_total: bool = True,
    ) -> tuple[list[models.Enrollment], str | None, int]:
        """A page of the sequence's enrollments in `statuses`: the active ones first, in
        their queue's order (next step due, then id: `active_cursor`), then the others
        merged in id order; returns the page, the cursor after it (None at the end) and the
        total."""
        page: list[str] = []
        cursor: str | None = None
        others = [s for s in statuses if s != "active"]
        if "active" in statuses and (after is None or is_active_cursor(after)):
            page, cursor = await self._active_page(sid, limit, after)
            after = None
        elif after == REST_START:
            after = None
        queued = len(page)
        if cursor is None and others:
            index = [
                self.keys.status_index(shard, sid, status)
                for shard in range(self.keys.shards)
                for status in others
            ]
            # (With the page already full, this only asks whether any follow.)
            rest, more = await self.store.merged_range(index, after, limit - len(page))
            page += rest
            if more:
                cursor = rest[-1] if rest else REST_START
        pipe = self.store.client.pipeline(transaction=False)
        for eid in page:
            pipe.hgetall(self.keys.enrollment(self._shard(eid), eid))
        rows = await pipe.execute()
        # A queue also holds the pauses that end by themselves (out_of_office, waiting for
        # their resume_at there) and the enrollments a blocking task holds (awaiting_task,
        # until the task's due time): they are listed with the paused ones, not here.
        data = [
            codec.enrollment(eid, h)
            for i, (eid, h) in enumerate(zip(page, rows, strict=True))
            if h.get("t") == tenant and (i >= queued or h.get("st") == "active")
        ]
        if not with_total:
            return data, cursor, -1
        total = await self.store.total(
            [
                self.keys.status_index(shard, sid, status)
                for shard in range(self.keys.shards)
                for status in others
            ]
        )
        if "active" in statuses:
            pipe = self.store.client.pipeline(transaction=False)
            for shard in range(self.keys.shards):
                pipe.hget(self.keys.counts(shard, sid), "active")
            total += sum(int(n or 0) for n in await pipe.execute())
        return data, cursor, total


# Paused enrollments read per round trip when listing them by reason.
_PAUSED_CHUNK = 500


def _merge_queue_pages(replies: Sequence[Any], limit: int) -> tuple[list[str], str | None]:
    """The shards' pageQueue replies merged in queue order: up to `limit` ids, and the cursor
    after them (None when none follow)."""
    rows: list[tuple[float, str, str]] = []
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
        rows += [(float(reply[i + 1]), reply[i], reply[i + 1]) for i in range(0, len(reply), 2)]
    rows.sort()
    page = rows[:limit]
    cursor = active_cursor(page[-1][2], page[-1][1]) if len(rows) > limit else None
    return [eid for _, eid, _ in page], cursor


def active_cursor(score: str, eid: str) -> str:
    """The listing's cursor inside the active enrollments: the last one's queue score (as
    Redis prints it) and id. A queue is not in id order, so an id alone cannot say where a
    page ended; an id-only cursor is one in the other statuses."""
    return f"a:{score}:{eid}"


# The cursor of a page that ended with the last active enrollment: the other statuses
# follow from their start.
REST_START = "r:"


def is_active_cursor(after: str) -> bool:
    return after.startswith("a:")


def parse_active_cursor(after: str) -> tuple[str, str]:
    _, score, eid = [*after.split(":"), "", ""][:3]
    try:
        valid = math.isfinite(float(score)) and ids.is_valid(eid, ids.ENROLLMENT)
    except ValueError:
        valid = False
    if not valid:
        raise Invalid.field("query.page_token", "not a page token from this API")
    return score, eid
