"""holdMailbox-1 and advanceMailbox-2 (through store/mailboxes.py): one reader holds a
mailbox, and only it moves a folder's cursor, never backwards within one UIDVALIDITY."""

from __future__ import annotations

from seqd.store.db import Store


async def test_one_owner_holds_the_lease_until_it_gives_it_up(any_store: Store) -> None:
    boxes = any_store.mailboxes
    assert await boxes.hold("mb", "a", 60_000)
    assert not await boxes.hold("mb", "b", 60_000)
    assert await boxes.hold("mb", "a", 60_000)  # a renewal
    await boxes.release("mb", "b")  # not b's to give up
    assert not await boxes.hold("mb", "b", 60_000)
    await boxes.release("mb", "a")
    assert await boxes.hold("mb", "b", 60_000)


async def test_the_cursor_moves_forward_for_the_holder_only(any_store: Store) -> None:
    boxes = any_store.mailboxes
    assert await boxes.cursor("mb", "INBOX") is None
    assert not await boxes.advance("mb", "a", "INBOX", 7, 1)  # no lease: nothing recorded
    assert await boxes.cursor("mb", "INBOX") is None
    await boxes.hold("mb", "a", 60_000)
    assert await boxes.advance("mb", "a", "INBOX", 7, 5)
    assert await boxes.advance("mb", "a", "INBOX", 7, 3)  # behind: kept at 5
    assert await boxes.cursor("mb", "INBOX") == (7, 5)
    assert await boxes.advance("mb", "a", "INBOX", 9, 0)  # a new UIDVALIDITY starts over
    assert await boxes.cursor("mb", "INBOX") == (9, 0)
    assert await boxes.cursor("mb", "Sent") is None
    assert not await boxes.advance("mb", "b", "INBOX", 9, 8)
    assert await boxes.cursor("mb", "INBOX") == (9, 0)
