"""Senders: one JSON record per sender in a HASH under its tenant's tag, their budgets in a
second HASH beside it (takeBudget-1.lua), and a deployment-wide index of their addresses.

Records change by compare-and-set (`putSender`), as webhook endpoints do. An address
belongs to one sender of one tenant: the index (global tag) is claimed before the record
is written and released after it is deleted, so a crash in between leaves at most an
entry naming a sender that no longer exists, which `owner` ignores and a new claim takes
over.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import msgspec
import structlog

from seqd import ids
from seqd.errors import Conflict, FieldError, Invalid, NotFound
from seqd.models import SenderPools
from seqd.senders import budget
from seqd.senders.models import SenderRecord
from seqd.store import calls
from seqd.store.cas import swap
from seqd.store.scripts import ScriptError

if TYPE_CHECKING:
    from seqd.store.context import StoreContext

log = structlog.get_logger(__name__)

# Writers that lose the compare-and-set race re-read and retry this many times.

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(SenderRecord).decode


class SenderRecords:
    def __init__(self, store: StoreContext) -> None:
        self.store = store
        self.keys = store.keys
        # Tenant -> changes made through this process: a reader's cache (the dispatcher's)
        # sees a change made here at once, and others' within its refresh interval.
        self.changes: dict[str, int] = {}

    def _changed(self, tenant: str) -> None:
        self.changes[tenant] = self.changes.get(tenant, 0) + 1

    async def _put(self, tenant: str, sid: str, expected: str, record: str, limit: int) -> None:
        await self.store.runner.run(
            calls.put_sender(self.keys, tenant, sid, expected, record, limit)
        )
        self._changed(tenant)

    async def _raw(self, tenant: str, sid: str) -> str:
        raw = None
        if ids.is_valid(sid, ids.SENDER):
            raw = await self.store.client.hget(self.keys.senders(tenant), sid)
        if raw is None:
            raise NotFound(f"no sender {sid}", field="id")
        return str(raw)

    async def _claim(self, tenant: str, record: SenderRecord) -> None:
        """Make `record`'s address its own in the index; Conflict when a live sender has it."""
        client = self.store.client
        index = self.keys.sender_addresses()
        field = f"{record.channel}:{record.address}"
        mine = f"{tenant} {record.id}"
        if await client.hsetnx(index, field, mine):
            return
        entry = await client.hget(index, field)
        if await self._holder(
            None if entry is None else str(entry), record.channel, record.address
        ):
            raise Conflict(
                f"{record.address} is already a sender (of this or another tenant)",
                field="address",
            )
        await client.hset(index, field, mine)

    async def _release(self, tenant: str, record: SenderRecord) -> None:
        index = self.keys.sender_addresses()
        field = f"{record.channel}:{record.address}"
        if await self.store.client.hget(index, field) == f"{tenant} {record.id}":
            await self.store.client.hdel(index, field)

    async def _holder(
        self, entry: str | None, channel: str, address: str
    ) -> tuple[str, SenderRecord] | None:
        """The live sender an index entry names, if it still has that address."""
        if not entry:
            return None
        tenant, _, sid = entry.partition(" ")
        raw = await self.store.client.hget(self.keys.senders(tenant), sid)
        if raw is None:
            return None
        record = _decode(raw)
        if record.channel != channel or record.address != address:
            return None
        return tenant, record

    async def create(self, tenant: str, record: SenderRecord, *, max_senders: int) -> None:
        await self._claim(tenant, record)
        try:
            await self._put(tenant, record.id, "", _encode(record).decode(), max_senders)
        except ScriptError as exc:
            await self._release(tenant, record)
            if exc.code == "LIMIT":
                raise Conflict(
                    f"a tenant has at most {exc.detail} senders; delete one first"
                ) from None
            raise

    async def get(self, tenant: str, sid: str) -> SenderRecord:
        return _decode(await self._raw(tenant, sid))

    async def all(self, tenant: str) -> list[SenderRecord]:
        """The tenant's senders, in id order. A record that does not decode (written by
        hand, or under other rules) is left out and logged: the dispatcher reads this, and
        one bad record must not stop every tenant's sends."""
        out = []
        for raw in await self.store.client.hvals(self.keys.senders(tenant)):
            try:
                out.append(_decode(raw))
            except msgspec.DecodeError as exc:
                log.error("senders.bad_record", tenant=tenant, error=str(exc))
        return sorted(out, key=lambda r: r.id)

    async def update(
        self, tenant: str, sid: str, change: Callable[[SenderRecord], SenderRecord]
    ) -> SenderRecord:
        """Apply `change` to the stored record, re-reading when another writer got first."""

        async def write(raw: str) -> SenderRecord:
            record = change(_decode(raw))
            await self._put(tenant, sid, raw, _encode(record).decode(), 0)
            return record

        return (await swap(lambda: self._raw(tenant, sid), write, f"sender {sid}"))[1]

    async def delete(self, tenant: str, sid: str) -> None:
        async def write(raw: str) -> None:
            await self._put(tenant, sid, raw, "", 0)

        raw, _ = await swap(lambda: self._raw(tenant, sid), write, f"sender {sid}")
        await self._release(tenant, _decode(raw))

    async def owner(self, channel: str, address: str) -> tuple[str, SenderRecord] | None:
        """The tenant and sender whose address (normalised) `address` is, if any."""
        entry = await self.store.client.hget(self.keys.sender_addresses(), f"{channel}:{address}")
        return await self._holder(None if entry is None else str(entry), channel, address)

    async def check_pools(self, tenant: str, pools: SenderPools) -> None:
        """Invalid naming each id of `pools` that is not a sender of `tenant` on that channel."""
        wanted = pools.sms + pools.email
        if not wanted:
            return
        known = {r.id: r.channel for r in await self.all(tenant)}
        errors = []
        for kind in ("sms", "email"):
            seen: set[str] = set()
            for i, sid in enumerate(pools.of(kind)):
                path = f"senders.{kind}[{i}]"
                channel = known.get(sid)
                if channel is None:
                    errors.append(FieldError(path, f"no sender {sid}"))
                elif channel != kind:
                    errors.append(FieldError(path, f"sender {sid} sends {channel}, not {kind}"))
                elif sid in seen:
                    errors.append(FieldError(path, f"sender {sid} is named twice"))
                seen.add(sid)
        if errors:
            raise Invalid(errors)

    # -- budgets ----------------------------------------------------------------------------
    def take_call(
        self,
        tenant: str,
        asks: Sequence[budget.Ask],
        records: Mapping[str, SenderRecord],
        now: int,
        *,
        peek: bool = False,
    ) -> calls.Call:
        """The takeBudget call for `asks` (every sender they name in `records`), to run alone
        (`take`) or in another round trip (the dispatcher's lease); `budget.decode` reads
        its reply."""
        mode = "peek" if peek else "take"
        return calls.take_budget(self.keys, tenant, now, mode, budget.encode(asks, records, now))

    async def take(
        self,
        tenant: str,
        asks: Sequence[budget.Ask],
        records: Mapping[str, SenderRecord],
        now: int,
        *,
        peek: bool = False,
    ) -> list[budget.Answer]:
        reply = await self.store.runner.run(self.take_call(tenant, asks, records, now, peek=peek))
        return budget.decode(asks, reply)

    async def usage(
        self, tenant: str, records: Sequence[SenderRecord], now: int
    ) -> list[budget.Answer]:
        """Each sender's budget now, as a take would find it (nothing taken)."""
        if not records:
            return []
        asks = [budget.Ask("", (r.id,)) for r in records]
        return await self.take(tenant, asks, {r.id: r for r in records}, now, peek=True)
