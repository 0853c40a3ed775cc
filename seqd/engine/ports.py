"""What the dispatcher talks to besides Redis: senders, an observer, a liveness monitor."""

from __future__ import annotations

from typing import Protocol

from seqd.channels.base import Sender
from seqd.kinds import Kind


class SenderSource(Protocol):
    """Who sends a tenant's SMS and email (`channels.registry.Senders`)."""

    def get(self, tenant: str, kind: Kind, profile: str | None = None) -> Sender: ...

    async def close(self) -> None: ...


class Observer(Protocol):
    """What the dispatcher reports as it goes (`metrics.Metrics` implements it)."""

    def step_sent(self, channel: str, outcome: str, n: int = 1) -> None: ...

    def lateness(self, seconds: float) -> None: ...

    def claimed(self, n: int) -> None: ...

    def settled(self, n: int) -> None: ...

    def step_deferred(self, reason: str) -> None: ...


class Quiet:
    """The observer when nobody listens."""

    def step_sent(self, channel: str, outcome: str, n: int = 1) -> None:
        pass

    def lateness(self, seconds: float) -> None:
        pass

    def claimed(self, n: int) -> None:
        pass

    def settled(self, n: int) -> None:
        pass

    def step_deferred(self, reason: str) -> None:
        pass
