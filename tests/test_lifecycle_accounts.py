"""Account-level stop: a contact's account (account_id attribute, else a company email
domain, never a free-mail one), its per-shard index kept by every contact write, and a
reply from anyone on the account stopping the account's enrollments in sequences with
`on_reply_scope = "account"`."""

from __future__ import annotations

from typing import Any

import pytest

from seqd import accounts, ids, models
from seqd.store import upserts
from seqd.store.db import Store
from tests.dispatchutil import TENANT, Clock, email, enroll, events, read
from tests.lifecycleutil import Client, client, send_due
from tests.test_lifecycle_email import reply


@pytest.mark.parametrize(
    ("email", "attributes", "account"),
    [
        ("ada@bigco.example", {}, "domain:bigco.example"),
        ("ada@BigCo.Example", None, "domain:bigco.example"),
        ("ada@bigco.example", {"account_id": "acct-7"}, "id:acct-7"),
        ("ada@gmail.com", {"account_id": 42}, "id:42"),
        ("ada@gmail.com", {}, None),
        ("ada@gmx.de", {}, None),
        ("ada@orange.fr", {}, None),
        ("ada@yahoo.com", {"account_id": " "}, None),
        (None, {}, None),
    ],
)
def test_account_of(email: str | None, attributes: dict[str, Any] | None, account: str) -> None:
    assert accounts.account_of(email, attributes) == account


def test_the_free_mail_list_is_the_maintained_one() -> None:
    assert len(accounts.FREE_MAIL) > 1000
    assert {"gmail.com", "outlook.com", "hotmail.com", "web.de", "icloud.com"} <= accounts.FREE_MAIL


async def members(store: Store, account: str) -> set[str]:
    """The account's contacts, from every shard's set."""
    digest = accounts.digest(account)
    found: set[str] = set()
    for shard in range(store.shards):
        found |= set(
            await store.client.smembers(store.keys.account_contacts(shard, TENANT, digest))
        )
    return found


async def test_the_index_follows_creates_updates_upserts_and_deletes(store: Store) -> None:
    made = [
        (await store.contacts.create(TENANT, {"email": f"p{i}@bigco.example"})).id
        for i in range(12)
    ]
    assert {ids.shard_of(c, store.shards) for c in made} != {0}  # spread over shards
    assert await members(store, "domain:bigco.example") == set(made)
    first, second, third = made[:3]
    await store.contacts.update(TENANT, first, {"email": "p0@other.example"})
    await store.contacts.update(TENANT, second, {"attributes": {"account_id": "a-1"}})
    await store.contacts.update(TENANT, third, {"first_name": "Ada"})  # no change
    await store.contacts.delete(TENANT, made[3])
    assert await members(store, "domain:bigco.example") == set(made[2:]) - {made[3]}
    assert await members(store, "domain:other.example") == {first}
    assert await members(store, "id:a-1") == {second}
    await store.contacts.update(TENANT, second, {"attributes": {}})
    assert second in await members(store, "domain:bigco.example")
    # The bulk path (imports, inline enrollments) writes it too.
    rows = [{"email": f"q{i}@newco.example"} for i in range(5)] + [{"email": "z@gmail.com"}]
    done = await upserts.upsert_many(store, TENANT, rows)
    created = [d.contact.id for d in done if isinstance(d, upserts.Upserted)]
    assert await members(store, "domain:newco.example") == set(created[:5])
    assert await members(store, "domain:gmail.com") == set()


async def account_sequence(store: Store, **kw: Any) -> models.Sequence:
    body = models.SequenceCreate(name="s", status="active", steps=[email(), email(wait=10)], **kw)
    return await store.sequences.create(TENANT, body)


async def api_contact(api: Client, address: str, **attributes: Any) -> str:
    code, body = await api.call("POST", "/contacts", {"email": address, "attributes": attributes})
    assert code == 201, body
    return str(body["contact"]["id"])


async def inbound(api: Client, message: bytes) -> dict[str, Any]:
    code, body = await api.call(
        "POST", "/inbound/email", data=message, headers={"Content-Type": "message/rfc822"}
    )
    assert code == 200, body
    return body  # type: ignore[no-any-return]


async def test_a_reply_stops_the_whole_account_through_the_api(store: Store) -> None:
    async with client(store) as api:
        bigco = [await api_contact(api, f"p{i}@bigco.example") for i in range(4)]
        tagged = await api_contact(api, "cto@gmail.com", account_id="bigco")
        await api.call("PATCH", f"/contacts/{bigco[3]}", {"attributes": {"account_id": "bigco"}})
        outsider = await api_contact(api, "ada@other.example")
        free = [await api_contact(api, f"f{i}@gmail.com") for i in range(2)]
        scoped = await account_sequence(store, on_reply_scope="account")
        plain = await account_sequence(store)
        everyone = [*bigco, tagged, outsider, *free]
        in_scoped = {e.contact_id: e.id for e in await enroll(store, scoped, everyone)}
        in_plain = {e.contact_id: e.id for e in await enroll(store, plain, everyone)}
        await send_due(store, Clock())

        body = await inbound(api, reply(sender="P0 <p0@bigco.example>"))
    changes = {c["id"]: c["outcome"] for c in body["enrollments"]}
    # The replier: both sequences (its own reply); its colleagues at bigco.example: the
    # account-scoped sequence only. bigco[3] moved to the account "bigco" (with `tagged`).
    stopped = {in_scoped[c] for c in bigco[:3]} | {in_plain[bigco[0]]}
    assert {e for e, outcome in changes.items() if outcome == "paused"} == stopped
    assert (await read(store, in_scoped[bigco[0]])).paused_reason == "reply_received"
    for cid in bigco[1:3]:
        assert (await read(store, in_scoped[cid])).paused_reason == "account_replied"
        assert (await read(store, in_plain[cid])).status == "active"
    for cid in (bigco[3], tagged, outsider, *free):
        assert (await read(store, in_scoped[cid])).status == "active"
    paused = [e for e in await events(store) if e["type"] == "sequence.enrollment.paused"]
    by_account = [e for e in paused if e.get("paused_reason") == "account_replied"]
    assert {e["id"] for e in by_account} == {in_scoped[c] for c in bigco[1:3]}
    assert {e["replied_by"] for e in by_account} == {bigco[0]}

    # A reply from the account "bigco" (by its attribute) stops its two contacts.
    async with client(store) as api:
        body = await inbound(api, reply(sender="CTO <cto@gmail.com>"))
    assert (await read(store, in_scoped[bigco[3]])).paused_reason == "account_replied"
    assert (await read(store, in_scoped[tagged])).paused_reason == "reply_received"
    # A free-mail address names no account: the other gmail contacts go on.
    async with client(store) as api:
        await inbound(api, reply(sender="F0 <f0@gmail.com>"))
    assert (await read(store, in_scoped[free[0]])).status == "paused"
    assert (await read(store, in_scoped[free[1]])).status == "active"
    assert (await read(store, in_scoped[outsider])).status == "active"


async def test_an_account_reply_completes_per_on_reply(store: Store) -> None:
    async with client(store) as api:
        people = [await api_contact(api, f"p{i}@bigco.example") for i in range(3)]
        seq = await account_sequence(store, on_reply_scope="account", on_reply="complete")
        # Not mailed yet: the account stop still applies to every live enrollment.
        enrolled = {e.contact_id: e.id for e in await enroll(store, seq, people)}
        await inbound(api, reply(sender="p1@bigco.example"))
    for cid in people:
        assert (await read(store, enrolled[cid])).status == "completed"


async def test_reply_account_script_refuses_a_stale_version(any_store: Store) -> None:
    from seqd.kinds import letters
    from seqd.store import calls
    from seqd.store.scripts import ScriptError

    s = any_store
    seq = await account_sequence(s, on_reply_scope="account")
    cids = [
        (await s.contacts.create(TENANT, {"email": f"p{i}@bigco.example"})).id for i in range(6)
    ]
    enrolled = await enroll(s, seq, cids)
    digest = accounts.digest("domain:bigco.example")
    kinds = letters([step.kind for step in seq.steps])
    shard = ids.shard_of(cids[0], s.shards)

    def call(version: int, scope: str) -> calls.Call:
        at = [seq.id, version, kinds, "pause", scope]
        return calls.reply_account(s.keys, shard, 1, TENANT, digest, cids[0], at)

    with pytest.raises(ScriptError) as info:
        await s.runner.run(call(99, "account"))
    assert (info.value.code, info.value.detail) == ("STALE", seq.id)
    assert await s.runner.run(call(1, "contact")) == []
    here = sorted(e.id for e in enrolled if ids.shard_of(e.contact_id, s.shards) == shard)
    flat = await s.runner.run(call(1, "account"))
    assert sorted(flat[::2]) == here and set(flat[1::2]) == {"paused"}
    assert await s.runner.run(call(1, "account")) == []  # paused already
