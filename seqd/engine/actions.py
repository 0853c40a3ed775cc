"""Who runs the action kinds' steps that are sent (kinds.py `family`): a dispatcher's
sender source, with a sender per action kind beside the channel providers. (A task step
sends nothing: `advance` makes its task, includes/tasks.lua.)"""

from __future__ import annotations

from seqd.channels.base import Sender
from seqd.config import Config
from seqd.engine.enroll_step import EnrollStepSender
from seqd.engine.ports import SenderSource
from seqd.engine.webhook_step import WebhookStepSender
from seqd.kinds import Kind
from seqd.store.db import Store
from seqd.timing.policy import Policy


class ActionSenders:
    """`channels` for the message kinds, seqd's own senders for the action kinds."""

    def __init__(self, channels: SenderSource, store: Store, config: Config) -> None:
        self.channels = channels
        self.webhook = WebhookStepSender(store, config.webhooks, config.webhook_step_secret_for)
        self.enroll = EnrollStepSender(store, Policy(config))

    def get(self, tenant: str, kind: Kind, profile: str | None = None) -> Sender:
        if kind == "webhook":
            return self.webhook
        if kind == "enroll":
            return self.enroll
        if profile is None:
            return self.channels.get(tenant, kind)
        return self.channels.get(tenant, kind, profile)

    async def close(self) -> None:
        try:
            await self.webhook.close()
        finally:
            await self.channels.close()
