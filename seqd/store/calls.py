"""One builder per Lua script: its name, KEYS and ARGV in the order its header lists them.

Each builder returns a `Call` for `Runner.run` (one call) or `Runner.call_many` (several
in one round trip); the key space picks the keys, so a script's KEYS are chosen here and
nowhere else. The parameters follow the header of `lua/<name>-<keys>.lua`, which says
what each means; the tag (the slot the call's keys share) comes from the shard or tenant.

Errors: a script that refuses a call answers `redis.error_reply('CODE:detail')`, which the
runner raises (or, in `call_many`, returns in the call's place) as one `ScriptError`. A
batch script whose items fail one by one (enroll) cannot refuse the whole call for one of
them: it answers a `{0, code, detail}` row for that item, which `enrolled` turns into the
same `ScriptError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from seqd import conditions
from seqd.store.keys import Keys

Arg = str | int | float | bytes


class ScriptError(Exception):
    """A script refused the change: `code` is its error code, `detail` what followed it."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}:{detail}" if detail else code)
        self.code = code
        self.detail = detail


_ERROR = re.compile(r"^(?:ERR )?([A-Z_]+)(?::(.*))?$")


def refusal(text: str) -> ScriptError | None:
    """The ScriptError of an error reply's text, None for an error no script wrote."""
    match = _ERROR.match(text.split("\n")[0].strip())
    return ScriptError(match.group(1), match.group(2) or "") if match else None


class Call(NamedTuple):
    """A script call; a tuple `Runner.call_many` takes as it is."""

    name: str
    keys: list[str]
    args: list[Any]
    tag: str | None


def _shard_keys(keys: Keys, shard: int) -> list[str]:
    return [keys.heads(shard), keys.outbox(shard)]


def _mirror_keys(keys: Keys, shard: int) -> list[str]:
    return [keys.heads(shard), keys.outbox(shard), keys.mirrors(shard)]


# -- enrollments ---------------------------------------------------------------------------
def enroll(
    keys: Keys,
    shard: int,
    now: int,
    tenant: str,
    sequence_id: str,
    first_wait_ms: int,
    items: Iterable[tuple[str, str, str, str, str, str]],
    rules: tuple[str, str, str] = ("", "", ""),
) -> Call:
    """`items`: (new enrollment id, contact id, metadata JSON text or "", due ms as text or
    "" for now + first_wait_ms, the enrollment's `z` (codec.zone_field) or "", "queue" or "");
    `rules`: (steps version, reenroll, exclusive) as enroll-3.lua's ARGV[6..8] spell them."""
    tag = keys.shard_tag(shard)
    args: list[Any] = [tag, now, tenant, sequence_id, first_wait_ms, *rules]
    for item in items:
        args += item
    return Call("enroll", _mirror_keys(keys, shard), args, tag)


class Enrolled(NamedTuple):
    """One enroll item's reply: `flat` is the existing enrollment's hash (flat) when
    `idempotent`, else empty (the caller knows what it created); `behind`: queued behind
    that exclusive enrollment (`id` is made when it ends)."""

    id: str
    idempotent: bool
    flat: list[str]
    behind: str | None = None


def enrolled(reply: Sequence[Any]) -> list[Enrolled | ScriptError]:
    """An enroll reply, item by item: what was enrolled, or the item's error."""
    out: list[Enrolled | ScriptError] = []
    for row in reply:
        if row[0] == 2:
            out.append(Enrolled(row[1], False, [], row[2]))
        elif row[0] != 1:
            out.append(ScriptError(row[1], row[2]))
        elif row[2]:
            out.append(Enrolled(row[1], True, row[3]))
        else:
            out.append(Enrolled(row[1], False, []))
    return out


def transition(
    keys: Keys, shard: int, now: int, tenant: str, enrollment_id: str, action: str, reason: str
) -> Call:
    tag = keys.shard_tag(shard)
    args = [tag, now, tenant, enrollment_id, action, reason]
    return Call("transition", _shard_keys(keys, shard), args, tag)


def page_queue(keys: Keys, shard: int, sequence_id: str, score: str, eid: str, limit: int) -> Call:
    return Call(
        "pageQueue", [keys.queue(shard, sequence_id)], [score, eid, limit], keys.shard_tag(shard)
    )


# -- dispatch ------------------------------------------------------------------------------
def peek_due(keys: Keys, shard: int, now: int, cap: int) -> Call:
    tag = keys.shard_tag(shard)
    return Call("peekDue", [keys.heads(shard)], [tag, now, cap], tag)


def claim_due(
    keys: Keys, shard: int, now: int, limit: int, on_unknown: str, contact_fields: Sequence[str]
) -> Call:
    tag = keys.shard_tag(shard)
    args: list[Any] = [tag, now, limit, on_unknown, *contact_fields]
    return Call("claimDue", _mirror_keys(keys, shard), args, tag)


def lease_peeked(
    keys: Keys,
    shard: int,
    now: int,
    lease_ms: int,
    max_attempts: int,
    worker: str,
    queues: Mapping[str, tuple[str, Sequence[tuple[str, str]]]],
) -> Call:
    """`queues`: sequence id -> (its mirror as peeked, [(enrollment id, score as peeked)])."""
    tag = keys.shard_tag(shard)
    args: list[Any] = [tag, now, lease_ms, max_attempts, worker]
    for seq, (mirror, members) in queues.items():
        args += (seq, mirror, len(members), ",".join([score for _, score in members]))
        args += [eid for eid, _ in members]
    return Call("leasePeeked", _mirror_keys(keys, shard), args, tag)


def advance(
    keys: Keys,
    shard: int,
    now: int,
    max_attempts: int,
    items: bytes,
    groups: bytes,
    passed: Sequence[str | bytes],
) -> Call:
    """`items`, `groups`, `passed`: store/settles.py `advance_args`."""
    tag = keys.shard_tag(shard)
    args: list[Any] = [tag, now, max_attempts, items, groups, *passed]
    return Call("advance", _shard_keys(keys, shard), args, tag)


def defer_steps(
    keys: Keys, shard: int, now: int, groups: bytes, steps: Sequence[str | bytes]
) -> Call:
    """`groups`, `steps`: store/settles.py `Deferrals`."""
    tag = keys.shard_tag(shard)
    return Call("deferSteps", _shard_keys(keys, shard), [tag, now, groups, *steps], tag)


def reclaim_leases(keys: Keys, shard: int, now: int, limit: int, dead: Sequence[str]) -> Call:
    tag = keys.shard_tag(shard)
    lease_keys = [
        keys.heads(shard),
        keys.leases(shard),
        keys.lease_owners(shard),
        keys.lease_starts(shard),
    ]
    return Call("reclaimLeases", lease_keys, [tag, now, limit, *dead], tag)


# -- sequences -----------------------------------------------------------------------------
def put_sequence(
    keys: Keys,
    tenant: str,
    sequence_id: str,
    doc: str | bytes,
    status: str,
    expected: int,
    kept: tuple[int, bytes] | None = None,
) -> Call:
    """`kept`: (version, steps JSON) of the steps the doc replaces, kept."""
    args: list[Any] = [sequence_id, doc, status, expected]
    if kept is not None:
        args += kept
    return Call(
        "putSequence",
        [keys.sequence(tenant, sequence_id), keys.sequences(tenant)],
        args,
        keys.tenant_tag(tenant),
    )


def sync_sequence(
    keys: Keys,
    shard: int,
    now: int,
    sequence_id: str,
    mirror: str,
    sweep: str,
    limit: int,
    cursor: str,
    fields: str,
    moves: str | bytes = "",
) -> Call:
    """`moves`: the retarget sweeps' JSON (syncSequence-3.lua ARGV[9])."""
    tag = keys.shard_tag(shard)
    args = [tag, now, sequence_id, mirror, sweep, limit, cursor, fields]
    if moves:
        args.append(moves)
    return Call("syncSequence", _mirror_keys(keys, shard), args, tag)


def migrate_queues(keys: Keys, shard: int, due: str, parked: str, limit: int) -> Call:
    """`due`, `parked`: the schema 1 key names (keys.V1_SHARD_DUE, keys.V1_PARKED)."""
    tag = keys.shard_tag(shard)
    call_keys = [keys.heads(shard), due, keys.mirrors(shard)]
    return Call("migrateQueues", call_keys, [tag, parked, limit], tag)


def migrate_contact_list(keys: Keys, shard: int, tenant: str, limit: int) -> Call:
    """Schema 2 -> 3: one bounded step of one tenant's contact listing in `shard`."""
    return Call(
        "migrateContactList", [keys.tenant_contacts(shard, tenant)], [limit], keys.shard_tag(shard)
    )


# -- contacts ------------------------------------------------------------------------------
# linkContact's KEYS, and the order of its new and old values.
LINK_FIELDS = ("phone", "email", "external_id")


def link_contact(
    keys: Keys,
    tenant: str,
    contact_id: str,
    stale: Iterable[str],
    new: Mapping[str, Any],
    old: Mapping[str, Any],
) -> Call:
    """`new`, `old`: lookup field -> value (a missing or empty one is "")."""
    args = [contact_id, " ".join(stale)]
    args += [new.get(f) or "" for f in LINK_FIELDS]
    args += [old.get(f) or "" for f in LINK_FIELDS]
    call_keys = [keys.contact_lookup(tenant, f) for f in LINK_FIELDS]
    return Call("linkContact", call_keys, args, keys.tenant_tag(tenant))


def link_contacts(
    keys: Keys, tenant: str, contacts: Iterable[tuple[str, Mapping[str, Any]]]
) -> Call:
    """`contacts`: (new contact id, its fields), in the order their values are claimed."""
    args: list[Arg] = []
    for contact_id, fields in contacts:
        args += [contact_id, *(fields.get(f) or "" for f in LINK_FIELDS)]
    call_keys = [keys.contact_lookup(tenant, f) for f in LINK_FIELDS]
    return Call("linkContacts", call_keys, args, keys.tenant_tag(tenant))


def create_contacts(
    keys: Keys,
    shard: int,
    now: int,
    tenant: str,
    contacts: Iterable[tuple[str, Sequence[str]]],
) -> Call:
    """`contacts`: (new contact id in `shard`, its field/value pairs, flat)."""
    tag = keys.shard_tag(shard)
    args: list[Arg] = [tag, now, tenant]
    for contact_id, fields in contacts:
        args += [contact_id, len(fields) // 2, *fields]
    return Call("createContacts", [keys.tenant_contacts(shard, tenant)], args, tag)


def put_contact(
    keys: Keys,
    shard: int,
    now: int,
    tenant: str,
    contact_id: str,
    mode: str,
    fields: Iterable[str],
) -> Call:
    """`fields`: field, value pairs, flat (codec.contact_values)."""
    tag = keys.shard_tag(shard)
    args = [tag, now, tenant, contact_id, mode, *fields]
    return Call("putContact", [keys.contact(shard, contact_id)], args, tag)


def delete_contact(keys: Keys, shard: int, now: int, tenant: str, contact_id: str) -> Call:
    tag = keys.shard_tag(shard)
    return Call("deleteContact", _shard_keys(keys, shard), [tag, now, tenant, contact_id], tag)


# -- lifecycle -----------------------------------------------------------------------------
def reply_contact(
    keys: Keys,
    shard: int,
    now: int,
    tenant: str,
    contact_id: str,
    enrollment_id: str,
    channel: str,
    sequences: Iterable[Arg],
) -> Call:
    """`sequences`: per sequence, flat: id, version, kinds, on_reply."""
    tag = keys.shard_tag(shard)
    args = [tag, now, tenant, contact_id, enrollment_id, channel, *sequences]
    return Call("replyContact", _mirror_keys(keys, shard), args, tag)


def absent_contact(
    keys: Keys,
    shard: int,
    now: int,
    tenant: str,
    contact_id: str,
    enrollment_id: str,
    channel: str,
    sequences: Iterable[Arg],
) -> Call:
    """As `reply_contact` (the same KEYS and ARGV); `sequences`: per sequence, flat: id,
    version, kinds, on_out_of_office, resume_at."""
    tag = keys.shard_tag(shard)
    args = [tag, now, tenant, contact_id, enrollment_id, channel, *sequences]
    return Call("absentContact", _mirror_keys(keys, shard), args, tag)


def reply_account(
    keys: Keys,
    shard: int,
    now: int,
    tenant: str,
    account: str,
    replied_by: str,
    sequences: Iterable[Arg],
) -> Call:
    """`sequences`: per sequence, flat: id, version, kinds, on_reply, on_reply_scope."""
    tag = keys.shard_tag(shard)
    args = [tag, now, tenant, account, replied_by, *sequences]
    return Call("replyAccount", _mirror_keys(keys, shard), args, tag)


def stop_channel(
    keys: Keys,
    shard: int,
    now: int,
    tenant: str,
    contact_id: str,
    channel: str,
    cancel_reason: str,
    event_type: str,
    event_data: str,
    quiet: bool,
    sequences: Iterable[Arg],
) -> Call:
    """`sequences`: per sequence, flat: id, version, kinds."""
    tag = keys.shard_tag(shard)
    args = [tag, now, tenant, contact_id, channel, cancel_reason, event_type, event_data]
    args.append(int(quiet))
    return Call("stopChannel", _mirror_keys(keys, shard), [*args, *sequences], tag)


def emit_event(keys: Keys, shard: int, now: int, tenant: str, event_type: str, data: str) -> Call:
    tag = keys.shard_tag(shard)
    return Call("emitEvent", [keys.outbox(shard)], [now, tenant, event_type, data], tag)


def record_contact_event(
    keys: Keys,
    shard: int,
    now: int,
    tenant: str,
    contact_id: str,
    event_id: str,
    event: str,
    retention_ms: int,
    sequences: Iterable[Arg],
) -> Call:
    """`sequences`: per sequence, flat: id, version (-1: gone), goal ("" for none)."""
    tag = keys.shard_tag(shard)
    args = [tag, now, tenant, contact_id, event_id, event, retention_ms, *sequences]
    return Call("recordContactEvent", _mirror_keys(keys, shard), args, tag)


def record_delivery(
    keys: Keys,
    shard: int,
    now: int,
    tenant: str,
    enrollment_id: str,
    step: int,
    status: str,
    rank: int,
    error_code: str,
    event_type: str,
    event_data: str,
) -> Call:
    tag = keys.shard_tag(shard)
    args = [tag, now, tenant, enrollment_id, step, status, rank, error_code, event_type]
    letter = conditions.OUTCOME_LETTER.get(status, "")
    return Call("recordDelivery", [keys.outbox(shard)], [*args, event_data, letter], tag)


def record_click(
    keys: Keys, shard: int, now: int, enrollment_id: str, step: int, bot: bool, event_data: str
) -> Call:
    tag = keys.shard_tag(shard)
    args = [tag, now, enrollment_id, step, int(bot), event_data]
    return Call("recordClick", [keys.outbox(shard)], args, tag)


def suppress(
    keys: Keys, tenant: str, channel: str, action: str, value: str, record: str, keep: str
) -> Call:
    call_keys = [keys.suppressions(tenant, channel), keys.suppression_index(tenant, channel)]
    return Call("suppress", call_keys, [action, value, record, keep], keys.tenant_tag(tenant))


# -- events and webhooks -------------------------------------------------------------------
def fanout_events(keys: Keys, shard: int, group: str, now: int, entries: Iterable[Arg]) -> Call:
    """`entries`: per outbox entry, flat: entry id, tenant, due, count, then count
    deliveries of 5 values (id, endpoint id, event id, type, body)."""
    tag = keys.shard_tag(shard)
    call_keys = [keys.outbox(shard), keys.delivery_due(shard)]
    return Call("fanoutEvents", call_keys, [tag, group, now, *entries], tag)


def record_events(
    keys: Keys, tenant: str, retention_ms: int, min_id: str, payloads: Iterable[Arg]
) -> Call:
    """`payloads`: per payload, flat: type, created_at, payload, count, then count events
    of 3 values (event id, enrollment id, contact id)."""
    tag = keys.tenant_tag(tenant)
    return Call("recordEvents", [keys.events(tenant)], [tag, retention_ms, min_id, *payloads], tag)


def put_endpoint(
    keys: Keys, tenant: str, endpoint_id: str, expected: str, record: str, max_endpoints: int
) -> Call:
    return Call(
        "putEndpoint",
        [keys.webhook_endpoints(tenant)],
        [endpoint_id, expected, record, max_endpoints],
        keys.tenant_tag(tenant),
    )


def put_sender(
    keys: Keys, tenant: str, sender_id: str, expected: str, record: str, max_senders: int
) -> Call:
    return Call(
        "putSender",
        [keys.senders(tenant), keys.sender_budgets(tenant)],
        [sender_id, expected, record, max_senders],
        keys.tenant_tag(tenant),
    )


def take_budget(keys: Keys, tenant: str, now: int, mode: str, asks: Iterable[Arg]) -> Call:
    """`mode`: take | peek; `asks`: the senders, then the asks (seqd/senders/budget.py
    `encode`)."""
    return Call(
        "takeBudget", [keys.sender_budgets(tenant)], [now, mode, *asks], keys.tenant_tag(tenant)
    )


def take_frequency(keys: Keys, shard: int, now: int, asks: Iterable[Arg]) -> Call:
    """`asks`: flat, per step of `shard`: contact id, kind, member, limit, window ms."""
    tag = keys.shard_tag(shard)
    return Call("takeFrequency", [keys.heads(shard)], [tag, now, *asks], tag)


def claim_webhooks(
    keys: Keys,
    shard: int,
    now: int,
    lease_ms: int,
    limit: int,
    per_endpoint: int,
    free: Mapping[str, int],
) -> Call:
    """`free`: endpoint id -> free slots, of endpoints with deliveries in flight here."""
    tag = keys.shard_tag(shard)
    args: list[Any] = [tag, now, lease_ms, limit, per_endpoint]
    for endpoint, slots in free.items():
        args += [endpoint, slots]
    return Call("claimWebhooks", [keys.delivery_due(shard)], args, tag)


def _delivery_keys(keys: Keys, shard: int) -> list[str]:
    return [keys.delivery_due(shard), keys.failed_all(shard)]


def finish_webhooks(keys: Keys, shard: int, outcomes: Iterable[Sequence[Arg]]) -> Call:
    """`outcomes`: per claimed delivery of `shard`, its 9 values in the script's order (now,
    id, token, outcome, due_at, attempted, status, error, lease_ms)."""
    tag = keys.shard_tag(shard)
    args: list[Any] = [tag]
    for outcome in outcomes:
        args += outcome
    return Call("finishWebhooks", _delivery_keys(keys, shard), args, tag)


def retry_webhook(
    keys: Keys, shard: int, now: int, tenant: str, endpoint_id: str, delivery_id: str
) -> Call:
    tag = keys.shard_tag(shard)
    args = [tag, now, tenant, endpoint_id, delivery_id]
    return Call("retryWebhook", _delivery_keys(keys, shard), args, tag)


def purge_webhooks(keys: Keys, shard: int, endpoint_id: str, limit: int) -> Call:
    tag = keys.shard_tag(shard)
    return Call("purgeWebhooks", _delivery_keys(keys, shard), [tag, endpoint_id, limit], tag)


def trim_webhooks(keys: Keys, shard: int, before: str, limit: int) -> Call:
    tag = keys.shard_tag(shard)
    return Call("trimWebhooks", [keys.failed_all(shard)], [tag, before, limit], tag)


# -- the rest ------------------------------------------------------------------------------
def limit_rate(
    keys: Keys, key_digest: str, now: int, limit: int, period_ms: int, cost: int
) -> Call:
    return Call("limitRate", [keys.rate_limit(key_digest)], [now, limit, period_ms, cost], None)


def trim_intake(keys: Keys, stream: int | None = None) -> Call:
    return Call("trimIntake", [keys.intake(stream)], [], keys.intake_tag(stream))


def hold_mailbox(keys: Keys, mailbox: str, owner: str, ttl_ms: int) -> Call:
    return Call("holdMailbox", [keys.mailbox_lease(mailbox)], [owner, ttl_ms], None)


def advance_mailbox(
    keys: Keys, mailbox: str, owner: str, folder: str, uidvalidity: int, uid: int
) -> Call:
    lease, cursor = keys.mailbox_lease(mailbox), keys.mailbox_cursor(mailbox)
    return Call("advanceMailbox", [lease, cursor], [owner, folder, uidvalidity, uid], None)


# -- tasks ---------------------------------------------------------------------------------
def complete_task(
    keys: Keys, shard: int, now: int, tenant: str, task_id: str, outcome: str
) -> Call:
    tag = keys.shard_tag(shard)
    return Call("completeTask", _shard_keys(keys, shard), [tag, now, tenant, task_id, outcome], tag)


def patch_task(keys: Keys, shard: int, now: int, tenant: str, task_id: str, changes: bytes) -> Call:
    tag = keys.shard_tag(shard)
    return Call("patchTask", _shard_keys(keys, shard), [tag, now, tenant, task_id, changes], tag)
