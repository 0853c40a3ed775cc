"""IMAP settings on API-created email senders: validated (422 naming the field), the
password write-only, and the mailbox read by `seqd serve`'s mailbox part (Dovecot), one bad
mailbox holding up no other, each reported on /readyz details and the metric."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from rich.console import Console

from seqd import health, status
from seqd.config import Config, LifecycleConfig
from seqd.lifecycle import mailbox
from seqd.metrics import Metrics
from seqd.store.db import Store
from tests.dispatchutil import until
from tests.imaputil import PASSWORD, USER, needs_dovecot
from tests.lifecycleutil import client
from tests.test_lifecycle_email import reply, sent_id
from tests.test_lifecycle_imap import (  # noqa: F401 - fixtures
    Inbox,
    dovecot,
    inbox,
    mailed_enrollment,
    until_state,
)

SECRET = "imap-secret-never-shown"


def imap(**over: Any) -> dict[str, Any]:
    return {"host": "imap.acme.example", "username": "sales@acme.example", "password": SECRET,
            **over}  # fmt: skip


def sender(address: str = "sales@acme.example", **over: Any) -> dict[str, Any]:
    return {"channel": "email", "address": address, "imap": imap(), **over}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (sender(channel="sms", address="+14155550123"), "imap"),
        (sender(imap={k: v for k, v in imap().items() if k != "password"}), "imap.password"),
        (sender(imap=imap(tls="none")), "imap.tls"),
        (sender(imap=imap(port=0)), "imap.port"),
        (sender(imap=imap(host="bad host")), "imap.host"),
        (sender(imap=imap(folders=[])), "imap.folders"),
        (sender(imap=imap(tls="ssl")), "imap.tls"),
        (sender(imap=imap(poll_seconds=0)), "imap.poll_seconds"),
    ],
)
async def test_imap_settings_are_checked(store: Store, body: dict[str, Any], field: str) -> None:
    async with client(store) as api:
        code, problem = await api.call("POST", "/senders", body)
    assert code == 422, problem
    assert field in json.dumps(problem)


async def test_the_password_is_never_returned_and_kept_by_a_patch(store: Store) -> None:
    async with client(store) as api:
        code, created = await api.call("POST", "/senders", sender())
        assert code == 201, created
        sid = created["sender"]["id"]
        code, got = await api.call("GET", f"/senders/{sid}")
        code, listed = await api.call("GET", "/senders")
        code, patched = await api.call(
            "PATCH",
            f"/senders/{sid}",
            {"imap": {**imap(), "password": None, "port": 143, "tls": "starttls"}},
        )
        assert code == 200, patched
    for answer in (created, got, listed, patched):
        assert SECRET not in json.dumps(answer)
    view = patched["sender"]["imap"]
    assert (view["port"], view["tls"], view["password_set"]) == (143, "starttls", True)
    record = await store.senders.get("acme", sid)
    assert record.imap is not None and record.imap.password == SECRET
    (found,) = await mailbox.sender_mailboxes(store)
    assert (found.tenant, found.imap.password, found.imap.tls) == ("acme", SECRET, "starttls")


@needs_dovecot
@pytest.mark.slow
async def test_a_senders_mailbox_is_read_and_a_bad_one_holds_up_no_other(
    store: Store,
    inbox: Inbox,  # noqa: F811 - the fixture
) -> None:
    eid = await mailed_enrollment(store)
    settings = {"host": "127.0.0.1", "port": inbox.server.port, "tls": "none",
                "username": USER, "folders": [inbox.folder], "poll_seconds": 1}  # fmt: skip
    cfg = Config(lifecycle=LifecycleConfig(imap_senders_refresh_seconds=0.2))
    liveness, observer = health.Liveness(), Metrics()
    good = f"{USER}@127.0.0.1:{inbox.server.port}"
    bad = f"nobody@127.0.0.1:{inbox.server.port}"
    async with client(store) as api, mailbox.part(cfg, store, liveness=liveness, observer=observer):
        code, body = await api.call(
            "POST",
            "/senders",
            sender(
                "bad@acme.example", imap={**settings, "username": "nobody", "password": "wrong"}
            ),
        )
        assert code == 201, body
        code, body = await api.call(
            "POST", "/senders", sender("seqd@acme.example", imap={**settings, "password": PASSWORD})
        )
        assert code == 201, body
        good_id = body["sender"]["id"]
        await until(lambda: liveness.notes().get(f"imap {good}") == "idle", 15)
        await until(lambda: str(liveness.notes().get(f"imap {bad}", "")).startswith("retrying"), 15)
        result = await health.check(store, liveness)
        assert result.ready and "login refused" in result.details[f"imap {bad}"]
        assert observer.registry.get_sample_value("seqd_imap_mailbox_up", {"mailbox": bad}) == 0
        # `seqd status` (from Redis, whichever process reads the mailbox) shows both.
        screen = io.StringIO()
        Console(file=screen, width=160).print(status.render(await status.collect(store)))
        lines = screen.getvalue().splitlines()
        assert any(bad in line and "retrying" in line and "login refused" in line for line in lines)
        assert any(good in line and "idle" in line for line in lines)
        await inbox.deliver(reply(in_reply_to=sent_id(eid)))
        await until_state(store, eid, ("paused", "reply_received"))
        # Deleting the sender stops its reader.
        assert (await api.call("DELETE", f"/senders/{good_id}"))[0] == 204
        await until(lambda: f"imap {good}" not in liveness.notes(), 15)
        assert good not in {m.label for m in await store.mailboxes.states()}
