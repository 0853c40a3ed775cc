"""STARTTLS against a real Dovecot with a self-signed certificate: the connection is
upgraded before the login and the mailbox is read; a certificate that does not verify is
refused (retried, reported), never read in the clear."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from seqd.lifecycle import mailbox
from seqd.store.db import Store
from tests.imaputil import Dovecot, needs_dovecot
from tests.test_channels_smtp import certificate
from tests.test_lifecycle_email import reply, sent_id
from tests.test_lifecycle_imap import (
    Inbox,
    imap_config,
    mailed_enrollment,
    reading,
    until_state,
)

pytestmark = [needs_dovecot, pytest.mark.slow]
__all__ = ["certificate", "reading"]  # fixtures


@pytest.fixture(scope="module")
def dovecot(
    tmp_path_factory: pytest.TempPathFactory, certificate: tuple[Path, Path]
) -> Iterator[Dovecot]:
    server = Dovecot(tmp_path_factory.mktemp("dovecot-tls"), tls=certificate)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def inbox(dovecot: Dovecot) -> Inbox:
    box = Inbox(dovecot)
    await box.create()
    return box


async def test_starttls_upgrades_before_the_login_and_reads(
    store: Store, inbox: Inbox, reading: Any
) -> None:
    eid = await mailed_enrollment(store)
    running = await reading(imap_config(inbox, tls="starttls", validate_certs=False))
    assert running.states[-1][0] == mailbox.State.IDLE
    await inbox.deliver(reply(in_reply_to=sent_id(eid)))
    await until_state(store, eid, ("paused", "reply_received"))
    # Dovecot logs each login with TLS as such; the test's own deliveries log in without.
    log = (inbox.server.directory / "dovecot.log").read_text().splitlines()
    assert [line for line in log if "Login: user=<seqd@example.test>" in line and ", TLS" in line]


async def test_a_certificate_that_does_not_verify_is_refused(
    store: Store, inbox: Inbox, reading: Any
) -> None:
    running = await reading(imap_config(inbox, tls="starttls"), wait=False)
    await running.until_state(mailbox.State.RETRYING)
    assert any("CERTIFICATE_VERIFY_FAILED" in detail for _, detail in running.states)
