"""IMAP mailboxes' reading state: who reads each (a lease) and how far each folder is
applied (a cursor per folder: UIDVALIDITY and the last UID whose outcome was applied)."""

from __future__ import annotations

from seqd.store import calls
from seqd.store.context import StoreContext


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
