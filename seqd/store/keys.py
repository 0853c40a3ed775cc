"""Every Redis key name seqd uses, in one place.

Three hash tags, so that each Lua script touches one slot (Redis Cluster safe):

- `{<prefix>}`           global: meta, API keys, tenants.
- `<prefix>:intake`      the intake stream other services XADD to, named without braces so
                          writers type a plain name; its companions (rejected stream, request
                          results) carry the tag `{<prefix>:intake}`, whose slot is by the
                          hash-tag rule the slot of the plain name, so seqd acks an entry and
                          stores its outcome in one MULTI, on Redis Cluster too. Split
                          (`intake.streams` > 1), `<prefix>:intake:<n>` are more such
                          streams, each with its companions in its own slot.
- `{<prefix>:t:<tenant>}` a tenant's own data: sequences, contact lookup indexes,
                          webhook endpoints, the event log.
- `{<prefix>:<shard>}`    a shard of per-contact data: contacts, enrollments, sequence
                          queues and their heads, listing indexes, counters, outbox,
                          webhook deliveries. A store made since shard tags spread
                          (`spread_tags`) may give a shard `{<prefix>:<shard>:<n>}`
                          instead, so the shards' slots spread evenly over a cluster.

Keys that depend on ids read inside a script (an enrollment claimed from a queue,
say, or an event's payload in a batch appended to the log) are built in Lua from the
shard or tenant tag by helpers that `scripts.py` generates from `SHARD_TEMPLATES` and
`TENANT_TEMPLATES` below, so a key name is still spelled only here.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Final

from redis.crc import key_slot

# Per-shard keys by family; `{tag}` is the shard's hash tag, other fields are ids.
SHARD_TEMPLATES: Final[Mapping[str, str]] = {
    "contact": "{tag}:c:{contact_id}",
    "enrollment": "{tag}:e:{enrollment_id}",
    # ZSET enrollment id -> due time (or lease token): one sequence's active enrollments in
    # this shard. Both the time index the dispatcher claims from and the listing of the
    # sequence's active enrollments (in due order), so an active enrollment costs one index
    # entry, not two. What is due across sequences is found through SHARD_HEADS.
    "queue": "{tag}:q:{sequence_id}",
    # ZSET of enrollments of one sequence in one status other than active (whose listing is
    # the queue); all scores 0, members in id order.
    "status_index": "{tag}:ix:{sequence_id}:{status}",
    # HASH status -> count, per sequence.
    "counts": "{tag}:n:{sequence_id}",
    # ZSET of a tenant's contacts in this shard, id order.
    "tenant_contacts": "{tag}:cx:{tenant}",
    # SET of a tenant's contacts in this shard whose account (seqd/accounts.py) has this
    # digest: the account-level stop reads it.
    "account_contacts": "{tag}:ac:{tenant}:{account}",
    # STRING: the enrollment id a provider message id (sid, Message-ID) belongs to.
    "message": "{tag}:m:{message_id}",
    # HASH: one webhook delivery (event body, attempts, last result), seqd/events/deliverer.py.
    "delivery": "{tag}:wd:{delivery_id}",
    # ZSET delivery id -> due ms: an endpoint's pending deliveries of events of this shard.
    "delivery_queue": "{tag}:wq:{endpoint_id}",
    # ZSET of an endpoint's failed (dead-lettered) deliveries; all scores 0, id order.
    "failed_deliveries": "{tag}:wf:{endpoint_id}",
    # ZSET "<enrollment id>:<step>" -> sent ms: a contact's messages of one kind in the
    # tenant's frequency cap window (takeFrequency-1.lua), expiring with the window.
    "frequency": "{tag}:fq:{contact_id}:{kind}",
    # STRING: a contact event recorded (its data, with the enrollments its goal completed),
    # kept for the event log's retention so the same event id is recorded once.
    "contact_event": "{tag}:ce:{contact_id}:{event_id}",
    # HASH sequence id -> "<version>:<fields>": the contact fields the sequence's messages
    # can use at that version (store/mirrors.py), beside the shard's mirror (`sq`).
    "sequence_fields": "{tag}:sf",
    # ZSET lease token -> its expiry (the token's value): the shard's leases (leasePeeked),
    # each token one lease call's, until reclaimLeases takes it out after it ends.
    "leases": "{tag}:ls",
    # HASH lease token -> "<worker id> <sequence id>,...": who holds it, and the queues of
    # its members.
    "lease_owners": "{tag}:lo",
    # SET of the lease tokens whose sends have started (written right before the first of
    # them): a lease not in it was never handed to a channel, so it is no attempt.
    "lease_starts": "{tag}:lst",
    # HASH: one task of a task step (store/tasks.py), in its enrollment's shard.
    "task": "{tag}:tk:{task_id}",
    # ZSET of a tenant's tasks in this shard, scores 0, id order: by status ("" any) and
    # assignee ("" any, else "=" + the assignee), the filters of GET /v1/tasks.
    "task_index": "{tag}:tki:{tenant}:{status}:{assignee}",
    # HASH "<step>:<variant>:<counter code>" -> count: what one sequence's steps did in this
    # shard on one UTC day (epoch ms // 86,400,000), store/stats.py; expires after the
    # retention.
    "stats": "{tag}:st:{sequence_id}:{day}",
    # STRING: days a `stats` hash is kept after its day ends (`[stats] retention_days`).
    "stats_ttl": "{tag}:stt",
    # LIST of enrollments (JSON: id, sequence, tenant, metadata, first wait, steps version)
    # waiting for the contact's live exclusive enrollment (contact field `ex`) to end;
    # the script that ends that one makes the first of them (enrollment.lua).
    "exclusive_waiting": "{tag}:xq:{contact_id}",
    # HASH sequence id -> "<status>:<version>:<steps>": the shard's mirror of each sequence
    # (SHARD_MIRRORS; a template too, for the scripts that read it by name).
    "mirrors": "{tag}:sq",
}
# Per-tenant keys built in Lua by family; `{tag}` is the tenant's hash tag (`tenant_tag`).
TENANT_TEMPLATES: Final[Mapping[str, str]] = {
    # STRING: one event's payload (JSON) with a TTL of the log's retention.
    "event": "{tag}:ev:{event_id}",
}
# Fixed per-shard keys.
# ZSET sequence id -> a lower bound of the earliest score in its `queue`, for the active
# (or archived: claims cancel their steps) sequences with a queue: what the dispatcher polls.
# Writes that may lower a queue's first score lower its head (ZADD LT); a claim sets the
# head to the queue's first score again, and takes out the head of a paused sequence,
# whose queue then waits untouched until the sequence resumes (syncSequence puts it back).
SHARD_HEADS = "{tag}:hd"
SHARD_OUTBOX = "{tag}:outbox"
SHARD_MIRRORS = SHARD_TEMPLATES["mirrors"]
# ZSET endpoint id -> earliest score in its `delivery_queue`: what the deliverer polls.
SHARD_DELIVERY_DUE = "{tag}:wdue"
# ZSET of every failed delivery of the shard (all endpoints), scores 0: trimmed by age.
SHARD_FAILED_DELIVERIES = "{tag}:wfail"

# Keys of schema 1 that `migrateQueues` (store/migrate.py) moves into the queues: the
# shard's one due index of every sequence's enrollments, and the items parked by sequence
# while it was paused. Nothing else reads them.
V1_SHARD_DUE = "{tag}:due"
V1_PARKED = "{tag}:park:"


# Cluster hash slots: a key's slot is the CRC16 of its hash tag, modulo this.
SLOTS = 16384
# The meta key's `tags` of a store whose shard tags spread over the slots (`spread_tags`);
# a store made before they did has none and keeps `{<prefix>:<shard>}`.
SPREAD = "spread"


@functools.cache
def spread_tags(prefix: str, shards: int) -> tuple[str, ...]:
    """Shard tags whose slots spread evenly: shard s's slot lies in the s-th of `shards`
    equal ranges of the slots. A cluster whose N primaries hold equal runs of slots (as
    `valkey-cli --cluster create` makes them) then holds at most ceil(S/N)+1 shards on a
    primary, where the CRC16 of `{<prefix>:<shard>}` falls as it may (8 of 16 on one of
    3 primaries for the prefix "abc"). A tag is `{<prefix>:<shard>}` when its slot is in
    range, else `{<prefix>:<shard>:<n>}` for the first n that is: about S tries a shard."""
    tags = []
    for shard in range(shards):
        low, high = shard * SLOTS // shards, (shard + 1) * SLOTS // shards
        tag, n = f"{prefix}:{shard}", 0
        while not low <= key_slot(tag.encode()) < high:
            tag, n = f"{prefix}:{shard}:{n}", n + 1
        tags.append("{" + tag + "}")
    return tuple(tags)


class Keys:
    """Key builder for one deployment prefix and shard count; `spread` gives the shards the
    tags of `spread_tags` (what the store's meta key says)."""

    __slots__ = ("_shard_tags", "global_tag", "intake_split", "prefix", "shards")

    def __init__(
        self, prefix: str, shards: int, *, spread: bool = False, intake_split: int = 1
    ) -> None:
        self.prefix = prefix
        self.shards = shards
        # `intake.streams`: 1, the plain stream alone; n > 1, it and streams 0 to n-1.
        self.intake_split = intake_split
        self.global_tag = "{" + prefix + "}"
        self._shard_tags = spread_tags(prefix, shards) if spread else None

    # -- global ---------------------------------------------------------------
    def meta(self) -> str:
        return f"{self.global_tag}:meta"

    def tenants(self) -> str:
        return f"{self.global_tag}:tenants"

    def api_keys(self) -> str:
        """HASH sha256(key) -> API key record (JSON)."""
        return f"{self.global_tag}:apikeys"

    def api_key_ids(self) -> str:
        """HASH key id -> sha256(key), for listing and revoking."""
        return f"{self.global_tag}:apikey_ids"

    def workers(self) -> str:
        """ZSET worker id -> its last heartbeat (ms): the dispatching processes, so that the
        leases of one whose heartbeat stopped are reclaimed (store/dispatch.py `Workers`)."""
        return f"{self.global_tag}:workers"

    def intake(self, stream: int | None = None) -> str:
        """STREAM other services XADD enrollment requests to (docs/redis-intake.md): the
        plain one, or split stream `stream` (`<prefix>:intake:<n>`)."""
        return f"{self.prefix}:intake" if stream is None else f"{self.prefix}:intake:{stream}"

    def intake_streams(self) -> list[int | None]:
        """The intake streams seqd reads: the plain one (None), and the split ones."""
        return [None] if self.intake_split == 1 else [None, *range(self.intake_split)]

    def intake_tag(self, stream: int | None = None) -> str:
        """`{<prefix>:intake}`: hashes to the slot of `intake()` (the tag is its whole name)."""
        return "{" + self.intake(stream) + "}"

    def intake_rejected(self, stream: int | None = None) -> str:
        """STREAM of intake entries that could not be enrolled: original fields + reason."""
        return f"{self.intake_tag(stream)}:rejected"

    def intake_result(self, tenant: str, request_id: str, stream: int | None = None) -> str:
        """STRING (JSON, with a TTL): the outcome of the intake entry with this request_id."""
        return f"{self.intake_tag(stream)}:rq:{tenant}:{request_id}"

    def sends(self, bucket: int) -> str:
        """HASH "<channel>:<outcome>" -> steps, for one 10-second bucket (epoch s // 10).

        Written by every process's dispatcher (`metrics.RateRecorder`), read by `seqd status`;
        each bucket expires a few minutes after it closes.
        """
        return f"{self.global_tag}:sends:{bucket}"

    def rate_limit(self, key_digest: str) -> str:
        """STRING: the GCRA theoretical arrival time (ms) of one API key, by sha256 of the key.

        Its own hash tag, so on Redis Cluster the keys' limits spread over the slots.
        """
        return "{" + f"{self.prefix}:rl:{key_digest}" + "}"

    def mailbox_states(self) -> str:
        """HASH mailbox label -> "<state>\t<ms>\t<detail>": each IMAP mailbox's reader state
        as its reading process last reported it (`seqd status`)."""
        return f"{self.global_tag}:mbstate"

    def sender_addresses(self) -> str:
        """HASH "<channel>:<address>" -> "<tenant> <sender id>": whose sender an address is
        (inbound replies and opt-outs find their tenant by the address they arrived on)."""
        return f"{self.global_tag}:senders"

    def provider_message(self, message_id: str) -> str:
        """STRING (first arrival ms, with a TTL): a provider's inbound message or status
        callback already applied, by its id (Twilio's MessageSid, `<sid>:<status>` for a
        status). Its own hash tag, so the keys spread over a cluster's slots."""
        return "{" + f"{self.prefix}:pm:{message_id}" + "}"

    def mailbox_tag(self, mailbox: str) -> str:
        """`{<prefix>:mb:<mailbox>}`: one IMAP mailbox's keys (seqd/lifecycle/mailbox.py), by
        a digest of its server and login."""
        return "{" + f"{self.prefix}:mb:{mailbox}" + "}"

    def mailbox_lease(self, mailbox: str) -> str:
        """STRING (with a TTL): the reader process that holds the mailbox, so one process
        reads it at a time."""
        return f"{self.mailbox_tag(mailbox)}:lease"

    def mailbox_cursor(self, mailbox: str) -> str:
        """HASH folder -> "<uidvalidity>:<last uid applied>"."""
        return f"{self.mailbox_tag(mailbox)}:cursor"

    # -- tenant ---------------------------------------------------------------
    def tenant_tag(self, tenant: str) -> str:
        return "{" + f"{self.prefix}:t:{tenant}" + "}"

    def sequence(self, tenant: str, sequence_id: str) -> str:
        return f"{self.tenant_tag(tenant)}:seq:{sequence_id}"

    def sequences(self, tenant: str) -> str:
        """ZSET of the tenant's sequence ids, all scores 0 (id order)."""
        return f"{self.tenant_tag(tenant)}:seqs"

    def suppressions(self, tenant: str, channel: str) -> str:
        """HASH normalised phone (sms) or email (email) -> JSON {reason, created_at}."""
        return f"{self.tenant_tag(tenant)}:sup:{channel}"

    def suppression_index(self, tenant: str, channel: str) -> str:
        """ZSET of the values in `suppressions(tenant, channel)`, all scores 0 (listing order)."""
        return f"{self.tenant_tag(tenant)}:supix:{channel}"

    def idempotency(self, tenant: str, key_digest: str) -> str:
        """STRING (JSON): a POST's fingerprint and stored response, by sha256 of its
        Idempotency-Key; short-lived while the request runs, then kept for the replay window."""
        return f"{self.tenant_tag(tenant)}:idem:{key_digest}"

    def contact_lookup(self, tenant: str, field: str) -> str:
        """HASH normalised value -> contact id without its prefix (older entries: the whole
        id; store/contacts.py `lookup_owner`); field is phone, email or external_id."""
        return f"{self.tenant_tag(tenant)}:lk:{field}"

    def webhook_endpoints(self, tenant: str) -> str:
        """HASH endpoint id -> endpoint record (JSON, with its signing secrets)."""
        return f"{self.tenant_tag(tenant)}:whe"

    def schedules(self, tenant: str) -> str:
        """HASH schedule id -> schedule document (JSON), seqd/schedules.py."""
        return f"{self.tenant_tag(tenant)}:sch"

    def senders(self, tenant: str) -> str:
        """HASH sender id -> sender record (JSON): the tenant's numbers and mailboxes."""
        return f"{self.tenant_tag(tenant)}:snd"

    def tenant_settings(self, tenant: str) -> str:
        """STRING (JSON): the tenant's settings set through the API (senders/models.py
        `StoredSettings`)."""
        return f"{self.tenant_tag(tenant)}:settings"

    def sender_budgets(self, tenant: str) -> str:
        """HASH of the tenant's senders' budgets (takeBudget-1.lua): "<sender id>:s|h|g" ->
        GCRA arrival time (ms) of its per-second, per-hour and min-gap limits,
        "<sender id>:d" -> "<local day>:<sends that day>", "rr:<pool>" -> rotation cursor."""
        return f"{self.tenant_tag(tenant)}:sndb"

    def events(self, tenant: str) -> str:
        """STREAM: the tenant's event log (id, type, refs per entry), trimmed by age."""
        return f"{self.tenant_tag(tenant)}:events"

    def event(self, tenant: str, event_id: str) -> str:
        """STRING: one event's payload (JSON) with a TTL of the log's retention."""
        return TENANT_TEMPLATES["event"].format(tag=self.tenant_tag(tenant), event_id=event_id)

    # -- shard ----------------------------------------------------------------
    def shard_tag(self, shard: int) -> str:
        if self._shard_tags is not None:
            return self._shard_tags[shard]
        return "{" + f"{self.prefix}:{shard}" + "}"

    def heads(self, shard: int) -> str:
        return SHARD_HEADS.format(tag=self.shard_tag(shard))

    def queue(self, shard: int, sequence_id: str) -> str:
        return SHARD_TEMPLATES["queue"].format(tag=self.shard_tag(shard), sequence_id=sequence_id)

    def outbox(self, shard: int) -> str:
        return SHARD_OUTBOX.format(tag=self.shard_tag(shard))

    def mirrors(self, shard: int) -> str:
        """HASH sequence id -> "<status>:<version>:<steps>", the shard's mirror of each."""
        return SHARD_MIRRORS.format(tag=self.shard_tag(shard))

    def leases(self, shard: int) -> str:
        return SHARD_TEMPLATES["leases"].format(tag=self.shard_tag(shard))

    def lease_owners(self, shard: int) -> str:
        return SHARD_TEMPLATES["lease_owners"].format(tag=self.shard_tag(shard))

    def lease_starts(self, shard: int) -> str:
        return SHARD_TEMPLATES["lease_starts"].format(tag=self.shard_tag(shard))

    def stats(self, shard: int, sequence_id: str, day: int) -> str:
        return SHARD_TEMPLATES["stats"].format(
            tag=self.shard_tag(shard), sequence_id=sequence_id, day=day
        )

    def stats_ttl(self, shard: int) -> str:
        return SHARD_TEMPLATES["stats_ttl"].format(tag=self.shard_tag(shard))

    def exclusive_waiting(self, shard: int, contact_id: str) -> str:
        return SHARD_TEMPLATES["exclusive_waiting"].format(
            tag=self.shard_tag(shard), contact_id=contact_id
        )

    def sequence_fields(self, shard: int) -> str:
        return SHARD_TEMPLATES["sequence_fields"].format(tag=self.shard_tag(shard))

    def contact(self, shard: int, contact_id: str) -> str:
        return SHARD_TEMPLATES["contact"].format(tag=self.shard_tag(shard), contact_id=contact_id)

    def enrollment(self, shard: int, enrollment_id: str) -> str:
        return SHARD_TEMPLATES["enrollment"].format(
            tag=self.shard_tag(shard), enrollment_id=enrollment_id
        )

    def status_index(self, shard: int, sequence_id: str, status: str) -> str:
        """The listing of one status: the queue for active enrollments (due order), else the
        status's own index (id order)."""
        if status == "active":
            return self.queue(shard, sequence_id)
        return SHARD_TEMPLATES["status_index"].format(
            tag=self.shard_tag(shard), sequence_id=sequence_id, status=status
        )

    def task(self, shard: int, task_id: str) -> str:
        return SHARD_TEMPLATES["task"].format(tag=self.shard_tag(shard), task_id=task_id)

    def task_index(self, shard: int, tenant: str, status: str, assignee: str | None) -> str:
        """The listing of a tenant's tasks in one shard; status "" and assignee None: any."""
        return SHARD_TEMPLATES["task_index"].format(
            tag=self.shard_tag(shard),
            tenant=tenant,
            status=status,
            assignee="" if assignee is None else "=" + assignee,
        )

    def counts(self, shard: int, sequence_id: str) -> str:
        return SHARD_TEMPLATES["counts"].format(tag=self.shard_tag(shard), sequence_id=sequence_id)

    def account_contacts(self, shard: int, tenant: str, account: str) -> str:
        return SHARD_TEMPLATES["account_contacts"].format(
            tag=self.shard_tag(shard), tenant=tenant, account=account
        )

    def tenant_contacts(self, shard: int, tenant: str) -> str:
        return SHARD_TEMPLATES["tenant_contacts"].format(tag=self.shard_tag(shard), tenant=tenant)

    def frequency(self, shard: int, contact_id: str, kind: str) -> str:
        """ZSET of a contact's messages of `kind` in its tenant's frequency-cap window."""
        return SHARD_TEMPLATES["frequency"].format(
            tag=self.shard_tag(shard), contact_id=contact_id, kind=kind
        )

    def message(self, shard: int, message_id: str) -> str:
        return SHARD_TEMPLATES["message"].format(tag=self.shard_tag(shard), message_id=message_id)

    def delivery_due(self, shard: int) -> str:
        return SHARD_DELIVERY_DUE.format(tag=self.shard_tag(shard))

    def failed_all(self, shard: int) -> str:
        return SHARD_FAILED_DELIVERIES.format(tag=self.shard_tag(shard))

    def delivery(self, shard: int, delivery_id: str) -> str:
        return SHARD_TEMPLATES["delivery"].format(
            tag=self.shard_tag(shard), delivery_id=delivery_id
        )

    def delivery_queue(self, shard: int, endpoint_id: str) -> str:
        return SHARD_TEMPLATES["delivery_queue"].format(
            tag=self.shard_tag(shard), endpoint_id=endpoint_id
        )

    def failed_deliveries(self, shard: int, endpoint_id: str) -> str:
        return SHARD_TEMPLATES["failed_deliveries"].format(
            tag=self.shard_tag(shard), endpoint_id=endpoint_id
        )


def same_slot(keys: list[str]) -> bool:
    """True when every key hashes to one cluster slot (what each script call must satisfy)."""
    return len({key_slot(k.encode()) for k in keys}) <= 1
