"""Webhook endpoints: one JSON record per endpoint in a HASH under its tenant's tag.

Records hold the signing secrets (they must be readable to sign, so they are not hashed
like API keys) and are changed by compare-and-set (`putEndpoint`): a PATCH and the
deliverer disabling an endpoint on a 410 cannot overwrite each other's change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import msgspec

from seqd import ids, redact
from seqd.errors import Conflict, NotFound
from seqd.event_models import WebhookEndpoint
from seqd.store import calls, event_types
from seqd.store.context import StoreContext
from seqd.store.deliveries import Deliveries
from seqd.store.scripts import ScriptError
from seqd.times import to_rfc3339

# Writers that lose the compare-and-set race re-read and retry this many times.
_RETRIES = 10


class EndpointRecord(msgspec.Struct, kw_only=True):
    """An endpoint as stored. Times in ms."""

    id: str
    url: str
    events: list[str]
    description: str = ""
    enabled: bool = True
    disabled_reason: str | None = None
    secret: str
    previous_secret: str | None = None
    previous_expires_at: int | None = None
    created_at: int
    updated_at: int

    def signing_secrets(self, now: int) -> list[str]:
        """The secrets that sign a delivery made at `now`: current, then previous if valid."""
        out = [self.secret]
        if self.previous_secret and (self.previous_expires_at or 0) > now:
            out.append(self.previous_secret)
        return out

    def wants(self, etype: str) -> bool:
        return self.enabled and event_types.matches(self.events, etype)

    def public(self, now: int) -> WebhookEndpoint:
        """As the API shows it: the URL's password (and secret query values) masked."""
        previous = self.previous_expires_at
        return WebhookEndpoint(
            id=self.id,
            url=redact.mask_url(self.url),
            events=self.events,
            description=self.description,
            enabled=self.enabled,
            disabled_reason=self.disabled_reason,
            created_at=to_rfc3339(self.created_at),
            updated_at=to_rfc3339(self.updated_at),
            previous_secret_expires_at=(
                to_rfc3339(previous)
                if previous and self.previous_secret and previous > now
                else None
            ),
        )


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(EndpointRecord).decode


class Webhooks:
    def __init__(self, store: StoreContext, deliveries: Deliveries) -> None:
        self.store = store
        self.deliveries = deliveries
        self.keys = store.keys

    async def _put(self, tenant: str, eid: str, expected: str, record: str, limit: int) -> None:
        await self.store.runner.run(
            calls.put_endpoint(self.keys, tenant, eid, expected, record, limit)
        )

    async def _raw(self, tenant: str, eid: str) -> str:
        raw = None
        if ids.is_valid(eid, ids.WEBHOOK):
            raw = await self.store.client.hget(self.keys.webhook_endpoints(tenant), eid)
        if raw is None:
            raise NotFound(f"no webhook endpoint {eid}", field="id")
        return str(raw)

    async def create(
        self,
        tenant: str,
        *,
        url: str,
        events: list[str],
        description: str,
        secret: str,
        now: int,
        max_endpoints: int,
    ) -> EndpointRecord:
        """A new endpoint signing with `secret`."""
        record = EndpointRecord(
            id=ids.new(ids.WEBHOOK, now),
            url=url,
            events=events,
            description=description,
            secret=secret,
            created_at=now,
            updated_at=now,
        )
        try:
            await self._put(tenant, record.id, "", _encode(record).decode(), max_endpoints)
        except ScriptError as exc:
            if exc.code == "LIMIT":
                raise Conflict(
                    f"a tenant has at most {exc.detail} webhook endpoints; delete one first"
                ) from None
            raise
        return record

    async def get(self, tenant: str, eid: str) -> EndpointRecord:
        return _decode(await self._raw(tenant, eid))

    async def all(self, tenant: str) -> list[EndpointRecord]:
        raw = await self.store.client.hvals(self.keys.webhook_endpoints(tenant))
        return sorted((_decode(r) for r in raw), key=lambda r: r.id)

    async def update(
        self, tenant: str, eid: str, change: Callable[[EndpointRecord], EndpointRecord]
    ) -> EndpointRecord:
        """Apply `change` to the stored record, re-reading when another writer got first."""
        for _ in range(_RETRIES):
            raw = await self._raw(tenant, eid)
            record = change(_decode(raw))
            try:
                await self._put(tenant, eid, raw, _encode(record).decode(), 0)
            except ScriptError as exc:
                if exc.code == "NOT_FOUND":
                    raise NotFound(f"no webhook endpoint {eid}", field="id") from None
                if exc.code == "CONFLICT":
                    continue
                raise
            return record
        raise Conflict(f"webhook endpoint {eid} keeps changing; try again")

    async def delete(self, tenant: str, eid: str) -> None:
        for _ in range(_RETRIES):
            raw = await self._raw(tenant, eid)
            try:
                await self._put(tenant, eid, raw, "", 0)
            except ScriptError as exc:
                if exc.code == "NOT_FOUND":
                    raise NotFound(f"no webhook endpoint {eid}", field="id") from None
                if exc.code == "CONFLICT":
                    continue
                raise
            await self.deliveries.purge(eid)
            return
        raise Conflict(f"webhook endpoint {eid} keeps changing; try again")

    async def of_tenants(self, tenants: Iterable[str]) -> dict[str, list[EndpointRecord]]:
        """Every endpoint of each tenant, in one round trip (the outbox reader's fan-out)."""
        names = list(dict.fromkeys(tenants))
        pipe = self.store.client.pipeline(transaction=False)
        for tenant in names:
            pipe.hvals(self.keys.webhook_endpoints(tenant))
        rows = await pipe.execute()
        return {t: [_decode(r) for r in row] for t, row in zip(names, rows, strict=True)}

    async def lookup(
        self, pairs: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], EndpointRecord | None]:
        """Endpoints by (tenant, endpoint id), None where deleted (the deliverer's view)."""
        wanted = list(dict.fromkeys(pairs))
        pipe = self.store.client.pipeline(transaction=False)
        for tenant, eid in wanted:
            pipe.hget(self.keys.webhook_endpoints(tenant), eid)
        rows = await pipe.execute()
        return {
            pair: (_decode(row) if row is not None else None)
            for pair, row in zip(wanted, rows, strict=True)
        }
