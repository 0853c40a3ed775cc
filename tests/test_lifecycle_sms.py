"""Inbound SMS over HTTP (Twilio's wire format): replies pause, keywords opt out and in,
forged requests change nothing, tenants stay apart."""

from __future__ import annotations

import pytest

from seqd import ids
from seqd.config import ChannelsConfig, Config, TenantConfig, TwilioConfig
from seqd.lifecycle import sms_inbound
from seqd.store.db import Store
from seqd.store.dispatch import Dispatch
from tests.dispatchutil import (
    TENANT,
    Clock,
    claim,
    email,
    enroll,
    events,
    raw,
    sequence,
    settled,
    sms,
)
from tests.lifecycleutil import PHONE, SENDERS, client, contact, send_due
from tests.test_lifecycle_keywords import OPT_OUT


async def status(store: Store, eid: str) -> tuple[str, str | None]:
    h = await raw(store, eid)
    return h["st"], h.get("pr") or h.get("cr")


async def types(store: Store) -> list[str]:
    return [e["type"] for e in await events(store)]


async def test_reply_pauses_only_enrollments_that_sent_an_sms(store: Store) -> None:
    texted = await sequence(store, sms(), sms(wait=10))
    mailed = await sequence(store, email(), sms(wait=10))
    waiting = await sequence(store, sms(wait=60))
    cid = await contact(store)
    a, b, c = [(await enroll(store, s, [cid]))[0] for s in (texted, mailed, waiting)]
    sender = await send_due(store, Clock())
    assert sorted(m.kind for m in sender.messages) == ["email", "sms"]
    async with client(store) as api:
        code, body = await api.sms("acme", PHONE, "Sounds good, call me")
    assert code == 200
    assert "<Response/>" in body
    assert await status(store, a.id) == ("paused", "reply_received")
    assert await status(store, b.id) == ("active", None)  # only an email went out
    assert await status(store, c.id) == ("active", None)  # nothing went out yet
    paused = [e for e in await events(store) if e["type"] == "sequence.enrollment.paused"]
    assert [(e["id"], e["paused_reason"]) for e in paused] == [(a.id, "reply_received")]
    # Listing indexes and counters follow the move.
    stats = await store.sequences.stats([texted.id])
    assert (stats[texted.id].active, stats[texted.id].paused) == (0, 1)


async def test_on_reply_complete(store: Store) -> None:
    from seqd import models

    body = models.SequenceCreate(
        name="s", status="active", steps=[sms(), sms(wait=10)], on_reply="complete"
    )
    seq = await store.sequences.create(TENANT, body)
    cid = await contact(store)
    (e,) = await enroll(store, seq, [cid])
    await send_due(store, Clock())
    async with client(store) as api:
        assert (await api.sms("acme", PHONE, "yes interested"))[0] == 200
    h = await raw(store, e.id)
    assert h["st"] == "completed" and "ca" in h
    assert "sequence.enrollment.completed" in await types(store)


async def test_reply_while_the_step_is_being_sent(store: Store) -> None:
    """Claimed (the send is in flight) but not advanced: the reply pauses the enrollment, the
    fencing token moves, and the in-flight worker's advance cannot make it active again."""
    seq = await sequence(store, sms(), sms(wait=10), sms(wait=10))
    cid = await contact(store)
    (e,) = await enroll(store, seq, [cid])
    clock = Clock()
    await send_due(store, clock)  # step 0 sent
    clock.advance(10 * 60_000)
    shard = ids.shard_of(e.id, store.shards)
    dispatch = Dispatch(store)
    batch = await claim(store, shard, clock(), lease_ms=60_000, limit=10)
    (item,) = batch.items
    token = item.enrollment.token
    assert item.enrollment.index == "1"
    async with client(store) as api:
        assert (await api.sms("acme", PHONE, "wait, who is this?"))[0] == 200
    h = await raw(store, e.id)
    assert h["st"] == "paused" and h["pr"] == "reply_received"
    # Out of its queue: the claim's lease score, its token, is gone.
    assert await store.client.zscore(store.keys.queue(shard, e.sequence_id), e.id) is None
    # The send finished after all: the step is recorded as sent, the pause stands.
    done = settled(
        id=e.id, token=token, step=1, kind="sms", at=clock(), outcome="sent",
        provider_id="SM2", wait=600_000,
    )  # fmt: skip
    result = await dispatch.advance(shard, [done], now=clock(), max_attempts=3)
    assert (result.applied, result.late) == (0, 1)
    h = await raw(store, e.id)
    assert h["st"] == "paused" and h["i"] == "2" and h["p1"] == "SM2"
    assert await store.client.zscore(store.keys.queue(shard, e.sequence_id), e.id) is None
    # A retry from the same stale worker is ignored outright.
    retry = settled(
        id=e.id, token=token, step=1, kind="sms", at=clock(), outcome="retry", delay=1000
    )
    result = await dispatch.advance(shard, [retry], now=clock(), max_attempts=3)
    assert result.stale == [e.id]
    assert (await raw(store, e.id))["st"] == "paused"


async def test_reply_while_the_first_sms_is_being_sent(store: Store) -> None:
    """No SMS recorded yet, but the first one is in flight: it may already be on the phone,
    so the reply counts."""
    seq = await sequence(store, sms(), sms(wait=10))
    cid = await contact(store)
    (e,) = await enroll(store, seq, [cid])
    shard = ids.shard_of(e.id, store.shards)
    await claim(store, shard, Clock()(), lease_ms=60_000, limit=10)
    async with client(store) as api:
        assert (await api.sms("acme", PHONE, "hello?"))[0] == 200
    assert await status(store, e.id) == ("paused", "reply_received")


async def test_reply_from_an_unknown_number_changes_nothing(store: Store) -> None:
    seq = await sequence(store, sms(), sms(wait=10))
    cid = await contact(store)
    (e,) = await enroll(store, seq, [cid])
    await send_due(store, Clock())
    before = await types(store)
    async with client(store) as api:
        code, body = await api.sms("acme", "+14155559999", "hi")
    assert code == 200 and "<Response/>" in body
    assert await status(store, e.id) == ("active", None)
    assert await types(store) == before


@pytest.mark.parametrize("word", OPT_OUT)
async def test_opt_out_keyword(store: Store, word: str) -> None:
    only_sms = await sequence(store, sms(), sms(wait=10))
    mixed = await sequence(store, sms(), sms(wait=10), email(wait=10))
    only_email = await sequence(store, email(), email(wait=10))
    cid = await contact(store)
    a, b, c = [(await enroll(store, s, [cid]))[0] for s in (only_sms, mixed, only_email)]
    clock = Clock()
    await send_due(store, clock)
    async with client(store) as api:
        assert (await api.sms("acme", PHONE, f" {word.lower()} "))[0] == 200
        code, listed = await api.call("GET", "/suppressions?channel=sms")
    assert await status(store, a.id) == ("cancelled", "opted_out")
    assert await status(store, b.id) == ("active", None)  # an email step is still to come
    assert await status(store, c.id) == ("active", None)
    assert code == 200
    assert [(s["value"], s["reason"]) for s in listed["data"]] == [(PHONE, "opted_out")]
    (opted,) = [e for e in await events(store) if e["type"] == "contact.opted_out"]
    assert opted["contact_id"] == cid and opted["value"] == PHONE and opted["channel"] == "sms"
    assert opted["cancelled"] == [a.id] and opted["source"] == "sms_keyword"
    # The event went to the contact's shard outbox, where webhooks read it.
    shard = ids.shard_of(cid, store.shards)
    assert "contact.opted_out" in [e["type"] for e in await events(store, shard)]
    # The mixed enrollment skips its SMS step at send time and mails on.
    clock.advance(10 * 60_000)
    sender = await send_due(store, clock)
    assert [m.kind for m in sender.messages if m.enrollment_id == b.id] == []
    assert (await raw(store, b.id))["i"] == "2"  # step 1 (sms) skipped
    clock.advance(10 * 60_000)
    sender = await send_due(store, clock)
    assert [m.kind for m in sender.messages if m.enrollment_id == b.id] == ["email"]


async def test_opt_in_lifts_the_opt_out_for_future_enrollments(store: Store) -> None:
    seq = await sequence(store, sms(), sms(wait=10))
    cid = await contact(store)
    (e,) = await enroll(store, seq, [cid])
    await send_due(store, Clock())
    async with client(store) as api:
        await api.sms("acme", PHONE, "STOP")
        code, _ = await api.call("POST", f"/sequences/{seq.id}/enrollments", {"contact_id": cid})
        assert code == 409  # suppressed on every channel the sequence uses
        await api.sms("acme", PHONE, "start")
        assert (await api.call("GET", "/suppressions"))[1]["total"] == 0
        code, body = await api.call("POST", f"/sequences/{seq.id}/enrollments", {"contact_id": cid})
        assert code == 201, body
    assert await status(store, e.id) == ("cancelled", "opted_out")  # nothing comes back
    (opted_in,) = [x for x in await events(store) if x["type"] == "contact.opted_in"]
    assert opted_in["contact_id"] == cid and opted_in["value"] == PHONE


async def test_opt_in_does_not_lift_an_operators_suppression(store: Store) -> None:
    async with client(store) as api:
        code, _ = await api.call("POST", "/suppressions", {"channel": "sms", "value": PHONE})
        assert code == 201
        await api.sms("acme", PHONE, "UNSTOP")
        (only,) = (await api.call("GET", "/suppressions"))[1]["data"]
    assert only["reason"] == "manual"
    assert "contact.opted_in" not in await types(store)


async def test_help_changes_nothing(store: Store) -> None:
    seq = await sequence(store, sms(), sms(wait=10))
    cid = await contact(store)
    (e,) = await enroll(store, seq, [cid])
    await send_due(store, Clock())
    before = await types(store)
    async with client(store) as api:
        code, body = await api.sms("acme", PHONE, "HELP")
        assert (await api.call("GET", "/suppressions"))[1]["total"] == 0
    assert code == 200 and "<Response/>" in body
    assert await status(store, e.id) == ("active", None)
    assert await types(store) == before


@pytest.mark.parametrize("forgery", ["wrong_token", "missing", "other_url", "tampered"])
async def test_forged_requests_change_nothing(store: Store, forgery: str) -> None:
    seq = await sequence(store, sms(), sms(wait=10))
    cid = await contact(store)
    (e,) = await enroll(store, seq, [cid])
    await send_due(store, Clock())
    before = await types(store)
    token, number = SENDERS["acme"]
    params = {"From": PHONE, "To": number, "Body": "STOP"}
    async with client(store) as api:
        if forgery == "wrong_token":
            code, body = await api.twilio("/inbound/twilio/sms", params, token="guess")
        elif forgery == "missing":
            code, body = await api.twilio("/inbound/twilio/sms", params)
        elif forgery == "other_url":
            from seqd.lifecycle import twilio_signature

            sig = twilio_signature.compute(
                token, "https://evil.example.com/v1/inbound/twilio/sms", params.items()
            )
            code, body = await api.twilio("/inbound/twilio/sms", params, signature=sig)
        else:
            from seqd.lifecycle import twilio_signature

            url = "https://seqd.example.com/v1/inbound/twilio/sms"
            sig = twilio_signature.compute(token, url, {**params, "Body": "hi"}.items())
            code, body = await api.twilio("/inbound/twilio/sms", params, signature=sig)
        assert (await api.call("GET", "/suppressions"))[1]["total"] == 0
    assert code == 403, body
    assert await status(store, e.id) == ("active", None)
    assert await types(store) == before


async def test_tenants_are_isolated(store: Store) -> None:
    """The same person is a contact of two tenants; a STOP to one tenant's number stops
    that tenant only, and one tenant's token cannot speak for the other's number."""
    seq = await sequence(store, sms(), sms(wait=10))
    cid = await contact(store)
    (e,) = await enroll(store, seq, [cid])
    beta = await store.contacts.create("beta", {"phone": PHONE})
    from seqd import models

    beta_seq = await store.sequences.create(
        "beta", models.SequenceCreate(name="b", status="active", steps=[sms(), sms(wait=10)])
    )
    from seqd.store.enrollments import EnrollItem

    [res] = await store.enrollments.enroll("beta", beta_seq, [EnrollItem(beta.id, {})])
    assert res.enrollment is not None
    await send_due(store, Clock())
    async with client(store) as api:
        # Beta's token on acme's number: refused.
        _, acme_number = SENDERS["acme"]
        params = {"From": PHONE, "To": acme_number, "Body": "STOP"}
        assert (await api.twilio("/inbound/twilio/sms", params, token="beta-token"))[0] == 403
        assert (await api.sms("acme", PHONE, "STOP"))[0] == 200
        acme_list = (await api.call("GET", "/suppressions", tenant="acme"))[1]
        beta_list = (await api.call("GET", "/suppressions", tenant="beta"))[1]
    assert acme_list["total"] == 1 and beta_list["total"] == 0
    assert await status(store, e.id) == ("cancelled", "opted_out")
    assert await status(store, res.enrollment.id) == ("active", None)


async def test_bad_from_after_a_good_signature_is_422(store: Store) -> None:
    _, number = SENDERS["acme"]
    async with client(store) as api:
        code, body = await api.twilio(
            "/inbound/twilio/sms",
            {"From": "not a number", "To": number, "Body": "hi"},
            token="acme-token",
        )
    assert code == 422
    assert '"From"' in body


def test_a_shared_number_belongs_to_every_tenant_using_it() -> None:
    shared = ChannelsConfig(twilio=TwilioConfig(auth_token="t", from_number="+15005550009"))
    own = ChannelsConfig(
        twilio=TwilioConfig(auth_token="u", from_number="+15005550008", messaging_service_sid="MG1")
    )
    cfg = Config(
        channels=shared,
        tenants={"a": TenantConfig(channels=shared), "b": TenantConfig(channels=own)},
    )
    assert sms_inbound.tenants_for_sender(cfg, "+1 500 555 0009", "") == ["a", "default"]
    assert sms_inbound.tenants_for_sender(cfg, "+15005550000", "MG1") == ["b"]
    assert sms_inbound.tenants_for_sender(cfg, "+15005550000", "") == []


async def test_a_reply_goes_to_each_verified_tenant_of_a_shared_number(store: Store) -> None:
    shared = ChannelsConfig(twilio=TwilioConfig(auth_token="t", from_number="+15005550009"))
    cfg = Config(tenants={"acme": TenantConfig(channels=shared)}, channels=shared)
    cfg.http.public_url = "https://seqd.example.com"
    seq = await sequence(store, sms(), sms(wait=10))
    cid = await contact(store)
    await enroll(store, seq, [cid])
    await send_due(store, Clock())
    async with client(store, cfg) as api:
        params = {"From": PHONE, "To": "+15005550009", "Body": "STOP"}
        assert (await api.twilio("/inbound/twilio/sms", params, token="t"))[0] == 200
    assert await store.suppressions.get("acme", "sms", PHONE) is not None
    assert await store.suppressions.get("default", "sms", PHONE) is not None


TOP_LEVEL = ("top-token", "+15005550042")


def keys_only_config() -> Config:
    """No [tenants.<name>] sections: every tenant made with `seqd keys create` (acme, beta
    in `client`) sends from the top-level Twilio number."""
    token, number = TOP_LEVEL
    cfg = Config(
        channels=ChannelsConfig(
            sms="twilio",
            twilio=TwilioConfig(account_sid="AC1", auth_token=token, from_number=number),
        )
    )
    cfg.http.public_url = "https://seqd.example.com"
    return cfg


async def both_tenants_texted(store: Store) -> tuple[str, str]:
    """PHONE is a contact of acme and of beta, each enrolled in an SMS ladder, first SMS sent."""
    from seqd import models
    from seqd.store.enrollments import EnrollItem

    enrolled = []
    for tenant in ("acme", "beta"):
        seq = await store.sequences.create(
            tenant, models.SequenceCreate(name="s", status="active", steps=[sms(), sms(wait=10)])
        )
        cid = await contact(store, tenant)
        [res] = await store.enrollments.enroll(tenant, seq, [EnrollItem(cid, {})])
        assert res.enrollment is not None
        enrolled.append(res.enrollment.id)
    await send_due(store, Clock())
    return enrolled[0], enrolled[1]


async def test_a_stop_to_the_top_level_number_reaches_every_tenant_made_by_keys(
    store: Store,
) -> None:
    """Both tenants texted PHONE from the one top-level number; the STOP cannot tell which
    it answers, so both apply it (an opt-out is never lost to ambiguity)."""
    acme, beta = await both_tenants_texted(store)
    token, number = TOP_LEVEL
    async with client(store, keys_only_config()) as api:
        params = {"From": PHONE, "To": number, "Body": "STOP", "MessageSid": "SMstop1"}
        assert (await api.twilio("/inbound/twilio/sms", params, token=token))[0] == 200
        for tenant in ("acme", "beta"):
            listed = (await api.call("GET", "/suppressions", tenant=tenant))[1]
            assert [(s["value"], s["reason"]) for s in listed["data"]] == [(PHONE, "opted_out")]
    assert await status(store, acme) == ("cancelled", "opted_out")
    assert await status(store, beta) == ("cancelled", "opted_out")


async def test_a_reply_to_a_shared_number_pauses_each_tenant_that_texted_the_phone(
    store: Store,
) -> None:
    """A reply is applied where the phone is a contact: both tenants texted it, both pause;
    a third tenant that never knew the phone records nothing."""
    acme, beta = await both_tenants_texted(store)
    token, number = TOP_LEVEL
    async with client(store, keys_only_config()) as api:
        params = {"From": PHONE, "To": number, "Body": "who is this?", "MessageSid": "SMr1"}
        assert (await api.twilio("/inbound/twilio/sms", params, token=token))[0] == 200
    assert await status(store, acme) == ("paused", "reply_received")
    assert await status(store, beta) == ("paused", "reply_received")


async def test_a_replayed_start_does_not_lift_a_later_stop(store: Store) -> None:
    """A captured, validly signed START replayed after the phone said STOP again: the
    replay is dropped by its MessageSid, the phone stays suppressed and is not texted."""
    token, number = SENDERS["acme"]
    seq = await sequence(store, sms(), sms(wait=10))
    cid = await contact(store)

    def message(body: str, sid: str) -> dict[str, str]:
        return {"From": PHONE, "To": number, "Body": body, "MessageSid": sid, "SmsSid": sid}

    async with client(store) as api:
        start = message("START", "SM" + "b" * 32)
        for params in (message("STOP", "SM" + "a" * 32), start, message("STOP", "SM" + "c" * 32)):
            assert (await api.twilio("/inbound/twilio/sms", params, token=token))[0] == 200
        assert (await api.twilio("/inbound/twilio/sms", start, token=token))[0] == 200
        listed = (await api.call("GET", "/suppressions?channel=sms"))[1]
        assert [(s["value"], s["reason"]) for s in listed["data"]] == [(PHONE, "opted_out")]
        code, _ = await api.call("POST", f"/sequences/{seq.id}/enrollments", {"contact_id": cid})
        assert code == 409
    assert [e["type"] for e in await events(store) if e["type"].startswith("contact.")] == [
        "contact.opted_out",
        "contact.opted_in",
        "contact.opted_out",
    ]


async def test_a_retried_reply_pauses_once_and_is_acknowledged(store: Store) -> None:
    """Twilio retries a webhook it got no answer to: the retry is answered, not applied
    again (the paused enrollment, resumed meanwhile, stays active)."""
    seq = await sequence(store, sms(), sms(wait=10))
    cid = await contact(store)
    (e,) = await enroll(store, seq, [cid])
    await send_due(store, Clock())
    async with client(store) as api:
        sid = "SM" + "d" * 32
        assert (await api.sms("acme", PHONE, "call me", sid=sid))[0] == 200
        assert await status(store, e.id) == ("paused", "reply_received")
        assert (await api.call("POST", f"/enrollments/{e.id}/resume"))[0] == 200
        code, body = await api.sms("acme", PHONE, "call me", sid=sid)
    assert code == 200 and "<Response/>" in body
    assert await status(store, e.id) == ("active", None)


async def test_a_repeated_stop_emits_one_opted_out(store: Store) -> None:
    """STOP from a number already suppressed changes nothing and tells nothing new."""
    seq = await sequence(store, sms(), sms(wait=10))
    cid = await contact(store)
    (e,) = await enroll(store, seq, [cid])
    await send_due(store, Clock())
    async with client(store) as api:
        for _ in range(3):
            assert (await api.sms("acme", PHONE, "STOP"))[0] == 200
    opted = [x for x in await events(store) if x["type"] == "contact.opted_out"]
    assert [x["cancelled"] for x in opted] == [[e.id]]
