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
from seqd.errors import Conflict, Invalid, NotFound
from seqd.kinds import Channel
from seqd.models import SequenceStatus
from seqd.store import calls, mirrors, screening
from seqd.store.context import StoreContext
from seqd.store.scripts import ScriptError
from seqd.times import now_ms, to_rfc3339

# Enrollments one syncSequence call handles: bounds how long it holds Redis (~1 ms/100).
SWEEP_BATCH = 500
_decode_seq = msgspec.json.Decoder(models.Sequence).decode
_decode_steps = msgspec.json.Decoder(list[models.Step]).decode
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
        steps = models.build_steps(body.steps, body.track)
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
            track=body.track,
            reenroll=body.reenroll,
            exclusive=body.exclusive,
            exit_on=body.exit_on,
            created_at=now,
            updated_at=now,
        )
        version = await self._put(tenant, seq, 0)
        await self.sync(tenant, seq, version, [])
        return seq

    async def _put(
        self,
        tenant: str,
        seq: models.Sequence,
        expected: int,
        kept: tuple[int, list[models.Step]] | None = None,
    ) -> int:
        """Write the document; `kept`: the version and steps it replaces, kept for the
        enrollments that run on them."""
        doc = msgspec.structs.replace(seq, stats=models.SequenceStats())
        old = None if kept is None else (kept[0], _encode(kept[1]))
        put = calls.put_sequence(
            self.keys, tenant, seq.id, _encode(doc), seq.status.value, expected, old
        )
        return int(await self.store.runner.run(put))

    async def steps_at(self, tenant: str, sid: str, steps_version: int) -> list[models.Step]:
        """The steps of an earlier version (NotFound when it was not kept)."""
        key = self.keys.sequence(tenant, sid)
        got = await self.store.client.hget(key, f"steps:{steps_version}")
        if got is None:
            raise NotFound(f"no version {steps_version} of sequence {sid}", field="version")
        return _decode_steps(got)

    async def _kept(self, tenant: str, sid: str) -> dict[int, list[models.Step]]:
        """The earlier versions of the sequence's steps that are kept, by version."""
        got: dict[str, str] = await self.store.client.hgetall(  # type: ignore[assignment]
            self.keys.sequence(tenant, sid)
        )
        return {
            int(name.removeprefix("steps:")): _decode_steps(text)
            for name, text in got.items()
            if name.startswith("steps:")
        }

    async def _moves(self, tenant: str, seq: models.Sequence) -> bytes:
        """The retarget sweeps' JSON (syncSequence-3.lua ARGV[9]): every kept version's
        waits and its steps' places in the new version (`step_map`), and the new version
        and its step count."""
        kept = await self._kept(tenant, seq.id)
        waits = {str(v): [_wait_ms(step) for step in steps] for v, steps in kept.items()}
        waits[str(seq.version)] = [_wait_ms(step) for step in seq.steps]
        same = {str(v): step_map(steps, seq.steps) for v, steps in kept.items()}
        return _encode({"v": str(seq.version), "n": len(seq.steps), "w": waits, "m": same})

    async def change(
        self,
        tenant: str,
        sid: str,
        *,
        patch: models.SequencePatch | None = None,
        status: SequenceStatus | None = None,
        allowed_from: frozenset[SequenceStatus] | None = None,
        winner: tuple[int, str] | None = None,
    ) -> models.Sequence:
        """Read-modify-write with optimistic concurrency; then bring the shards in line.
        `winner`: (step index, variant id) to send alone from now on."""
        for _ in range(_RETRIES):
            old, version = await self._read(tenant, sid)
            if old.status == SequenceStatus.ARCHIVED and status != SequenceStatus.ARCHIVED:
                raise Conflict("the sequence is archived", status=old.status.value)
            if allowed_from is not None and old.status not in allowed_from:
                raise Conflict(
                    f"cannot go from {old.status.value} to {status}", status=old.status.value
                )
            new = self._apply(old, patch, status)
            if patch is not None and patch.steps is not msgspec.UNSET:
                new = _with_kept_winners(old, new)
            if winner is not None:
                new = _with_winner(new, *winner)
            # Changed steps are a new version; the old one is kept for its enrollments.
            kept = None
            if patch is not None and patch.steps is not msgspec.UNSET and new.steps != old.steps:
                new.version = old.version + 1
                kept = (old.version, old.steps)
            try:
                new_version = await self._put(tenant, new, version, kept)
            except ScriptError as exc:
                if exc.code == "CONFLICT":
                    continue
                if exc.code == "NOT_FOUND":
                    raise NotFound(f"no sequence {sid}", field="id") from None
                raise
            sweeps = []
            moves = b""
            # "all" moves the live enrollments of every older version to these steps
            # (also when they equal the newest version's: no new version then).
            if patch is not None and patch.steps is not msgspec.UNSET and patch.apply_to == "all":
                sweeps += ["retarget_active", "retarget_paused"]
                moves = await self._moves(tenant, new)
            if new.status == SequenceStatus.ARCHIVED:
                sweeps.append("archive")
            await self.sync(tenant, new, new_version, sweeps, moves)
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
                "track",
                "reenroll",
                "exclusive",
            ):
                value = getattr(patch, field)
                if value is not msgspec.UNSET:
                    changes[field] = value
            if patch.steps is not msgspec.UNSET:
                changes["steps"] = models.build_steps(patch.steps, changes.get("track", old.track))
            elif "track" in changes:
                # The segments of SMS steps count their links as tracked or not; a step's
                # chosen A/B winner stays.
                rebuilt = models.build_steps(
                    [_step_in(step) for step in old.steps], changes["track"]
                )
                changes["steps"] = [
                    msgspec.structs.replace(new, winner=was.winner, winner_at=was.winner_at)
                    for new, was in zip(rebuilt, old.steps, strict=True)
                ]
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

    async def sync(
        self,
        tenant: str,
        seq: models.Sequence,
        version: int,
        sweeps: list[str],
        moves: bytes = b"",
    ) -> None:
        """Write the mirror in every shard, then run each sweep to completion. The mirror's
        step count is the most of any kept version: the shards complete an enrollment
        past it, and one on an older version may have more steps than the newest."""
        kept = await self._kept(tenant, seq.id)
        count = max([len(seq.steps), *(len(steps) for steps in kept.values())])
        mirror = mirrors.mirror(seq.status.value, version, count)
        # The contact fields a claim reads: those of every version an enrollment may be on.
        every = [step for steps in (seq.steps, *kept.values()) for step in steps]
        fields = mirrors.fields_text(every, seq.schedule_id is not None)
        for sweep in ["", *sweeps]:
            cursors = {shard: "" for shard in range(self.keys.shards)}
            while cursors:
                now = now_ms()
                trip = [
                    calls.sync_sequence(
                        self.keys,
                        shard,
                        now,
                        seq.id,
                        mirror,
                        sweep,
                        SWEEP_BATCH,
                        cursor,
                        fields,
                        moves if sweep.startswith("retarget") else b"",
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


def _step_in(step: models.Step) -> models.StepIn:
    """A stored step as the input it was built from (its computed fields left out)."""
    given = msgspec.to_builtins(step)
    for computed in ("segments", "encoding", "winner", "winner_at"):
        given.pop(computed, None)
    return msgspec.convert(given, models.StepIn)


def _wait_ms(step: models.Step) -> int:
    """A step's wait as a plain duration (a retarget re-times by it; the send-time check
    then applies the windows and send_at)."""
    return step.wait_minutes * 60_000 + step.wait_days * 86_400_000


def _with_winner(seq: models.Sequence, index: int, variant: str) -> models.Sequence:
    """`seq` with step `index` sending only `variant` from now on (its others kept)."""
    if not 0 <= index < len(seq.steps):
        raise NotFound(f"sequence {seq.id} has no step {index}", field="n")
    step = seq.steps[index]
    if not step.variants:
        raise Conflict(f"step {index} of sequence {seq.id} has no variants", field="n")
    names = [v.id for v in step.variants]
    if variant not in names:
        raise Invalid.field("variant", f"not a variant of step {index} ({', '.join(names)})")
    steps = list(seq.steps)
    steps[index] = msgspec.structs.replace(step, winner=variant, winner_at=seq.updated_at)
    return msgspec.structs.replace(seq, steps=steps)


# What a step is, apart from when it is sent and the winner chosen on it.
_NOT_WHAT = {"wait_minutes": 0, "wait_days": 0, "send_at": None, "winner": None, "winner_at": None}


def _what(step: models.Step) -> models.Step:
    return msgspec.structs.replace(step, **_NOT_WHAT)


def step_map(old: list[models.Step], new: list[models.Step], *, edited: bool = True) -> list[int]:
    """For each step of `old`, the index of the same step in `new`, or -1. The same step is
    an identical one (its timing and winner aside), at its index or wherever it moved; with
    `edited`, else the step now at its index when it is of the same kind and not another
    step's identical match (a step edited in place: its text changed, say)."""
    out = [-1] * len(old)
    free = set(range(len(new)))
    olds, news = [_what(s) for s in old], [_what(s) for s in new]
    for j, what in enumerate(olds):
        if j < len(news) and news[j] == what:
            out[j] = j
            free.discard(j)
    for j, what in enumerate(olds):
        if out[j] < 0:
            to = next((t for t in sorted(free) if news[t] == what), -1)
            if to >= 0:
                out[j] = to
                free.discard(to)
    if edited:
        for j, step in enumerate(old):
            if out[j] < 0 and j in free and new[j].kind == step.kind:
                out[j] = j
                free.discard(j)
    return out


def _with_kept_winners(old: models.Sequence, new: models.Sequence) -> models.Sequence:
    """`new` with the winner of each of `old`'s steps on its identical step in `new`: a
    winner belongs to one version's step, and an unchanged step is still that step."""
    steps = list(new.steps)
    for j, to in enumerate(step_map(old.steps, new.steps, edited=False)):
        was = old.steps[j]
        if to >= 0 and was.winner is not None:
            kept = {"winner": was.winner, "winner_at": was.winner_at}
            steps[to] = msgspec.structs.replace(steps[to], **kept)
    return msgspec.structs.replace(new, steps=steps)
