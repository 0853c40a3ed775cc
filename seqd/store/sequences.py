"""Sequences: one document per sequence under its tenant's tag, mirrored into every shard.

Enrollment scripts run in a shard and cannot read the tenant's keys (another slot), so
each shard keeps "<status>:<version>:<steps>" per sequence; `syncSequence` writes that
mirror and sweeps the shard's enrollments when a change requires it (archive, resume,
fewer steps). The document is the source of truth; the mirror never goes back in version.
"""

from __future__ import annotations

from typing import Any

import msgspec

from seqd import ids, models
from seqd.errors import Conflict, NotFound
from seqd.kinds import Channel
from seqd.models import SequenceStatus
from seqd.store import calls, mirrors, screening
from seqd.store.context import StoreContext
from seqd.store.scripts import ScriptError
from seqd.times import now_ms, to_rfc3339

# Enrollments one syncSequence call handles: bounds how long it holds Redis (~1 ms/100).
SWEEP_BATCH = 500
_decode_seq = msgspec.json.Decoder(models.Sequence).decode
_encode = msgspec.json.Encoder().encode
# Writers that lose the optimistic-concurrency race re-read and retry this many times.
_RETRIES = 10


class Sequences:
    def __init__(self, store: StoreContext) -> None:
        self.store = store
        self.keys = store.keys

    async def _read(self, tenant: str, sid: str) -> tuple[models.Sequence, int]:
        if not ids.is_valid(sid, ids.SEQUENCE):
            raise NotFound(f"no sequence {sid}", field="id")
        reply = await self.store.client.hmget(self.keys.sequence(tenant, sid), "doc", "v")
        return self.parse_read(sid, reply)

    async def get_listed(
        self, tenant: str, sid: str
    ) -> tuple[models.Sequence, int, frozenset[Channel]]:
        """`get_versioned` and the suppression lists the tenant has entries on
        (`screening.listed_in`) in one round trip: the enroll paths' first read."""
        pipe = self.store.client.pipeline(transaction=False)
        # A bad id reads the sequence "" that never exists (a keyless ECHO cannot go in a
        # cluster pipeline): the replies stay in step, and parse_read answers NotFound.
        valid = ids.is_valid(sid, ids.SEQUENCE)
        pipe.hmget(self.keys.sequence(tenant, sid if valid else ""), "doc", "v")
        screening.listed_in(pipe, self.store, tenant)
        replies = await pipe.execute()
        seq, version = self.parse_read(sid, replies[0])
        return seq, version, screening.listed_from(replies[1:])

    @staticmethod
    def parse_read(sid: str, reply: Any) -> tuple[models.Sequence, int]:
        if not ids.is_valid(sid, ids.SEQUENCE) or reply[0] is None:
            raise NotFound(f"no sequence {sid}", field="id")
        return _decode_seq(reply[0]), int(reply[1])

    async def get(self, tenant: str, sid: str, *, with_stats: bool = True) -> models.Sequence:
        seq, _ = await self._read(tenant, sid)
        if with_stats:
            seq.stats = (await self.stats([sid]))[sid]
        return seq

    async def get_versioned(self, tenant: str, sid: str) -> tuple[models.Sequence, int]:
        return await self._read(tenant, sid)

    async def stats(self, sids: list[str]) -> dict[str, models.SequenceStats]:
        pipe = self.store.client.pipeline(transaction=False)
        for sid in sids:
            for shard in range(self.keys.shards):
                pipe.hgetall(self.keys.counts(shard, sid))
        rows = await pipe.execute()
        out = {}
        for i, sid in enumerate(sids):
            totals: dict[str, int] = {}
            for row in rows[i * self.keys.shards : (i + 1) * self.keys.shards]:
                for status, count in row.items():
                    totals[status] = totals.get(status, 0) + int(count)
            out[sid] = models.SequenceStats(
                **{s.value: totals.get(s.value, 0) for s in models.EnrollmentStatus}
            )
        return out

    async def create(self, tenant: str, body: models.SequenceCreate) -> models.Sequence:
        steps = models.build_steps(body.steps)
        now = to_rfc3339(now_ms())
        seq = models.Sequence(
            id=ids.new(ids.SEQUENCE),
            name=body.name,
            description=body.description,
            status=SequenceStatus(body.status),
            steps=steps,
            on_reply=body.on_reply,
            on_reply_scope=body.on_reply_scope,
            on_out_of_office=body.on_out_of_office,
            schedule_id=body.schedule_id,
            senders=body.senders,
            rotation=body.rotation,
            exit_on=body.exit_on,
            created_at=now,
            updated_at=now,
        )
        version = await self._put(tenant, seq, 0)
        await self.sync(seq, version, [])
        return seq

    async def _put(self, tenant: str, seq: models.Sequence, expected: int) -> int:
        doc = msgspec.structs.replace(seq, stats=models.SequenceStats())
        put = calls.put_sequence(
            self.keys, tenant, seq.id, _encode(doc), seq.status.value, expected
        )
        return int(await self.store.runner.run(put))

    async def change(
        self,
        tenant: str,
        sid: str,
        *,
        patch: models.SequencePatch | None = None,
        status: SequenceStatus | None = None,
        allowed_from: frozenset[SequenceStatus] | None = None,
    ) -> models.Sequence:
        """Read-modify-write with optimistic concurrency; then bring the shards in line."""
        for _ in range(_RETRIES):
            old, version = await self._read(tenant, sid)
            if old.status == SequenceStatus.ARCHIVED and status != SequenceStatus.ARCHIVED:
                raise Conflict("the sequence is archived", status=old.status.value)
            if allowed_from is not None and old.status not in allowed_from:
                raise Conflict(
                    f"cannot go from {old.status.value} to {status}", status=old.status.value
                )
            new = self._apply(old, patch, status)
            try:
                new_version = await self._put(tenant, new, version)
            except ScriptError as exc:
                if exc.code == "CONFLICT":
                    continue
                if exc.code == "NOT_FOUND":
                    raise NotFound(f"no sequence {sid}", field="id") from None
                raise
            sweeps = []
            if len(new.steps) < len(old.steps):
                sweeps += ["shrink_active", "shrink_paused"]
            if new.status == SequenceStatus.ARCHIVED:
                sweeps.append("archive")
            await self.sync(new, new_version, sweeps)
            return await self.get(tenant, sid)
        raise Conflict("the sequence is being changed by another request; try again")

    @staticmethod
    def _apply(
        old: models.Sequence, patch: models.SequencePatch | None, status: SequenceStatus | None
    ) -> models.Sequence:
        changes: dict[str, Any] = {"updated_at": to_rfc3339(now_ms())}
        if status is not None:
            changes["status"] = status
        if patch is not None:
            for field in (
                "name",
                "description",
                "on_reply",
                "on_reply_scope",
                "on_out_of_office",
                "senders",
                "rotation",
                "schedule_id",
            ):
                value = getattr(patch, field)
                if value is not msgspec.UNSET:
                    changes[field] = value
            if patch.steps is not msgspec.UNSET:
                changes["steps"] = models.build_steps(patch.steps)
            if patch.exit_on is not msgspec.UNSET:
                changes["exit_on"] = patch.exit_on
            if patch.status is not msgspec.UNSET:
                target = SequenceStatus(patch.status)
                if target != old.status:
                    if not (old.status == SequenceStatus.DRAFT and target == SequenceStatus.ACTIVE):
                        raise Conflict(
                            f"status {old.status.value} cannot be set to {target.value} here; "
                            "use the pause, resume or delete operations",
                            status=old.status.value,
                        )
                    changes["status"] = target
        return msgspec.structs.replace(old, **changes)

    async def sync(self, seq: models.Sequence, version: int, sweeps: list[str]) -> None:
        """Write the mirror in every shard, then run each sweep to completion."""
        mirror = mirrors.mirror(seq.status.value, version, seq.steps)
        fields = mirrors.fields_text(seq.steps, seq.schedule_id is not None)
        for sweep in ["", *sweeps]:
            cursors = {shard: "" for shard in range(self.keys.shards)}
            while cursors:
                now = now_ms()
                trip = [
                    calls.sync_sequence(
                        self.keys, shard, now, seq.id, mirror, sweep, SWEEP_BATCH, cursor, fields
                    )
                    for shard, cursor in cursors.items()
                ]
                results = await self.store.runner.call_many(trip)
                for (shard, _), result in zip(list(cursors.items()), results, strict=True):
                    if isinstance(result, Exception):
                        raise result
                    done, cursor, _handled = result
                    if done:
                        del cursors[shard]
                    else:
                        cursors[shard] = cursor

    async def all_of(self, tenant: str) -> list[models.Sequence]:
        """Every sequence of the tenant (a tenant has tens to thousands, not millions)."""
        client = self.store.client
        listed = await client.zrange(self.keys.sequences(tenant), "-", "+", bylex=True)
        sids = [str(s) for s in listed]
        pipe = client.pipeline(transaction=False)
        for sid in sids:
            pipe.hget(self.keys.sequence(tenant, sid), "doc")
        return [_decode_seq(d) for d in await pipe.execute() if d]

    async def list(
        self, tenant: str, *, limit: int, after: str | None, status: str | None
    ) -> tuple[list[models.Sequence], str | None, int]:
        key = self.keys.sequences(tenant)
        client = self.store.client
        all_ids = [str(s) for s in await client.zrange(key, "-", "+", bylex=True)]
        if status is not None:
            pipe = client.pipeline(transaction=False)
            for sid in all_ids:
                pipe.hget(self.keys.sequence(tenant, sid), "st")
            statuses = await pipe.execute()
            all_ids = [s for s, st in zip(all_ids, statuses, strict=True) if st == status]
        total = len(all_ids)
        start = 0 if after is None else next((i for i, s in enumerate(all_ids) if s > after), total)
        page = all_ids[start : start + limit]
        pipe = client.pipeline(transaction=False)
        for sid in page:
            pipe.hget(self.keys.sequence(tenant, sid), "doc")
        docs = await pipe.execute()
        seqs = [_decode_seq(d) for d in docs if d]
        stats = await self.stats([s.id for s in seqs])
        for seq in seqs:
            seq.stats = stats[seq.id]
        more = start + limit < total
        return seqs, (page[-1] if more and page else None), total
