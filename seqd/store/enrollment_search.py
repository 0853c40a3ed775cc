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
from seqd.store import codec
from seqd.store.context import StoreContext
from seqd.store.enrollments import Enrollments
from seqd.store.sequences import Sequences
from seqd.times import from_rfc3339

SCAN_BUDGET = 1000
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
        self, tenant: str, where: EnrollmentFilter, limit: int, after: str | None
    ) -> tuple[list[models.Enrollment], str | None, int | None]:
        """A page of the tenant's enrollments matching `where`, the cursor after it (None
        at the end) and the total (None where a post-filter makes it unknown)."""
        if where.contact_id is not None:
            return await self._of_contact(tenant, where, limit, after)
        if where.sequence_id is not None:
            sids = [where.sequence_id]
        else:
            listed = await self.store.client.zrange(
                self.keys.sequences(tenant), "-", "+", bylex=True
            )
            sids = [str(s) for s in listed]
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
                    tenant, sid, limit=want, after=cursor, statuses=statuses
                )
                read += len(page)
                out += [e for e in page if keep(e)]
                if nxt is None:
                    break
                cursor = nxt
                if len(out) >= limit or read >= SCAN_BUDGET:
                    return out, f"{sid}{_SEP}{nxt}", await self._total(where, sids)
            if len(out) >= limit or read >= SCAN_BUDGET:
                following = todo[n + 1 :]
                token = f"{following[0]}{_SEP}" if following else None
                return out, token, await self._total(where, sids)
        return out, None, await self._total(where, sids)

    async def _total(self, where: EnrollmentFilter, sids: list[str]) -> int | None:
        if where.post_filtered():
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
        pipe = self.store.client.pipeline(transaction=False)
        for eid in eids:
            pipe.hgetall(self.keys.enrollment(self._shard(eid), eid))
        keep, statuses = where.keeps(), set(where.statuses())
        found = [
            e
            for e in (
                codec.enrollment(eid, row)
                for eid, row in zip(eids, await pipe.execute(), strict=True)
                if row.get("t") == tenant
            )
            if e.status.value in statuses and keep(e)
        ]
        rest = [e for e in found if after is None or e.id > after]
        page = rest[:limit]
        more = len(rest) > limit
        return page, (page[-1].id if more else None), len(found)

    def _shard(self, some_id: str) -> int:
        return ids.shard_of(some_id, self.keys.shards)
