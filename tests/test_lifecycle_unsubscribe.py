"""One-click unsubscribe (RFC 8058): signed tokens, the headers, the page and the POST
exactly as mailbox providers send it."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from aiohttp import FormData

from seqd import tokens
from seqd.config import Config, LifecycleConfig
from seqd.lifecycle import unsubscribe
from seqd.store.db import Store
from tests.dispatchutil import Clock, email, enroll, events, raw, sequence, sms
from tests.lifecycleutil import EMAIL, PUBLIC, Client, client, config, contact, send_due

SECRET = "s" * 32


def test_token_round_trip() -> None:
    token = unsubscribe.sign(SECRET, "acme", "con_1", "ada@example.com")
    claims = unsubscribe.verify(SECRET, token)
    assert claims == unsubscribe.Claims("acme", "con_1", "ada@example.com")
    assert token.isascii() and "/" not in token and "+" not in token


@pytest.mark.parametrize(
    "forge",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # another MAC
        lambda t: unsubscribe.sign("another-secret-0123456", "acme", "con_1", "ada@example.com"),
        # Someone else's address under this token's MAC.
        lambda t: (
            unsubscribe.sign(SECRET, "acme", "con_1", "bob@example.com").split(".")[0]
            + "."
            + t.split(".")[1]
        ),
        lambda t: t.split(".")[0],
        lambda t: "",
        lambda t: ".",
        lambda t: "é.é",
        lambda t: "x" * 5000,
        lambda t: "bm90IGpzb24." + t.split(".")[1],
    ],
)
def test_forged_tokens_do_not_verify(forge: object) -> None:
    token = unsubscribe.sign(SECRET, "acme", "con_1", "ada@example.com")
    assert unsubscribe.verify(SECRET, forge(token)) is None  # type: ignore[operator]


def test_a_correctly_signed_payload_that_is_not_claims_does_not_verify() -> None:
    payload = tokens.b64(b'{"not": "a list"}')
    token = f"{payload}.{tokens.mac(SECRET, b'unsubscribe.', payload)}"
    assert unsubscribe.verify(SECRET, token) is None


def test_headers() -> None:
    cfg = config(unsubscribe_secret=SECRET)
    headers = unsubscribe.unsubscribe_headers(cfg, SECRET, "acme", "con_1", "ada@example.com")
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https, mailto = headers["List-Unsubscribe"].split(", ")
    token = unsubscribe.sign(SECRET, "acme", "con_1", "ada@example.com")
    assert https == f"<{PUBLIC}/v1/unsubscribe/{token}>"
    assert mailto.startswith("<mailto:hello@acme.example.com?subject=") and mailto.endswith(">")
    assert unquote(mailto[1:-1].split("subject=")[1]) == f"unsubscribe {token}"
    cfg.lifecycle.unsubscribe_mailto = "unsub@bounces.example.com"
    headers = unsubscribe.unsubscribe_headers(cfg, SECRET, "acme", "con_1", "ada@example.com")
    assert "<mailto:unsub@bounces.example.com?subject=" in headers["List-Unsubscribe"]


async def test_secret_is_generated_once_per_store(store: Store) -> None:
    a, b = Config(), Config()
    first = await unsubscribe.signing_secret(a, store)
    assert len(first) >= 32
    assert await unsubscribe.signing_secret(b, store) == first  # another process, same store
    assert a.lifecycle.unsubscribe_secret is None  # read from the store, not written to config
    own = Config(lifecycle=LifecycleConfig(unsubscribe_secret=SECRET))
    assert await unsubscribe.signing_secret(own, store) == SECRET


async def setup(store: Store) -> tuple[str, str, str, str]:
    """A contact in an email-only and a mixed sequence, first emails sent; its token."""
    cid = await contact(store)
    only_email = await sequence(store, email(), email(wait=10))
    mixed = await sequence(store, email(), email(wait=10), sms(wait=10))
    (a,) = await enroll(store, only_email, [cid])
    (b,) = await enroll(store, mixed, [cid])
    await send_due(store, Clock())
    return cid, a.id, b.id, unsubscribe.sign(SECRET, "acme", cid, EMAIL)


async def one_click(api: Client, token: str, body: bytes = b"List-Unsubscribe=One-Click") -> int:
    """As Gmail and Yahoo send it: a POST, form-encoded, no cookies, no auth."""
    resp = await api.http.post(
        f"/v1/unsubscribe/{token}",
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    await resp.read()
    return resp.status


async def test_one_click_post(store: Store) -> None:
    cid, only_email, mixed, token = await setup(store)
    async with client(store, config(unsubscribe_secret=SECRET)) as api:
        assert await one_click(api, token) == 200
        assert await one_click(api, token) == 200  # again: still fine, nothing new cancelled
        _, listed = await api.call("GET", "/suppressions?channel=email")
    assert [(s["value"], s["reason"]) for s in listed["data"]] == [(EMAIL, "opted_out")]
    a, b = await raw(store, only_email), await raw(store, mixed)
    assert (a["st"], a["cr"]) == ("cancelled", "opted_out")
    assert b["st"] == "active"  # an SMS step is still to come
    opted = [e for e in await events(store) if e["type"] == "contact.opted_out"]
    assert opted[0]["contact_id"] == cid and opted[0]["channel"] == "email"
    assert opted[0]["source"] == "one_click" and opted[0]["cancelled"] == [only_email]


async def test_one_click_as_multipart_form(store: Store) -> None:
    _, only_email, _, token = await setup(store)
    async with client(store, config(unsubscribe_secret=SECRET)) as api:
        form = FormData()
        form.add_field("List-Unsubscribe", "One-Click")
        resp = await api.http.post(f"/v1/unsubscribe/{token}", data=form())
        assert resp.status == 200
    assert (await raw(store, only_email))["st"] == "cancelled"


async def test_get_shows_a_confirm_button_and_changes_nothing(store: Store) -> None:
    _, only_email, _, token = await setup(store)
    before = await events(store)
    async with client(store, config(unsubscribe_secret=SECRET)) as api:
        resp = await api.http.get(f"/v1/unsubscribe/{token}")
        page = await resp.text()
        assert resp.status == 200 and resp.content_type == "text/html"
        assert '<form method="post">' in page
        assert 'name="List-Unsubscribe" value="One-Click"' in page
        assert EMAIL in page
        resp = await api.http.get(f"/v1/unsubscribe/{token}x")
        assert resp.status == 404 and resp.content_type == "text/html"
        assert (await api.call("GET", "/suppressions"))[1]["total"] == 0
    assert (await raw(store, only_email))["st"] == "active"
    assert await events(store) == before


@pytest.mark.parametrize(
    ("change", "expected"),
    [("token", 404), ("body", 400), ("empty", 400), ("other_secret", 404)],
)
async def test_forged_or_wrong_posts_change_nothing(
    store: Store, change: str, expected: int
) -> None:
    cid, only_email, _, token = await setup(store)
    before = await events(store)
    async with client(store, config(unsubscribe_secret=SECRET)) as api:
        if change == "token":
            forged = unsubscribe.sign(SECRET, "acme", cid, "other@example.com")
            forged = forged.split(".")[0] + "." + token.split(".")[1]
            code = await one_click(api, forged)
        elif change == "other_secret":
            code = await one_click(api, unsubscribe.sign("x" * 20, "acme", cid, EMAIL))
        elif change == "body":
            code = await one_click(api, token, b"List-Unsubscribe=Yes")
        else:
            code = await one_click(api, token, b"")
        assert (await api.call("GET", "/suppressions"))[1]["total"] == 0
    assert code == expected
    assert (await raw(store, only_email))["st"] == "active"
    assert await events(store) == before


async def test_generated_secret_serves_the_endpoint(store: Store) -> None:
    """No secret configured: the one the store holds signs and verifies."""
    cfg = config()
    async with client(store, cfg) as api:
        secret = await unsubscribe.signing_secret(Config(), store)
        cid = await contact(store)
        token = unsubscribe.sign(secret, "acme", cid, EMAIL)
        assert await one_click(api, token) == 200
    assert await store.suppressions.get("acme", "email", EMAIL) is not None


async def test_every_email_the_dispatcher_sends_carries_the_headers(store: Store) -> None:
    """Dispatcher → MIME on the wire → the header's URL, POSTed as a mailbox provider would."""
    import email as stdlib_email
    import email.policy

    from seqd.channels import mime
    from tests.dispatchutil import Recorder, dispatcher

    cfg = config()  # no secret configured: generated and kept in the store
    secret = await unsubscribe.signing_secret(cfg, store)
    _, only_email, _, _ = await setup_without_sending(store)
    sender = Recorder()
    d = dispatcher(store, sender, Clock())
    d.email_headers = unsubscribe.message_headers(cfg, secret)
    await d.run_once(Clock()())
    mails = [m for m in sender.messages if m.kind == "email"]
    texts = [m for m in sender.messages if m.kind == "sms"]
    assert len(mails) == 2 and len(texts) == 1
    assert all("List-Unsubscribe" not in m.headers for m in texts)
    wire = mime.to_bytes(mime.build(mails[0], "hello@acme.example.com", None))
    parsed = stdlib_email.message_from_bytes(wire, policy=email.policy.default)
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https = str(parsed["List-Unsubscribe"]).split(",")[0].strip()
    assert https.startswith(f"<{PUBLIC}/v1/unsubscribe/") and https.endswith(">")
    path = https[1:-1].removeprefix(PUBLIC)
    async with client(store, cfg) as api:
        resp = await api.http.post(
            path,
            data=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert resp.status == 200
    assert (await raw(store, only_email))["cr"] == "opted_out"


async def setup_without_sending(store: Store) -> tuple[str, str, str, str]:
    cid = await contact(store)
    only_email = await sequence(store, email(), email(wait=10))
    mixed = await sequence(store, email(), sms(wait=10))
    texts = await sequence(store, sms())
    ids = [(await enroll(store, s, [cid]))[0].id for s in (only_email, mixed, texts)]
    return cid, ids[0], ids[1], ids[2]
