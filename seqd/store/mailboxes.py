"""IMAP mailboxes' reading state: who reads each (a lease), how far each folder is
applied (a cursor per folder: UIDVALIDITY and the last UID whose outcome was applied), and
how its reader is doing (for `seqd status`)."""

from __future__ import annotations

import msgspec

from seqd.store import calls
from seqd.store.context import StoreContext


class MailboxState(msgspec.Struct, frozen=True):
    """A mailbox's reader as last reported: idle | polling | connecting | retrying, why
    (the last error), and when (ms)."""

    label: str
    state: str
    detail: str
    at: int


class Mailboxes:
    def __init__(self, store: StoreContext) -> None:
        self.store = store
        self.keys = store.keys

    async def hold(self, mailbox: str, owner: str, ttl_ms: int) -> bool:
        """Take or renew the mailbox's lease for `owner`; False while another holds it."""
        call = calls.hold_mailbox(self.keys, mailbox, owner, ttl_ms)
        return bool(await self.store.runner.run(call))

    async def release(self, mailbox: str, owner: str) -> None:
        await self.store.runner.run(calls.hold_mailbox(self.keys, mailbox, owner, 0))

    async def cursor(self, mailbox: str, folder: str) -> tuple[int, int] | None:
        raw = await self.store.client.hget(self.keys.mailbox_cursor(mailbox), folder)
        if raw is None:
            return None
        validity, _, uid = str(raw).partition(":")
        return int(validity), int(uid)

    async def advance(
        self, mailbox: str, owner: str, folder: str, uidvalidity: int, uid: int
    ) -> bool:
        """Record `uid` applied; False when `owner` no longer holds the mailbox."""
        call = calls.advance_mailbox(self.keys, mailbox, owner, folder, uidvalidity, uid)
        return bool(await self.store.runner.run(call))

    async def report(self, label: str, state: str, detail: str, at: int) -> None:
        await self.store.client.hset(self.keys.mailbox_states(), label, f"{state}\t{at}\t{detail}")

    async def forget(self, label: str) -> None:
        await self.store.client.hdel(self.keys.mailbox_states(), label)

    async def states(self) -> list[MailboxState]:
        raw = await self.store.client.hgetall(self.keys.mailbox_states())
        out = []
        for label, text in sorted(raw.items()):
            state, at, detail = [*str(text).split("\t", 2), "", ""][:3]
            out.append(MailboxState(str(label), state, detail, int(at) if at.isdigit() else 0))
        return out
