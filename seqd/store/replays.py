"""Provider webhooks already applied, by the provider's message id: a retried or replayed
webhook is answered and not applied again.

A message is remembered after it was applied, not before: a webhook that failed midway is
applied in full when the provider retries it, and two copies arriving at once are both
applied, which the opt-out, opt-in and reply changes tolerate (each is idempotent).
"""

from __future__ import annotations

from seqd.store.context import StoreContext
from seqd.times import now_ms


class Replays:
    def __init__(self, store: StoreContext) -> None:
        self.store = store
        self.keys = store.keys

    async def seen(self, message_id: str) -> bool:
        return bool(await self.store.client.exists(self.keys.provider_message(message_id)))

    async def remember(self, message_id: str, *, seconds: int) -> None:
        key = self.keys.provider_message(message_id)
        await self.store.client.set(key, now_ms(), ex=seconds)
