"""Schedules: one JSON document per schedule in a HASH under its tenant's tag.

Changed by compare-and-set (`putEndpoint`, the tenant hash's record script): two PATCHes
cannot overwrite each other's change, and each bumps the version the dispatcher's
calendars are kept by.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from seqd import ids
from seqd.errors import Conflict, NotFound
from seqd.schedules import Schedule, ScheduleCreate, SchedulePatch, check, patched
from seqd.store.cas import swap
from seqd.store.context import StoreContext
from seqd.store.scripts import ScriptError
from seqd.times import now_ms, to_rfc3339

# Schedules a tenant may have: a schedule is a shared policy, not per contact.
MAX_PER_TENANT = 1000
# Writers that lose the compare-and-set race re-read and retry this many times.
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Schedule).decode


class Schedules:
    def __init__(self, store: StoreContext) -> None:
        self.store = store
        self.keys = store.keys

    async def _put(self, tenant: str, sid: str, expected: str, record: str, limit: int) -> None:
        await self.store.runner.call(
            "putEndpoint",
            [self.keys.schedules(tenant)],
            [sid, expected, record, limit],
            tag=self.keys.tenant_tag(tenant),
        )

    async def _raw(self, tenant: str, sid: str) -> str:
        raw = None
        if ids.is_valid(sid, ids.SCHEDULE):
            raw = await self.store.client.hget(self.keys.schedules(tenant), sid)
        if raw is None:
            raise NotFound(f"no schedule {sid}", field="id")
        return str(raw)

    async def create(self, tenant: str, body: ScheduleCreate) -> Schedule:
        now = now_ms()
        stamp = to_rfc3339(now)
        schedule = check(
            Schedule(
                id=ids.new(ids.SCHEDULE, now),
                **msgspec.structs.asdict(body),
                created_at=stamp,
                updated_at=stamp,
            )
        )
        try:
            await self._put(tenant, schedule.id, "", _encode(schedule).decode(), MAX_PER_TENANT)
        except ScriptError as exc:
            if exc.code == "LIMIT":
                raise Conflict(f"a tenant has at most {exc.detail} schedules") from None
            raise
        return schedule

    async def get(self, tenant: str, sid: str) -> Schedule:
        return _decode(await self._raw(tenant, sid))

    async def exists(self, tenant: str, sid: str) -> bool:
        if not ids.is_valid(sid, ids.SCHEDULE):
            return False
        return bool(await self.store.client.hexists(self.keys.schedules(tenant), sid))

    async def all(self, tenant: str) -> list[Schedule]:
        raw = await self.store.client.hvals(self.keys.schedules(tenant))
        return sorted((_decode(r) for r in raw), key=lambda s: s.id)

    async def lookup(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Schedule]:
        """Schedules by (tenant, id), in one round trip; a deleted one is left out."""
        wanted = list(dict.fromkeys(pairs))
        pipe = self.store.client.pipeline(transaction=False)
        for tenant, sid in wanted:
            pipe.hget(self.keys.schedules(tenant), sid)
        rows = await pipe.execute()
        return {
            pair: _decode(row) for pair, row in zip(wanted, rows, strict=True) if row is not None
        }

    async def change(self, tenant: str, sid: str, patch: SchedulePatch) -> Schedule:
        async def write(raw: str) -> Schedule:
            schedule = check(patched(_decode(raw), patch, to_rfc3339(now_ms())))
            await self._put(tenant, sid, raw, _encode(schedule).decode(), 0)
            return schedule

        return (await swap(lambda: self._raw(tenant, sid), write, f"schedule {sid}"))[1]

    async def delete(self, tenant: str, sid: str) -> Schedule:
        async def write(raw: str) -> None:
            await self._put(tenant, sid, raw, "", 0)

        raw, _ = await swap(lambda: self._raw(tenant, sid), write, f"schedule {sid}")
        return _decode(raw)
