"""Replies, opt-outs, bounces, delivery reports and contact events (goals) as changes to a
contact's enrollments.

The scripts run in the contact's shard but need each sequence's step kinds and `on_reply`,
which live under the tenant's tag: they are read here and passed in with the version they
were read at; a script that finds the shard's mirror at another version answers STALE and
the call is repeated with fresh documents, so a decision never rests on old steps.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from seqd import goals, ids, kinds
from seqd.accounts import FIELD
from seqd.errors import NotFound
from seqd.models import Sequence
from seqd.store import calls
from seqd.store.context import StoreContext
from seqd.store.scripts import ScriptError
from seqd.store.sequences import Sequences
from seqd.times import now_ms

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
# A sequence changing under one call this many times in a row is a bug, not a race.
_STALE_RETRIES = 5
# Reads the ids of the sequences a call is about (again, after a STALE answer).
SequenceIds = Callable[[], Awaitable[set[str]]]
# The values a script takes per sequence after its id, version and step kinds.
SequenceExtra = Callable[[Sequence], Awaitable[list[str | int]]]


async def _no_extra(seq: Sequence) -> list[str | int]:
    return []


async def _on_reply(seq: Sequence) -> list[str | int]:
    return [seq.on_reply]


async def _on_reply_scope(seq: Sequence) -> list[str | int]:
    return [seq.on_reply, seq.on_reply_scope]


def _fixed(sids: set[str]) -> SequenceIds:
    async def read() -> set[str]:
        return sids

    return read


class Reaction(msgspec.Struct, frozen=True):
    """What a reply did to one enrollment: paused | completed | not_active | not_sent (and
    ignored, for an out-of-office reply)."""

    enrollment_id: str
    outcome: str


class NewContactEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A contact event to record; times in ms."""

    id: str
    name: str
    properties: dict[str, Any]
    occurred_at: int


class RecordedEvent(msgspec.Struct, frozen=True):
    """A contact event as its first recording wrote it (`data`: id, contact_id, name,
    properties, occurred_at and recorded_at in ms, `completed`: the enrollments its goal
    completed), and whether this call only repeated it."""

    repeated: bool
    data: dict[str, Any]


class DeliveryReport(msgspec.Struct, frozen=True):
    recorded: bool
    previous: str | None


class Lifecycle:
    def __init__(self, store: StoreContext, sequences: Sequences) -> None:
        self.store = store
        self.sequences = sequences
        self.keys = store.keys

    def shard_of_value(self, value: str) -> int:
        """Where events about a phone or address that no contact holds go."""
        return zlib.crc32(value.encode()) % self.keys.shards

    async def _sequence_args(
        self, tenant: str, sids: set[str], extra: SequenceExtra
    ) -> list[str | int]:
        order = sorted(sids)
        read = self.sequences.get_versioned
        docs = await asyncio.gather(*(read(tenant, sid) for sid in order), return_exceptions=True)
        args: list[str | int] = []
        for sid, doc in zip(order, docs, strict=True):
            if isinstance(doc, NotFound):
                continue  # deleted meanwhile: its enrollments are being cancelled
            if isinstance(doc, BaseException):
                raise doc
            seq, version = doc
            args += [sid, version, kinds.letters([step.kind for step in seq.steps])]
            args += await extra(seq)
        return args

    def _live_sequences(self, shard: int, cid: str) -> SequenceIds:
        async def read() -> set[str]:
            fields: list[str] = await self.store.client.hkeys(  # type: ignore[assignment]
                self.keys.contact(shard, cid)
            )
            return {f[2:] for f in fields if f.startswith("e:")}

        return read

    async def _call_fresh(
        self,
        build: Callable[[list[str | int]], calls.Call],
        tenant: str,
        sequences: SequenceIds,
        extra: SequenceExtra = _no_extra,
    ) -> Any:
        """`build(sequence args)` run until no sequence changed under it."""
        for _ in range(_STALE_RETRIES):
            sids = await sequences()
            call = build(await self._sequence_args(tenant, sids, extra))
            try:
                return await self.store.runner.run(call)
            except ScriptError as exc:
                if exc.code != "STALE":
                    raise
        raise RuntimeError(f"{call.name}: sequence kept changing under the call")

    async def _about(
        self, contact_id: str | None, enrollment_id: str | None
    ) -> tuple[int, str, str, SequenceIds] | None:
        """(shard, contact id or "", enrollment id or "", its sequences) of what a message
        from a contact is about: the enrollment named, else all of the contact's."""
        if enrollment_id is not None:
            if not ids.is_valid(enrollment_id, ids.ENROLLMENT):
                return None
            shard = ids.shard_of(enrollment_id, self.keys.shards)
            sid = await self.store.client.hget(self.keys.enrollment(shard, enrollment_id), "s")
            if sid is None:
                return None
            return shard, "", enrollment_id, _fixed({str(sid)})
        if contact_id is None or not ids.is_valid(contact_id, ids.CONTACT):
            return None
        shard = ids.shard_of(contact_id, self.keys.shards)
        return shard, contact_id, "", self._live_sequences(shard, contact_id)

    async def _react(
        self,
        script: Callable[..., calls.Call],
        tenant: str,
        channel: str,
        contact_id: str | None,
        enrollment_id: str | None,
        extra: SequenceExtra,
    ) -> list[Reaction]:
        """Run a contact-message script (`calls.reply_contact`, `calls.absent_contact`) on
        what the message is about."""
        about = await self._about(contact_id, enrollment_id)
        if about is None:
            return []
        shard, cid, target, sequences = about
        now = now_ms()

        def build(args: list[str | int]) -> calls.Call:
            return script(self.keys, shard, now, tenant, cid, target, channel, args)

        flat = await self._call_fresh(build, tenant, sequences, extra)
        return [Reaction(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]

    async def reply(
        self,
        tenant: str,
        channel: str,
        *,
        contact_id: str | None = None,
        enrollment_id: str | None = None,
    ) -> list[Reaction]:
        """Pause (or complete, per `on_reply`) what a reply from a contact is about."""
        return await self._react(
            calls.reply_contact, tenant, channel, contact_id, enrollment_id, _on_reply
        )

    async def reply_account(self, tenant: str, contact_id: str) -> list[Reaction]:
        """Pause (or complete, per `on_reply`) the live enrollments of every contact of the
        account of `contact_id` (seqd/accounts.py) in the sequences with `on_reply_scope =
        "account"`: one script call per shard holding some of the account's contacts."""
        if not ids.is_valid(contact_id, ids.CONTACT):
            return []
        home = ids.shard_of(contact_id, self.keys.shards)
        account = await self.store.client.hget(self.keys.contact(home, contact_id), FIELD)
        if not account:
            return []
        account = str(account)
        shards = range(self.keys.shards)
        pipe = self.store.client.pipeline(transaction=False)
        for shard in shards:
            pipe.smembers(self.keys.account_contacts(shard, tenant, account))
        members = dict(zip(shards, await pipe.execute(), strict=True))
        now = now_ms()
        reactions: list[Reaction] = []
        for shard, cids in members.items():
            if not cids:
                continue

            def build(args: list[str | int], shard: int = shard) -> calls.Call:
                return calls.reply_account(self.keys, shard, now, tenant, account, contact_id, args)

            sequences = self._contacts_sequences(shard, sorted(cids))
            flat = await self._call_fresh(build, tenant, sequences, _on_reply_scope)
            reactions += [Reaction(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        return reactions

    def _contacts_sequences(self, shard: int, cids: list[str]) -> SequenceIds:
        """The sequences the contacts (of one shard) have live enrollments in."""

        async def read() -> set[str]:
            pipe = self.store.client.pipeline(transaction=False)
            for cid in cids:
                pipe.hkeys(self.keys.contact(shard, cid))
            fields: list[list[str]] = await pipe.execute()
            return {f[2:] for one in fields for f in one if f.startswith("e:")}

        return read

    async def absent(
        self,
        tenant: str,
        channel: str,
        resume_at: Callable[[Sequence], Awaitable[int]],
        *,
        contact_id: str | None = None,
        enrollment_id: str | None = None,
    ) -> list[Reaction]:
        """Pause what a contact's out-of-office reply is about, per each sequence's
        `on_out_of_office`; `resume_at(sequence)` says when a `pause_until_return` ends."""

        async def extra(seq: Sequence) -> list[str | int]:
            until = await resume_at(seq) if seq.on_out_of_office == "pause_until_return" else 0
            return [seq.on_out_of_office, until]

        return await self._react(
            calls.absent_contact, tenant, channel, contact_id, enrollment_id, extra
        )

    async def stop_channel(
        self,
        tenant: str,
        channel: str,
        value: str,
        contact_id: str | None,
        *,
        cancel_reason: str,
        event_type: str,
        event: dict[str, Any],
        quiet: bool = False,
    ) -> list[str]:
        """Cancel the contact's enrollments with only `channel` steps left; write the event
        (`quiet`: only if one was cancelled).

        With no contact (a value nobody holds), only the event is written, in the shard
        `shard_of_value` picks.
        """
        if contact_id is not None and ids.is_valid(contact_id, ids.CONTACT):
            shard, cid = ids.shard_of(contact_id, self.keys.shards), contact_id
            sequences = self._live_sequences(shard, cid)
        else:
            shard, cid, sequences = self.shard_of_value(value), "", _fixed(set())
        data = {"id": cid or None, "contact_id": cid or None, "channel": channel, "value": value}
        data |= event
        now, text = now_ms(), _encode(data).decode()

        def build(args: list[str | int]) -> calls.Call:
            return calls.stop_channel(
                self.keys,
                shard,
                now,
                tenant,
                cid,
                channel,
                cancel_reason,
                event_type,
                text,
                quiet,
                args,
            )

        cancelled = await self._call_fresh(build, tenant, sequences)
        return list(cancelled)

    async def emit(
        self,
        tenant: str,
        event_type: str,
        data: dict[str, Any],
        *,
        contact_id: str | None,
        value: str = "",
    ) -> None:
        """An event that changes nothing, in the contact's shard (or the value's)."""
        if contact_id is not None and ids.is_valid(contact_id, ids.CONTACT):
            shard = ids.shard_of(contact_id, self.keys.shards)
        else:
            shard = self.shard_of_value(value)
        text = _encode(data).decode()
        await self.store.runner.run(
            calls.emit_event(self.keys, shard, now_ms(), tenant, event_type, text)
        )

    async def record_event(
        self, tenant: str, contact_id: str, event: NewContactEvent, *, retention_ms: int
    ) -> RecordedEvent:
        """Record a contact event once per id and complete the contact's live enrollments
        whose sequence has it as a goal (one script in the contact's shard); NotFound when
        the tenant has no such contact."""
        if not ids.is_valid(contact_id, ids.CONTACT):
            raise NotFound(f"no contact {contact_id}", field="id")
        shard = ids.shard_of(contact_id, self.keys.shards)
        now = now_ms()
        text = _encode(
            {
                "id": event.id,
                "contact_id": contact_id,
                "name": event.name,
                "properties": event.properties,
                "occurred_at": event.occurred_at,
                "recorded_at": now,
            }
        ).decode()
        live = self._live_sequences(shard, contact_id)
        for _ in range(_STALE_RETRIES):
            order = sorted(await live())
            read = self.sequences.get_versioned
            docs = await asyncio.gather(*(read(tenant, s) for s in order), return_exceptions=True)
            args: list[str | int] = []
            for sid, doc in zip(order, docs, strict=True):
                if isinstance(doc, NotFound):
                    args += [sid, -1, ""]
                    continue
                if isinstance(doc, BaseException):
                    raise doc
                seq, version = doc
                met = goals.met(seq.exit_on, event.name, event.properties)
                args += [sid, version, "" if met is None else event.name]
            call = calls.record_contact_event(
                self.keys, shard, now, tenant, contact_id, event.id, text, retention_ms, args
            )
            try:
                repeated, stored = await self.store.runner.run(call)
            except ScriptError as exc:
                if exc.code == "NOT_FOUND":
                    raise NotFound(f"no contact {contact_id}", field="id") from None
                if exc.code != "STALE":
                    raise
                continue
            return RecordedEvent(bool(repeated), _decode(stored))
        raise RuntimeError("recordContactEvent: sequence kept changing under the call")

    async def record_delivery(
        self,
        tenant: str,
        enrollment_id: str,
        step: int,
        status: str,
        rank: int,
        error_code: str,
        *,
        event_type: str,
        event: dict[str, Any],
    ) -> DeliveryReport:
        """Store a step's delivery status unless a later one is stored; NotFound if no such
        enrollment of `tenant`."""
        if not ids.is_valid(enrollment_id, ids.ENROLLMENT):
            raise NotFound(f"no enrollment {enrollment_id}", field="e")
        shard = ids.shard_of(enrollment_id, self.keys.shards)
        try:
            recorded, previous = await self.store.runner.run(
                calls.record_delivery(
                    self.keys,
                    shard,
                    now_ms(),
                    tenant,
                    enrollment_id,
                    step,
                    status,
                    rank,
                    error_code,
                    event_type,
                    _encode(event).decode(),
                )
            )
        except ScriptError as exc:
            if exc.code == "NOT_FOUND":
                raise NotFound(f"no enrollment {enrollment_id}", field="e") from None
            raise
        return DeliveryReport(bool(recorded), previous or None)

    async def enrollment_owner(self, enrollment_id: str) -> tuple[str, str] | None:
        """(tenant, contact id) of an enrollment, or None: whose auth token signs its
        status callbacks."""
        if not ids.is_valid(enrollment_id, ids.ENROLLMENT):
            return None
        shard = ids.shard_of(enrollment_id, self.keys.shards)
        t, c = await self.store.client.hmget(self.keys.enrollment(shard, enrollment_id), "t", "c")
        return (str(t), str(c)) if t and c else None
