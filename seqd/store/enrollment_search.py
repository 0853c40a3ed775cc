"""Enrollments across sequences: by contact, or sequence after sequence in id order.

A page is built from the sequences' own listings (store/enrollments.py `list`), so it
follows their order: within a sequence the active enrollments by due time, then the others
by id. Filters the indexes cannot answer (`paused_reason`, `updated_since`) are applied to
what was read, and a request reads at most `SCAN_BUDGET` enrollments: a page can then hold
fewer than `limit` items, even none, with a token to go on.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from seqd import ids, models
from seqd.errors import Invalid, NotFound
from seqd.store import calls, codec
from seqd.store.context import StoreContext
from seqd.store.enrollments import (
    Enrollments,
    active_cursor,
    is_active_cursor,
    parse_active_cursor,
)
from seqd.store.sequences import Sequences
from seqd.times import from_rfc3339

SCAN_BUDGET = 1000
# An export's page (its scan budget too: a page reads at most this many).
EXPORT_PAGE = 1000
# A page token here is "<sequence id>|<that sequence's listing cursor>" ("" its start).
_SEP = "|"


class EnrollmentFilter(msgspec.Struct, frozen=True, kw_only=True):
    contact_id: str | None = None
    sequence_id: str | None = None
    status: models.EnrollmentStatus | None = None
    paused_reason: str | None = None
    updated_since: int | None = None  # ms

    def statuses(self) -> list[str]:
        if self.status is not None:
            return [self.status.value]
        if self.paused_reason is not None:
            return [models.EnrollmentStatus.PAUSED.value]
        return [s.value for s in models.EnrollmentStatus]

    def post_filtered(self) -> bool:
        return self.paused_reason is not None or self.updated_since is not None

    def keeps(self) -> Callable[[models.Enrollment], bool]:
        reason, since = self.paused_reason, self.updated_since

        def keep(e: models.Enrollment) -> bool:
            if reason is not None and e.paused_reason != reason:
                return False
            updated = e.updated_at or e.enrolled_at
            return since is None or from_rfc3339(updated) >= since

        return keep


class EnrollmentSearch:
    def __init__(self, store: StoreContext, enrollments: Enrollments, sequences: Sequences) -> None:
        self.store = store
        self.keys = store.keys
        self.enrollments = enrollments
        self.sequences = sequences

    async def page(
        self,
        tenant: str,
        where: EnrollmentFilter,
        limit: int,
        after: str | None,
        *,
        with_total: bool = True,
    ) -> tuple[list[models.Enrollment], str | None, int | None]:
        """A page of the tenant's enrollments matching `where`, the cursor after it (None
        at the end) and the total (None where a post-filter makes it unknown, or not
        `with_total`: an export's pages after the first)."""
        if where.contact_id is not None:
            return await self._of_contact(tenant, where, limit, after)
        sids = await self._sequence_ids(tenant, where)
        start, inner = "", None
        if after is not None:
            start, sep, rest = after.partition(_SEP)
            if not sep or not ids.is_valid(start, ids.SEQUENCE):
                raise Invalid.field("query.page_token", "not a page token from this API")
            inner = rest or None
        out: list[models.Enrollment] = []
        keep, statuses, read = where.keeps(), where.statuses(), 0
        todo = [s for s in sids if s >= start]
        for n, sid in enumerate(todo):
            cursor = inner if sid == start else None
            while True:
                want = limit - len(out)
                page, nxt, _ = await self.enrollments.list(
                    tenant, sid, limit=want, after=cursor, statuses=statuses, with_total=False
                )
                read += len(page)
                out += [e for e in page if keep(e)]
                if nxt is None:
                    break
                cursor = nxt
                if len(out) >= limit or read >= SCAN_BUDGET:
                    return out, f"{sid}{_SEP}{nxt}", await self._total(where, sids, with_total)
            if len(out) >= limit or read >= SCAN_BUDGET:
                following = todo[n + 1 :]
                token = f"{following[0]}{_SEP}" if following else None
                return out, token, await self._total(where, sids, with_total)
        return out, None, await self._total(where, sids, with_total)

    async def export_page(
        self, tenant: str, where: EnrollmentFilter, after: str | None
    ) -> tuple[list[models.Enrollment], str | None]:
        """Up to EXPORT_PAGE enrollments matching `where` and the cursor after them: an
        export's order, sequence by sequence and within one shard by shard (a sequence's
        active ones in queue order, then the others by id), so each read is one shard's,
        not the merge of all shards a listing page needs. Cursor: "<sequence>|<shard>|<the
        shard's position>"; by contact, as `page`."""
        if where.contact_id is not None:
            page, cursor, _ = await self._of_contact(tenant, where, EXPORT_PAGE, after)
            return page, cursor
        sids = await self._sequence_ids(tenant, where)
        start, shard, inner = "", 0, ""
        if after is not None:
            parts = after.split(_SEP, 2)
            if (
                len(parts) != 3
                or not ids.is_valid(parts[0], ids.SEQUENCE)
                or not (parts[1].isdigit() and int(parts[1]) < self.keys.shards)
            ):
                raise Invalid.field("query.page_token", "not a page token from this API")
            start, shard, inner = parts[0], int(parts[1]), parts[2]
        statuses = where.statuses()
        keep = where.keeps()
        todo = [s for s in sids if s >= start]
        for n, sid in enumerate(todo):
            if sid != start:
                shard, inner = 0, ""
            while shard < self.keys.shards:
                found, inner_next = await self._shard_page(sid, shard, statuses, inner)
                rows = [e for e in await self._read(tenant, found) if keep(e)]
                if inner_next is not None:
                    return rows, f"{sid}{_SEP}{shard}{_SEP}{inner_next}"
                shard, inner = shard + 1, ""
                if rows:
                    if shard < self.keys.shards:
                        return rows, f"{sid}{_SEP}{shard}{_SEP}"
                    following = todo[n + 1 :]
                    return rows, (f"{following[0]}{_SEP}0{_SEP}" if following else None)
        return [], None

    async def _shard_page(
        self, sid: str, shard: int, statuses: list[str], inner: str
    ) -> tuple[list[str], str | None]:
        """Up to EXPORT_PAGE ids of one sequence in one shard after `inner` ("" its
        start, "a:<score>:<id>" in the queue, "r:" or an id in the other statuses), and
        the position after them (None when the shard has no more)."""
        page: list[str] = []
        if "active" in statuses and (inner == "" or is_active_cursor(inner)):
            score, eid = parse_active_cursor(inner) if inner else ("", "")
            reply = await self.store.runner.run(
                calls.page_queue(self.keys, shard, sid, score, eid, EXPORT_PAGE)
            )
            page = [reply[i] for i in range(0, len(reply), 2)]
            if len(page) == EXPORT_PAGE:
                return page, active_cursor(reply[-1], page[-1])
            inner = "r:"
        others = [s for s in statuses if s != "active"]
        if not others:
            return page, None
        after = None if inner in ("", "r:") else inner
        index = [self.keys.status_index(shard, sid, status) for status in others]
        rest, more = await self.store.merged_range(index, after, EXPORT_PAGE - len(page))
        page += rest
        if more:
            return page, (rest[-1] if rest else "r:")
        return page, None

    async def _read(self, tenant: str, eids: list[str]) -> list[models.Enrollment]:
        pipe = self.store.client.pipeline(transaction=False)
        for eid in eids:
            pipe.hgetall(self.keys.enrollment(self._shard(eid), eid))
        rows = await pipe.execute() if eids else []
        return [
            codec.enrollment(eid, h)
            for eid, h in zip(eids, rows, strict=True)
            if h.get("t") == tenant
        ]

    async def _sequence_ids(self, tenant: str, where: EnrollmentFilter) -> list[str]:
        if where.sequence_id is not None:
            return [where.sequence_id]
        listed = await self.store.client.zrange(self.keys.sequences(tenant), "-", "+", bylex=True)
        return [str(s) for s in listed]

    async def _total(
        self, where: EnrollmentFilter, sids: list[str], counted: bool = True
    ) -> int | None:
        if where.post_filtered() or not counted:
            return None
        stats = await self.sequences.stats(sids)
        wanted = where.statuses()
        return sum(int(getattr(s, status)) for s in stats.values() for status in wanted)

    async def _of_contact(
        self, tenant: str, where: EnrollmentFilter, limit: int, after: str | None
    ) -> tuple[list[models.Enrollment], str | None, int | None]:
        """The contact's enrollments matching `where`, in id order: per sequence its live
        one and its last ended one (the `e:` and `x:` fields of its hash)."""
        cid = where.contact_id
        assert cid is not None
        h = {}
        if ids.is_valid(cid, ids.CONTACT):
            h = await self.store.client.hgetall(self.keys.contact(self._shard(cid), cid))
        if h.get("tenant") != tenant:
            raise NotFound(f"no contact {cid}", field="query.contact_id")
        eids = sorted(
            {
                str(v)
                for k, v in h.items()
                if str(k)[:2] in ("e:", "x:")
                and (where.sequence_id is None or str(k)[2:] == where.sequence_id)
            }
        )
        keep, statuses = where.keeps(), set(where.statuses())
        found = [
            e for e in await self._read(tenant, eids) if e.status.value in statuses and keep(e)
        ]
        rest = [e for e in found if after is None or e.id > after]
        page = rest[:limit]
        more = len(rest) > limit
        return page, (page[-1].id if more else None), len(found)

    def _shard(self, some_id: str) -> int:
        return ids.shard_of(some_id, self.keys.shards)
