"""A tenant's settings set through the API (GET/PATCH /v1/tenant/settings): one JSON text
under its tenant's tag, read over the config's values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from seqd.senders.models import StoredSettings

if TYPE_CHECKING:
    from seqd.store.context import StoreContext

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(StoredSettings).decode


class TenantSettingsStore:
    def __init__(self, store: StoreContext) -> None:
        self.store = store
        self.keys = store.keys
        # Tenant -> changes made through this process (as SenderRecords.changes).
        self.changes: dict[str, int] = {}

    async def get(self, tenant: str) -> StoredSettings:
        return (await self.many([tenant]))[tenant]

    async def many(self, tenants: Sequence[str]) -> dict[str, StoredSettings]:
        if not tenants:
            return {}
        # One GET each (each tenant's key has its own slot), in one round trip.
        pipe = self.store.client.pipeline(transaction=False)
        for tenant in tenants:
            pipe.get(self.keys.tenant_settings(tenant))
        raw = await pipe.execute()
        return {t: _decode(r) if r else StoredSettings() for t, r in zip(tenants, raw, strict=True)}

    async def put(self, tenant: str, settings: StoredSettings) -> None:
        """Replace the tenant's settings (one SET: nothing else to keep in step)."""
        await self.store.client.set(self.keys.tenant_settings(tenant), _encode(settings))
        self.changes[tenant] = self.changes.get(tenant, 0) + 1
