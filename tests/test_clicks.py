"""Click tracking end to end: links rewritten at send time, a 302 to the original link,
the click recorded as an event and counted once per contact and step, scanners not
counted, forged tokens refused."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from seqd import clicks
from seqd.appkeys import METRICS
from seqd.config import Config, HttpConfig, StatsConfig
from seqd.engine.dispatcher import Dispatcher
from seqd.lifecycle import unsubscribe
from seqd.store.db import Store
from tests.conftest import QUIET_OFF
from tests.dispatchutil import Clock, OneSender, Recorder, events
from tests.lifecycleutil import PUBLIC, Client, client, contact

OFFER = "https://example.com/offer?x=1"
SMS_BASE = "https://sq.example/c"
BODY = "Hi {{first_name}}, see " + OFFER + ". Or https://example.org/{{first_name}}!"
SEQUENCE: dict[str, Any] = {
    "name": "Tracked",
    "status": "active",
    "track": {"clicks": True},
    "steps": [
        {"kind": "sms", "body": BODY},
        {
            "kind": "email",
            "subject": "Hello",
            "body": "Plain " + OFFER,
            "wait_minutes": 60,
            "track": {"clicks": False},
        },
    ],
}
BROWSER = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15"


def config(scanner_seconds: float = 5.0) -> Config:
    stats = StatsConfig(sms_click_base_url=SMS_BASE, scanner_seconds=scanner_seconds)
    return Config(http=HttpConfig(public_url=PUBLIC), stats=stats, compliance=QUIET_OFF)


async def send(store: Store, cfg: Config, clock: Clock) -> Recorder:
    """One dispatcher round at `clock`, links tracked as `seqd serve` tracks them."""
    sender = Recorder()
    secret = await unsubscribe.signing_secret(cfg, store)
    dispatcher = Dispatcher(
        store,
        cfg.dispatch,
        OneSender(sender),
        clock=clock,
        track_links=clicks.message_links(cfg, secret),
    )
    await dispatcher.run_once(clock())
    return sender


async def follow(api: Client, url: str, *, method: str = "GET", agent: str = BROWSER) -> Any:
    path = url.removeprefix(SMS_BASE)
    resp = await api.http.request(
        method, "/v1/c" + path, headers={"User-Agent": agent}, allow_redirects=False
    )
    return resp


async def test_a_tracked_sms_link_redirects_and_counts_once(store: Store) -> None:
    cfg = config(scanner_seconds=0)  # (timing: the next test)
    async with client(store, cfg) as api:
        status, body = await api.call("POST", "/sequences", SEQUENCE)
        assert status == 201, body
        seq = body["sequence"]
        cid = await contact(store)
        status, _ = await api.call(
            "POST", f"/sequences/{seq['id']}/enrollments", {"contact_id": cid}
        )
        assert status == 201
        (message,) = (await send(store, cfg, Clock())).messages
        tracked = re.findall(re.escape(SMS_BASE) + r"/[\w.-]+[\w-]", message.body)
        assert len(tracked) == 2 and OFFER not in message.body
        assert message.body.startswith("Hi Ada, see " + SMS_BASE + "/")

        resp = await follow(api, tracked[0])
        assert resp.status == 302 and resp.headers["Location"] == OFFER
        resp = await follow(api, tracked[1])  # a link rendered from the contact
        assert resp.headers["Location"] == "https://example.org/Ada"
        resp = await follow(api, tracked[0], method="HEAD")
        assert resp.status == 302  # a scanner is redirected too
        resp = await follow(api, tracked[0], agent="Mozilla/5.0 (compatible; Barracuda)")
        assert resp.status == 302
        forged = tracked[0][:-3] + ("AAA" if not tracked[0].endswith("AAA") else "BBB")
        assert (await follow(api, forged)).status == 404
        assert (await follow(api, SMS_BASE + "/nothing.here")).status == 404

        _, stats = await api.call("GET", f"/sequences/{seq['id']}/stats")
        scrape = api.http.app[METRICS].render().decode()
    # Prometheus: bounded labels, no sequence.
    assert 'seqd_clicks_total{suspected_bot="true"} 2.0' in scrape
    assert 'seqd_clicks_total{suspected_bot="false"} 2.0' in scrape
    counts = {row["step"]: row["counts"] for row in stats["rows"]}
    assert counts[0]["clicked"] == 1 and counts[0]["sent"] == 1
    assert stats["rows"][0]["rates"]["click_rate"] == 1.0
    clicked = [e for e in await events(store) if e["type"] == "message.clicked"]
    assert [(e["link"], e["suspected_bot"], e["first"]) for e in clicked] == [
        (0, False, True),
        (1, False, False),
        (0, True, False),
        (0, True, False),
    ]
    assert clicked[0]["url"] == OFFER and clicked[0]["contact_id"] == cid
    assert clicked[0]["sequence_id"] == seq["id"] and clicked[0]["step"] == 0


async def test_a_click_right_after_the_send_is_a_scanner(store: Store) -> None:
    cfg = config()
    async with client(store, cfg) as api:
        _, body = await api.call("POST", "/sequences", SEQUENCE)
        seq = body["sequence"]
        cid = await contact(store)
        await api.call("POST", f"/sequences/{seq['id']}/enrollments", {"contact_id": cid})
        (message,) = (await send(store, cfg, Clock())).messages
        link = re.findall(re.escape(SMS_BASE) + r"/[\w.-]+[\w-]", message.body)[0]
        assert (await follow(api, link)).status == 302
        _, stats = await api.call("GET", f"/sequences/{seq['id']}/stats")
    assert stats["totals"]["counts"]["clicked"] == 0
    (clicked,) = [e for e in await events(store) if e["type"] == "message.clicked"]
    assert clicked["suspected_bot"] is True


async def test_untracked_steps_keep_their_links_and_segments_count_tracked_links(
    store: Store,
) -> None:
    cfg = config()
    async with client(store, cfg) as api:
        text = "x" * 100 + " " + OFFER
        plain = {"name": "Plain", "steps": [{"kind": "sms", "body": text}]}
        _, body = await api.call("POST", "/sequences", plain)
        assert body["sequence"]["steps"][0]["segments"] == 1
        tracked = {**plain, "track": {"clicks": True}}
        _, body = await api.call("POST", "/sequences", tracked)
        # The link as sent (a tracked link of about 85 characters) makes it two segments.
        assert body["sequence"]["steps"][0]["segments"] == 2
        assert body["sequence"]["track"] == {"clicks": True}
        # Tracking turned off later: the step is counted with its own link again.
        sid = body["sequence"]["id"]
        status, body = await api.call("PATCH", f"/sequences/{sid}", {"track": None})
        assert status == 200 and body["sequence"]["steps"][0]["segments"] == 1
        status, problem = await api.call(
            "POST", "/sequences", {**plain, "track": {"clicks": "yes"}}
        )
        assert status == 422 and problem["errors"][0]["path"] == "track.clicks"


def test_tokens_carry_their_claims_and_refuse_tampering() -> None:
    secret = "s" * 32
    token = clicks.sign(secret, "enr_000000000396J3VJC4FA7C", 3, 1, 1_765_000_000)
    claims = clicks.verify(secret, token)
    assert claims == clicks.ClickClaims("enr_000000000396J3VJC4FA7C", 3, 1, 1_765_000_000)
    assert clicks.verify("t" * 32, token) is None
    payload, _, mac = token.rpartition(".")
    assert clicks.verify(secret, payload.replace(".3.", ".4.") + "." + mac) is None
    # An unsubscribe token (another domain of the same secret) is no click token.
    assert clicks.verify(secret, unsubscribe.sign(secret, "acme", "con_1", "a@b.c")) is None
    assert msgspec.json.encode(claims)
