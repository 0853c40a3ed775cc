"""Every Redis key name seqd uses, in one place.

Three hash tags, so that each Lua script touches one slot (Redis Cluster safe):

- `{<prefix>}`           global: meta, API keys, tenants, intake stream.
- `{<prefix>:t:<tenant>}` a tenant's own data: sequences, contact lookup indexes.
- `{<prefix>:<shard>}`    a shard of per-contact data: contacts, enrollments, due index,
                          listing indexes, counters, outbox.

Keys that depend on ids read inside a script (an enrollment claimed from the due index,
say) are built in Lua from the shard tag by helpers that `scripts.py` generates from
`SHARD_TEMPLATES` below, so a key name is still spelled only here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from redis.crc import key_slot

# Per-shard keys by family; `{tag}` is the shard's hash tag, other fields are ids.
SHARD_TEMPLATES: Final[Mapping[str, str]] = {
    "contact": "{tag}:c:{contact_id}",
    "enrollment": "{tag}:e:{enrollment_id}",
    # ZSET of enrollments of one sequence in one status; all scores 0, members in id order.
    "status_index": "{tag}:ix:{sequence_id}:{status}",
    # HASH status -> count, per sequence.
    "counts": "{tag}:n:{sequence_id}",
    # ZSET of due items parked while their sequence is paused; score = original due time.
    "parked": "{tag}:park:{sequence_id}",
    # ZSET of a tenant's contacts in this shard, id order.
    "tenant_contacts": "{tag}:cx:{tenant}",
    # STRING: the enrollment id a provider message id (sid, Message-ID) belongs to.
    "message": "{tag}:m:{message_id}",
}
# Fixed per-shard keys.
SHARD_DUE = "{tag}:due"
SHARD_OUTBOX = "{tag}:outbox"
SHARD_SEQUENCES = "{tag}:sq"


class Keys:
    """Key builder for one deployment prefix and shard count."""

    __slots__ = ("global_tag", "prefix", "shards")

    def __init__(self, prefix: str, shards: int) -> None:
        self.prefix = prefix
        self.shards = shards
        self.global_tag = "{" + prefix + "}"

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

    def intake(self) -> str:
        return f"{self.prefix}:intake"

    def sends(self, bucket: int) -> str:
        """HASH "<channel>:<outcome>" -> steps, for one 10-second bucket (epoch s // 10).

        Written by every process's dispatcher (`metrics.RateRecorder`), read by `seqd status`;
        each bucket expires a few minutes after it closes.
        """
        return f"{self.global_tag}:sends:{bucket}"

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

    def contact_lookup(self, tenant: str, field: str) -> str:
        """HASH normalised value -> contact id; field is phone, email or external_id."""
        return f"{self.tenant_tag(tenant)}:lk:{field}"

    # -- shard ----------------------------------------------------------------
    def shard_tag(self, shard: int) -> str:
        return "{" + f"{self.prefix}:{shard}" + "}"

    def due(self, shard: int) -> str:
        return SHARD_DUE.format(tag=self.shard_tag(shard))

    def outbox(self, shard: int) -> str:
        return SHARD_OUTBOX.format(tag=self.shard_tag(shard))

    def shard_sequences(self, shard: int) -> str:
        """HASH sequence id -> "<status>:<version>:<steps>", the shard's mirror of each."""
        return SHARD_SEQUENCES.format(tag=self.shard_tag(shard))

    def contact(self, shard: int, contact_id: str) -> str:
        return SHARD_TEMPLATES["contact"].format(tag=self.shard_tag(shard), contact_id=contact_id)

    def enrollment(self, shard: int, enrollment_id: str) -> str:
        return SHARD_TEMPLATES["enrollment"].format(
            tag=self.shard_tag(shard), enrollment_id=enrollment_id
        )

    def status_index(self, shard: int, sequence_id: str, status: str) -> str:
        return SHARD_TEMPLATES["status_index"].format(
            tag=self.shard_tag(shard), sequence_id=sequence_id, status=status
        )

    def counts(self, shard: int, sequence_id: str) -> str:
        return SHARD_TEMPLATES["counts"].format(tag=self.shard_tag(shard), sequence_id=sequence_id)

    def parked(self, shard: int, sequence_id: str) -> str:
        return SHARD_TEMPLATES["parked"].format(tag=self.shard_tag(shard), sequence_id=sequence_id)

    def tenant_contacts(self, shard: int, tenant: str) -> str:
        return SHARD_TEMPLATES["tenant_contacts"].format(tag=self.shard_tag(shard), tenant=tenant)

    def message(self, shard: int, message_id: str) -> str:
        return SHARD_TEMPLATES["message"].format(tag=self.shard_tag(shard), message_id=message_id)


def same_slot(keys: list[str]) -> bool:
    """True when every key hashes to one cluster slot (what each script call must satisfy)."""
    return len({key_slot(k.encode()) for k in keys}) <= 1
