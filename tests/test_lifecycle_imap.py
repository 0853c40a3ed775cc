"""Reading replies over IMAP from a real Dovecot (tests/imaputil.py): a step is sent, the
answer is delivered into the mailbox by APPEND, and the reader must act on it once."""

from __future__ import annotations

import asyncio
import datetime
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aioimaplib
import pytest

from seqd import health
from seqd.config import ChannelsConfig, Config, ImapConfig, TenantConfig
from seqd.lifecycle import mailbox
from seqd.lifecycle.email_inbound import IngestResult
from seqd.metrics import Metrics
from seqd.store.db import Store
from tests.dispatchutil import Clock, email, enroll, events, raw, sequence, until
from tests.imaputil import OTHER, PASSWORD, USER, Dovecot, needs_dovecot
from tests.lifecycleutil import EMAIL, contact, send_due
from tests.test_lifecycle_email import dsn, reply, sent_id

pytestmark = needs_dovecot


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    server = Dovecot(tmp_path_factory.mktemp("dovecot"))
    server.start()
    yield server
    server.stop()


class Inbox:
    """A fresh folder of the test user, written to over IMAP as an MTA's delivery would."""

    def __init__(self, server: Dovecot) -> None:
        self.server = server
        self.folder = f"t{uuid.uuid4().hex[:10]}"

    async def _client(self) -> aioimaplib.IMAP4:
        client = aioimaplib.IMAP4("127.0.0.1", self.server.port, timeout=10)
        await client.wait_hello_from_server()
        assert (await client.login(USER, PASSWORD)).result == "OK"
        return client

    @staticmethod
    async def _done(client: aioimaplib.IMAP4) -> None:
        await client.logout()
        client.protocol.transport.close()

    async def create(self) -> None:
        client = await self._client()
        assert (await client.create(self.folder)).result == "OK"
        await self._done(client)

    async def recreate(self) -> None:
        """Delete and create the folder again: a new UIDVALIDITY, UIDs from 1."""
        client = await self._client()
        assert (await client.delete(self.folder)).result == "OK"
        assert (await client.create(self.folder)).result == "OK"
        await self._done(client)

    async def deliver(self, message: bytes) -> float:
        """APPEND `message`; the monotonic time it was in the folder."""
        client = await self._client()
        response = await client.append(message, mailbox=self.folder)
        assert response.result == "OK", response
        at = time.monotonic()
        await self._done(client)
        return at


@pytest.fixture
async def inbox(dovecot: Dovecot) -> Inbox:
    box = Inbox(dovecot)
    await box.create()
    return box


def imap_config(inbox: Inbox, **kw: Any) -> Config:
    imap = ImapConfig(
        host="127.0.0.1",
        port=inbox.server.port,
        tls=kw.pop("tls", "none"),
        username=kw.pop("username", USER),
        password=kw.pop("password", PASSWORD),
        folders=[inbox.folder],
        **{"poll_seconds": 0.2, "timeout_seconds": 5.0, "retry_max_seconds": 0.5, **kw},
    )
    return Config(tenants={"acme": TenantConfig(channels=ChannelsConfig(imap=imap))})


class Running:
    """A reader of the config's mailbox, with what it reported."""

    def __init__(self, cfg: Config, store: Store) -> None:
        (self.mailbox,) = mailbox.mailboxes(cfg)
        self.states: list[tuple[mailbox.State, str]] = []
        self.applied: list[IngestResult] = []
        self.reader = mailbox.MailboxReader(
            cfg,
            store,
            self.mailbox,
            on_state=lambda _, state, detail: self.states.append((state, detail)),
            on_message=self.applied.append,
        )

    async def until_state(self, *states: mailbox.State) -> None:
        async with asyncio.timeout(15):
            while not self.states or self.states[-1][0] not in states:  # noqa: ASYNC110
                await asyncio.sleep(0.005)


@pytest.fixture
async def reading(store: Store) -> AsyncIterator[Any]:
    started: list[Running] = []

    async def start(cfg: Config, wait: bool = True) -> Running:
        one = Running(cfg, store)
        await one.reader.start()
        started.append(one)
        if wait:
            await one.until_state(mailbox.State.IDLE, mailbox.State.POLLING)
        return one

    yield start
    for one in started:
        await one.reader.stop()


async def mailed_enrollment(store: Store) -> str:
    """A contact in an email sequence whose first step was sent (Message-ID <eid.0@...>)."""
    cid = await contact(store)
    (e,) = await enroll(store, await sequence(store, email(), email(wait=60)), [cid])
    await send_due(store, Clock())
    return e.id


async def state(store: Store, eid: str) -> tuple[str, str | None]:
    h = await raw(store, eid)
    return h["st"], h.get("pr") or h.get("cr")


async def until_state(store: Store, eid: str, want: tuple[str, str | None]) -> float:
    """Wait until the enrollment is in `want`; the monotonic time it was seen so."""
    async with asyncio.timeout(15):
        while await state(store, eid) != want:  # noqa: ASYNC110 - polling the store
            await asyncio.sleep(0.002)
    return time.monotonic()


async def until_cursor(store: Store, running: Running, folder: str, uid: int) -> None:
    async with asyncio.timeout(15):
        while True:
            cursor = await store.mailboxes.cursor(running.mailbox.id, folder)
            if cursor is not None and cursor[1] >= uid:
                return
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("idle", [True, False], ids=["idle", "polling"])
async def test_a_reply_in_the_mailbox_pauses_the_enrollment(
    store: Store, inbox: Inbox, reading: Any, idle: bool
) -> None:
    eid = await mailed_enrollment(store)
    # With IDLE a long poll_seconds: only the server's push can be what reads the reply.
    running = await reading(imap_config(inbox, idle=idle, poll_seconds=30.0 if idle else 0.2))
    assert running.states[-1][0] == (mailbox.State.IDLE if idle else mailbox.State.POLLING)
    arrived = await inbox.deliver(reply(sender="assistant@other.example", in_reply_to=sent_id(eid)))
    paused = await until_state(store, eid, ("paused", "reply_received"))
    print(f"\nimap {'idle' if idle else 'polling 0.2 s'}: {1000 * (paused - arrived):.1f} ms")
    await until(lambda: bool(running.applied))
    assert [r.kind for r in running.applied] == ["reply"]


async def test_a_dsn_in_the_mailbox_bounces_the_address(
    store: Store, inbox: Inbox, reading: Any
) -> None:
    eid = await mailed_enrollment(store)
    await reading(imap_config(inbox))
    await inbox.deliver(dsn(EMAIL, "5.1.1", original_id=sent_id(eid)))
    await until_state(store, eid, ("cancelled", "bounced"))
    assert await store.suppressions.get("acme", "email", EMAIL) is not None


async def test_a_message_read_again_after_a_restart_is_not_applied_twice(
    store: Store, inbox: Inbox, reading: Any
) -> None:
    auto = reply(subject="Out of office", Auto_Submitted="auto-replied")
    await contact(store)
    first = await reading(imap_config(inbox))
    await inbox.deliver(auto)
    await until_cursor(store, first, inbox.folder, 1)
    await first.reader.stop()
    # A crash after the outcome but before the cursor moved: the next reader reads it again.
    await store.client.delete(store.keys.mailbox_cursor(first.mailbox.id))
    second = await reading(imap_config(inbox))
    await inbox.deliver(reply(sender="stranger@example.org"))
    await until_cursor(store, second, inbox.folder, 2)
    assert [r.kind for r in second.applied] == ["reply"]
    replied = [e for e in await events(store) if e["type"] == "contact.auto_replied"]
    assert len(replied) == 1


async def test_a_new_uidvalidity_reads_the_folder_anew_without_repeats(
    store: Store, inbox: Inbox, reading: Any
) -> None:
    eid = await mailed_enrollment(store)
    auto = reply(subject="Out of office", Auto_Submitted="auto-replied")
    running = await reading(imap_config(inbox))
    await inbox.deliver(auto)
    await until_cursor(store, running, inbox.folder, 1)
    before = await store.mailboxes.cursor(running.mailbox.id, inbox.folder)
    await running.reader.stop()
    await inbox.recreate()
    # The rebuilt folder holds the old message again (UID 1) and a new reply (UID 2).
    await inbox.deliver(auto)
    await inbox.deliver(reply(in_reply_to=sent_id(eid)))
    again = await reading(imap_config(inbox))
    await until_state(store, eid, ("paused", "reply_received"))
    after = await store.mailboxes.cursor(running.mailbox.id, inbox.folder)
    assert before is not None and after is not None and after[0] != before[0]
    await until(lambda: bool(again.applied))
    assert [r.kind for r in again.applied] == ["reply"]
    replied = [e for e in await events(store) if e["type"] == "contact.auto_replied"]
    assert len(replied) == 1


async def test_a_refused_login_is_retried_and_holds_up_no_other_mailbox(
    store: Store, inbox: Inbox, reading: Any
) -> None:
    eid = await mailed_enrollment(store)
    wrong = await reading(
        imap_config(inbox, username=OTHER, password="not-the-password"), wait=False
    )
    await wrong.until_state(mailbox.State.RETRYING)
    async with asyncio.timeout(15):
        while sum(s == mailbox.State.RETRYING for s, _ in wrong.states) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert any("login refused" in detail for _, detail in wrong.states)
    assert "not-the-password" not in repr(wrong.states)
    good = await reading(imap_config(inbox))
    await inbox.deliver(reply(in_reply_to=sent_id(eid)))
    await until_state(store, eid, ("paused", "reply_received"))
    await until(lambda: bool(good.applied))
    assert [r.kind for r in good.applied] == ["reply"]


async def test_a_second_process_stands_by_while_the_first_reads(
    store: Store, inbox: Inbox, reading: Any
) -> None:
    cfg = imap_config(inbox)
    first = await reading(cfg)
    second = await reading(cfg, wait=False)
    await second.until_state(mailbox.State.STANDBY)
    await inbox.deliver(reply(sender="stranger@example.org"))
    await until_cursor(store, first, inbox.folder, 1)
    assert len(first.applied) == 1 and second.applied == []
    await first.reader.stop()  # gives the lease up: the second takes the mailbox over
    await second.until_state(mailbox.State.IDLE)


def test_mailboxes_shared_and_per_tenant(tmp_path: Path) -> None:
    shared = ImapConfig(host="imap.example.com", username="a", password="p")
    own = ImapConfig(host="imap.example.com", username="b", password="p")
    cfg = Config(
        channels=ChannelsConfig(imap=shared),
        tenants={"acme": TenantConfig(channels=ChannelsConfig(imap=own))},
    )
    found = {m.label: m.tenant for m in mailbox.mailboxes(cfg)}
    assert found == {"a@imap.example.com:993": None, "b@imap.example.com:993": "acme"}


async def test_the_part_reports_each_mailbox_on_readyz_details_and_a_metric(
    store: Store, inbox: Inbox
) -> None:
    cfg = imap_config(inbox)
    liveness, observer = health.Liveness(), Metrics()
    (label,) = [m.label for m in mailbox.mailboxes(cfg)]
    async with mailbox.part(cfg, store, liveness=liveness, observer=observer):
        await until(lambda: liveness.notes().get(f"imap {label}") == "idle", 15)
        result = await health.check(store, liveness)
        assert result.ready and result.details == {f"imap {label}": "idle"}
        assert observer.registry.get_sample_value("seqd_imap_mailbox_up", {"mailbox": label}) == 1
        await inbox.deliver(reply(sender="stranger@example.org"))
        sample = {"kind": "reply"}
        await until(
            lambda: observer.registry.get_sample_value("seqd_imap_messages_total", sample) == 1
        )
    assert liveness.notes() == {}


@pytest.mark.slow
async def test_a_reply_with_a_stripped_thread_is_matched_by_its_sender(
    store: Store, inbox: Inbox, reading: Any
) -> None:
    eid = await mailed_enrollment(store)
    await reading(imap_config(inbox))
    # No In-Reply-To, no References (a client that starts a new thread): the From names
    # the contact.
    await inbox.deliver(reply(sender="Ada Lovelace <ada@Example.COM>", subject="Question"))
    await until_state(store, eid, ("paused", "reply_received"))


@pytest.mark.slow
async def test_the_same_message_seen_again_after_a_restart_is_applied_once(
    store: Store, inbox: Inbox, reading: Any
) -> None:
    await contact(store)
    auto = reply(subject="Out of office", Auto_Submitted="auto-replied")
    first = await reading(imap_config(inbox))
    await inbox.deliver(auto)
    await until_cursor(store, first, inbox.folder, 1)
    assert [r.kind for r in first.applied] == ["auto_reply"]
    await first.reader.stop()
    # After the restart the same message is in the folder twice: the old UID and a copy
    # delivered again (same Message-ID, new UID); a stranger's reply marks the end.
    second = await reading(imap_config(inbox))
    await inbox.deliver(auto)
    await inbox.deliver(reply(sender="stranger@example.org"))
    await until_cursor(store, second, inbox.folder, 3)
    assert [r.kind for r in second.applied] == ["reply"]
    replied = [e for e in await events(store) if e["type"] == "contact.auto_replied"]
    assert len(replied) == 1


@pytest.mark.slow
async def test_an_out_of_office_reply_pauses_until_the_return(
    store: Store, inbox: Inbox, reading: Any
) -> None:
    from tests.test_lifecycle_absence import auto_reply, ooo_sequence

    cid = await contact(store, timezone="UTC")
    (e,) = await enroll(store, await ooo_sequence(store, "pause_until_return"), [cid])
    await send_due(store, Clock())
    await reading(imap_config(inbox))
    back = datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=3)
    await inbox.deliver(auto_reply(f"Je suis absente, de retour le {back.day} {MOIS[back.month]}."))
    await until_state(store, e.id, ("paused", "out_of_office"))
    resume = datetime.datetime.combine(
        back + datetime.timedelta(days=1), datetime.time(), datetime.UTC
    )
    assert int((await raw(store, e.id))["ra"]) == int(resume.timestamp() * 1000)


MOIS = ["", "janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août",
        "septembre", "octobre", "novembre", "décembre"]  # fmt: skip


@pytest.mark.slow
async def test_a_reply_in_the_mailbox_stops_the_whole_account(
    store: Store, inbox: Inbox, reading: Any
) -> None:
    from tests.test_lifecycle_accounts import account_sequence

    people = [
        (await store.contacts.create("acme", {"email": f"p{i}@bigco.example"})).id for i in range(3)
    ]
    other = (await store.contacts.create("acme", {"email": "x@other.example"})).id
    seq = await account_sequence(store, on_reply_scope="account")
    enrolled = {e.contact_id: e.id for e in await enroll(store, seq, [*people, other])}
    await send_due(store, Clock())
    await reading(imap_config(inbox))
    await inbox.deliver(reply(sender="P2 <p2@bigco.example>", subject="Not now"))
    for cid in people[:2]:
        await until_state(store, enrolled[cid], ("paused", "account_replied"))
    await until_state(store, enrolled[people[2]], ("paused", "reply_received"))
    assert await state(store, enrolled[other]) == ("active", None)


@pytest.mark.slow
async def test_starttls_where_the_server_offers_none_is_refused_not_read_in_the_clear(
    store: Store, inbox: Inbox, reading: Any
) -> None:
    running = await reading(imap_config(inbox, tls="starttls"), wait=False)
    await running.until_state(mailbox.State.RETRYING)
    assert any("does not offer STARTTLS" in detail for _, detail in running.states)
