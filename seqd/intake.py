"""The intake consumer: enrolls what other services XADD to `<prefix>:intake`.

Each seqd process runs `intake.consumers` consumers in a shared consumer group. A batch of
entries is grouped by (tenant, sequence) and each group enrolled through `bulk.enroll`,
the path of the HTTP API, so idempotency, inline-contact upserts, suppressions and events
are the same. An entry is acknowledged only in the MULTI that stores its outcome (and
deleted with the stream's finished head right after): a process that dies mid-batch
leaves its entries pending, another consumer takes them over once they have been idle
for the lease (XAUTOCLAIM), and enrolling them again finds the enrollments already made.
An entry that cannot be enrolled is moved to the rejected stream with its reason, never
dropped. The protocol is in docs/redis-intake.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import msgspec
import structlog

from seqd import bulk, contact_events, models
from seqd.config import Config
from seqd.errors import Conflict, Invalid, NotFound, SeqdError, field_error
from seqd.loop import Heart, Loop
from seqd.store import groups
from seqd.store.codec import encode_json
from seqd.store.db import Store
from seqd.store.intake import Finished, IntakeEntry, IntakeStream, has_bad_bytes
from seqd.store.lifecycle import NewContactEvent
from seqd.store.tenants import valid_tenant
from seqd.timing.policy import Policy

log = structlog.get_logger(__name__)
T = TypeVar("T")
# This loop's name in /readyz.
LIVENESS_NAME = "intake"
# The first pause after a failed batch (doubling from there, backoff.py).
RETRY_SECONDS = 0.1

# An entry's `type`: an enrollment (the default) or a contact event, and each one's fields.
ENROLL, CONTACT_EVENT = "enroll", "contact_event"
FIELDS = frozenset(
    {"type", "tenant", "sequence_id", "contact_id", "contact", "metadata", "request_id", "if_busy"}
)
EVENT_FIELDS = frozenset(
    {"type", "tenant", "contact_id", "event_id", "name", "properties", "occurred_at", "request_id"}
)
REQUEST_ID_MAX = 200

_decode_contact = msgspec.json.Decoder(models.ContactCreate).decode
_decode_metadata = msgspec.json.Decoder(models.Metadata).decode
_decode_properties = msgspec.json.Decoder(contact_events.Properties).decode


class Rejected(Exception):
    """An entry that cannot be enrolled: `reason` is the machine-readable code."""

    def __init__(self, reason: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.field = reason, detail, field


def rejection_of(reason: str, error: SeqdError) -> Rejected:
    path = error.errors[0].path if isinstance(error, Invalid) and error.errors else None
    return Rejected(reason, error.detail, path or error.extra.get("field"))


@dataclass(slots=True)
class ParsedItem:
    entry_id: str
    fields: dict[str, str]
    tenant: str = ""
    sequence_id: str = ""
    item: bulk.Item | None = None
    # A contact event entry: its contact and the event (`item` stays None).
    contact_id: str = ""
    event: NewContactEvent | None = None
    result_key: str | None = None
    rejected: Rejected | None = None
    # Entries of this batch with the same request_id: finished along with this one.
    followers: list[str] = field(default_factory=list)


def parse(
    store: Store,
    entry_id: str,
    fields: dict[str, str],
    region: str | None,
    stream: int | None = None,
) -> ParsedItem:
    """An entry of intake stream `stream` (its request_id's outcome is kept beside it)."""
    p = ParsedItem(entry_id, fields)
    try:
        for name, value in fields.items():
            # (isascii first: it is what almost every field is, and cheap to tell)
            if not (name.isascii() and value.isascii()) and (
                has_bad_bytes(name) or has_bad_bytes(value)
            ):
                raise Rejected("invalid", "not UTF-8 text", name if name in FIELDS else None)
        tenant = fields.get("tenant", "")
        if valid_tenant(tenant):
            p.tenant = tenant
            request_id = fields.get("request_id")
            if request_id is not None and 0 < len(request_id) <= REQUEST_ID_MAX:
                p.result_key = store.keys.intake_result(tenant, request_id, stream)
        kind = fields.get("type", ENROLL)
        if kind not in (ENROLL, CONTACT_EVENT):
            raise Rejected("invalid", f"{ENROLL} or {CONTACT_EVENT}", "type")
        allowed = EVENT_FIELDS if kind == CONTACT_EVENT else FIELDS
        if not fields.keys() <= allowed:
            raise Rejected("invalid", "unknown field", sorted(fields.keys() - allowed)[0])
        if "request_id" in fields and p.result_key is None and p.tenant:
            raise Rejected("invalid", f"1 to {REQUEST_ID_MAX} characters", "request_id")
        if not tenant:
            raise Rejected("invalid", "required", "tenant")
        if not p.tenant:
            raise Rejected("unknown_tenant", f"no tenant {tenant}", "tenant")
        if kind == CONTACT_EVENT:
            p.contact_id, p.event = _event(fields)
            return p
        p.sequence_id = fields.get("sequence_id", "")
        if not p.sequence_id:
            raise Rejected("invalid", "required", "sequence_id")
        contact = _json_field(fields, "contact", _decode_contact, empty=False)
        metadata = _json_field(fields, "metadata", _decode_metadata) or {}
        body = models.EnrollmentCreate(
            contact_id=fields.get("contact_id") or None,
            contact=contact,
            metadata=metadata,
            if_busy=_if_busy(fields.get("if_busy")),
        )
        p.item = bulk.prepare(body, region)
    except Rejected as exc:
        p.rejected = exc
    except Invalid as exc:
        p.rejected = rejection_of("invalid", exc)
    return p


def _if_busy(value: str | None) -> Literal["reject", "queue"]:
    """The entry's `if_busy` (absent or empty: reject)."""
    if value in (None, "", "reject"):
        return "reject"
    if value == "queue":
        return "queue"
    raise Rejected("invalid", "reject or queue", "if_busy")


def _json_field(
    fields: dict[str, str], name: str, decode: Callable[[str], T], *, empty: bool = True
) -> T | None:
    """Field `name` decoded (None when absent, or empty where `empty` allows it); Rejected
    naming it (or the path in it) when it is not what `decode` takes."""
    if name not in fields or (empty and not fields[name]):
        return None
    try:
        return decode(fields[name])
    except msgspec.ValidationError as exc:
        raise Rejected("invalid", str(exc), field_error(exc, name).path) from None
    except (msgspec.DecodeError, RecursionError):  # nested too deeply: RecursionError
        raise Rejected("invalid", "not a JSON object", name) from None


def _event(fields: dict[str, str]) -> tuple[str, NewContactEvent]:
    """A contact event entry's contact and event, as POST /contacts/{id}/events takes it."""
    contact_id = fields.get("contact_id", "")
    if not contact_id:
        raise Rejected("invalid", "required", "contact_id")
    properties = _json_field(fields, "properties", _decode_properties) or {}
    raw = {"name": fields.get("name", ""), "properties": properties}
    for name, key in (("event_id", "id"), ("occurred_at", "occurred_at")):
        if fields.get(name):
            raw[key] = fields[name]
    try:
        body = msgspec.convert(raw, contact_events.ContactEventCreate)
    except msgspec.ValidationError as exc:
        path = field_error(exc).path
        raise Rejected("invalid", str(exc), "event_id" if path == "id" else path) from None
    return contact_id, contact_events.prepare(body)


def result_text(
    p: ParsedItem,
    outcome: bulk.ItemOutcome | None,
    recorded: contact_events.ContactEventResult | None = None,
) -> str:
    """What the request_id key holds: the enrollment made or the event recorded, or why
    there is none."""
    if recorded is not None:
        return encode_json(
            {
                "status": "recorded",
                "event_id": recorded.event.id,
                "contact_id": recorded.event.contact_id,
                "completed": recorded.completed,
                "idempotent": recorded.idempotent,
                "intake_id": p.entry_id,
            }
        )
    if outcome is not None and outcome.enrollment_id is not None:
        return encode_json(
            {
                # queued: made when the contact's live exclusive enrollment ends.
                "status": "enrolled" if outcome.behind is None else "queued",
                "enrollment_id": outcome.enrollment_id,
                "contact_id": outcome.contact_id,
                "idempotent": outcome.idempotent,
                "intake_id": p.entry_id,
            }
        )
    r = p.rejected
    assert r is not None
    data = {"status": "rejected", "reason": r.reason, "detail": r.detail, "intake_id": p.entry_id}
    if r.field:
        data["field"] = r.field
    return encode_json(data)


def finished(
    p: ParsedItem,
    outcome: bulk.ItemOutcome | None = None,
    recorded: contact_events.ContactEventResult | None = None,
) -> list[Finished]:
    rejected = None
    if p.rejected is not None:
        rejected = {**p.fields, "reason": p.rejected.reason, "detail": p.rejected.detail}
        if p.rejected.field:
            rejected["field"] = p.rejected.field
        rejected["intake_id"] = p.entry_id
    text = result_text(p, outcome, recorded) if p.result_key else ""
    return [Finished(p.entry_id, p.result_key, text, rejected)] + [
        Finished(eid) for eid in p.followers
    ]


class Intake:
    """One consumer of the intake group; `run_once` reads and finishes one batch."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        consumer: str | None = None,
        liveness: Heart | None = None,
        liveness_name: str = LIVENESS_NAME,
        stream: int | None = None,
    ) -> None:
        self.config = config.intake
        # A contact event's id is remembered as long as the event log keeps events.
        self.event_retention_ms = config.webhooks.events_retention_hours * 3_600_000
        self.region = config.contacts.default_region
        self.policy = Policy(config)
        self.store = store
        self.stream = IntakeStream(
            store, self.config.group, block_ms=self.config.block_ms, stream=stream
        )
        self.consumer = consumer or groups.consumer_name()
        self._cursor = "0-0"
        self._next_reclaim = 0.0
        self._next_prune = 0.0
        # A turn is a blocking read (its own wait: no sleep after it) and one batch.
        self.loop = Loop(
            liveness_name,
            self._turn,
            idle_seconds=RETRY_SECONDS,
            deadline_seconds=self.config.block_ms / 1000 + self.config.lease_seconds + 30,
            failed_event="intake.batch_failed",
            liveness=liveness,
        )

    async def start(self) -> None:
        await self.stream.ensure_group()
        self.loop.start()
        log.info("intake.started", consumer=self.consumer, stream=self.stream.name)

    async def stop(self) -> None:
        """Stop reading, give the batch in hand the lease to finish; entries read but not
        finished stay pending and are taken over after the lease."""
        await self.loop.stop(self.config.lease_seconds)
        with contextlib.suppress(Exception):
            await self.stream.drop_consumer(self.consumer)
        await self.stream.close()
        log.info("intake.stopped", consumer=self.consumer)

    async def _turn(self) -> float:
        await self.run_once()
        return 0.0

    async def run_once(self, block_ms: int | None = None) -> int:
        """Take over abandoned entries when due, read one batch, finish it; the number of
        entries finished. `block_ms` None waits the configured time, 0 not at all."""
        done = 0
        if time.monotonic() >= self._next_reclaim:
            done += await self.reclaim()
        block = self.config.block_ms if block_ms is None else block_ms
        with self.loop.interruptible():
            entries = await self.stream.read(self.consumer, self.config.batch_size, block or None)
        if entries:
            done += await self.process(entries)
        return done

    async def reclaim(self) -> int:
        """Entries idle past the lease (their consumer died) become ours; one that keeps
        failing is rejected after `max_deliveries`."""
        lease_ms = int(self.config.lease_seconds * 1000)
        cursor, entries = await self.stream.reclaim(
            self.consumer, lease_ms, self.config.batch_size, self._cursor
        )
        self._cursor = cursor
        if cursor == "0-0":  # scanned the whole pending list: look again in half a lease
            self._next_reclaim = time.monotonic() + self.config.lease_seconds / 2
            if time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + groups.PRUNE_EVERY_MS / 1000
                gone = await self.stream.prune(groups.dead_after_ms(lease_ms))
                if gone:
                    log.info("intake.consumers_pruned", consumers=gone)
        if not entries:
            return 0
        log.info("intake.reclaimed", consumer=self.consumer, entries=len(entries))
        counts = await self.stream.deliveries([eid for eid, _ in entries])
        worn = [e for e in entries if counts.get(e[0], 0) > self.config.max_deliveries]
        fresh = [e for e in entries if counts.get(e[0], 0) <= self.config.max_deliveries]
        forced = []
        for eid, fields in worn:
            p = parse(self.store, eid, fields, self.region, self.stream.stream)
            p.rejected = Rejected("failed", f"not enrolled after {counts[eid]} deliveries")
            forced.append(p)
        return await self.process(fresh, forced)

    async def process(
        self, entries: list[IntakeEntry], forced: list[ParsedItem] | None = None
    ) -> int:
        """Enroll a batch; returns how many entries were finished (acknowledged)."""
        parsed = [parse(self.store, eid, f, self.region, self.stream.stream) for eid, f in entries]
        parsed += forced or []
        done: list[Finished] = []
        live = await self._new_requests(parsed, done)
        tenants = sorted({p.tenant for p in live if p.rejected is None})
        exists = await asyncio.gather(*(self.store.tenants.exists(t) for t in tenants))
        unknown = {t for t, ok in zip(tenants, exists, strict=True) if not ok}
        groups: dict[tuple[str, str], list[ParsedItem]] = defaultdict(list)
        events: dict[str, list[ParsedItem]] = defaultdict(list)
        for p in live:
            if p.rejected is None and p.tenant in unknown:
                p.rejected = Rejected("unknown_tenant", f"no tenant {p.tenant}", "tenant")
            if p.rejected is not None:
                done += finished(p)
            elif p.event is not None:
                events[p.tenant].append(p)
            else:
                groups[(p.tenant, p.sequence_id)].append(p)
        enrolled = await asyncio.gather(
            *(self._enroll(*k, ps) for k, ps in groups.items()),
            *(self._record(tenant, ps) for tenant, ps in events.items()),
        )
        for part in enrolled:
            done += part
        await self.stream.finish(
            done,
            result_ttl_ms=self.config.request_ttl_seconds * 1000,
            rejected_max_len=self.config.rejected_max_len,
        )
        rejected = sum(1 for d in done if d.rejected is not None)
        if rejected:
            log.info("intake.rejected", entries=rejected)
        return len(done)

    async def _new_requests(
        self, parsed: list[ParsedItem], done: list[Finished]
    ) -> list[ParsedItem]:
        """Entries to handle: not a request_id already answered (those are only
        acknowledged), and one per request_id in this batch (the rest follow it)."""
        keyed = [p for p in parsed if p.result_key]
        answered = await self.stream.known_results([p.result_key or "" for p in keyed])
        first: dict[str, ParsedItem] = {}
        skip: set[str] = set()
        for p, known in zip(keyed, answered, strict=True):
            key = p.result_key or ""
            if known is not None:
                done.append(Finished(p.entry_id))
                skip.add(p.entry_id)
            elif key in first:
                first[key].followers.append(p.entry_id)
                skip.add(p.entry_id)
            else:
                first[key] = p
        return [p for p in parsed if p.entry_id not in skip]

    async def _enroll(self, tenant: str, sid: str, group: list[ParsedItem]) -> list[Finished]:
        """One (tenant, sequence) group; on an unexpected error its entries stay pending."""
        try:
            try:
                into = await bulk.target(self.store, tenant, sid)
            except NotFound as exc:
                return self._reject_all(group, rejection_of("unknown_sequence", exc))
            except Conflict as exc:
                return self._reject_all(group, rejection_of("sequence_not_active", exc))
            items = [p.item for p in group if p.item is not None]
            outcomes = await bulk.enroll(
                self.store, tenant, into.seq, into.version, items, full=False,
                listed=into.listed, timing=into.timing(self.policy),
            )  # fmt: skip
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("intake.group_failed", tenant=tenant, sequence_id=sid, entries=len(group))
            return []
        out: list[Finished] = []
        for p, outcome in zip(group, outcomes, strict=True):
            if outcome.error is not None:
                p.rejected = rejection_of(outcome.reason, outcome.error)
            out += finished(p, outcome)
        return out

    async def _record(self, tenant: str, group: list[ParsedItem]) -> list[Finished]:
        """One tenant's contact events; on an unexpected error they stay pending."""
        items = [(p.contact_id, p.event) for p in group if p.event is not None]
        try:
            outcomes = await contact_events.record_all(
                self.store, tenant, items, self.event_retention_ms
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("intake.events_failed", tenant=tenant, entries=len(group))
            return []
        out: list[Finished] = []
        for p, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, SeqdError):
                p.rejected = Rejected("contact_not_found", outcome.detail, "contact_id")
                out += finished(p)
            else:
                out += finished(p, recorded=outcome)
        return out

    @staticmethod
    def _reject_all(group: list[ParsedItem], rejection: Rejected) -> list[Finished]:
        rejection.field = "sequence_id"
        out: list[Finished] = []
        for p in group:
            p.rejected = rejection
            out += finished(p)
        return out

    async def backlog(self) -> int:
        return await self.stream.backlog()


@contextlib.asynccontextmanager
async def part(
    config: Config, store: Store, *, liveness: Heart, observer: object = None
) -> AsyncIterator[None]:
    """The consumers (`intake.consumers`) as a background part of `seqd serve`
    (service.BACKGROUND): each its own consumer of the group, `intake-1`, `intake-2`, ... in
    /readyz. Split (`intake.streams` > 1), every stream gets its share of them, one at least,
    so each process reads every stream."""
    if not config.intake.enabled:
        yield
        return
    base = groups.consumer_name()
    streams = store.keys.intake_streams()
    each = -(-config.intake.consumers // len(streams))
    intakes = [
        Intake(
            config,
            store,
            consumer=f"{base}-{i}",
            liveness=liveness,
            liveness_name=f"{LIVENESS_NAME}-{i}",
            stream=stream,
        )
        for i, stream in enumerate((s for s in streams for _ in range(each)), 1)
    ]
    try:
        for one in intakes:
            await one.start()
        yield
    finally:
        await asyncio.gather(*(one.stop() for one in intakes))
