"""Twilio status callbacks: recorded on the step, in any order, at most once per final
status; error 21610 opts the phone out; forged callbacks change nothing."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from seqd import ids, models
from seqd.store.db import Store
from tests.dispatchutil import Clock, enroll, events, raw, sequence, sms
from tests.lifecycleutil import PHONE, Client, client, contact, send_due


async def sent_enrollment(store: Store) -> models.Enrollment:
    seq = await sequence(store, sms(), sms(wait=10))
    (e,) = await enroll(store, seq, [await contact(store)])
    await send_due(store, Clock())
    return e


async def callback(
    api: Client, eid: str, step: int | str, status: str, *, token: str = "acme-token", **extra: str
) -> int:
    path = "/inbound/twilio/status?" + urlencode({"e": eid, "s": step})
    params = {"MessageSid": "SM123", "MessageStatus": status, "To": PHONE, **extra}
    code, _ = await api.twilio(path, params, token=token)
    return code


async def message_events(store: Store) -> list[dict[str, object]]:
    return [e for e in await events(store) if str(e["type"]).startswith("message.")]


async def test_out_of_order_and_repeated_callbacks(store: Store) -> None:
    e = await sent_enrollment(store)
    async with client(store) as api:
        for status in ("delivered", "sent", "queued", "delivered", "sending", "undelivered"):
            assert await callback(api, e.id, 0, status) == 204
    assert (await raw(store, e.id))["d0"] == "3:delivered"
    (delivered,) = await message_events(store)
    assert delivered["type"] == "message.delivered"
    assert delivered["enrollment_id"] == e.id and delivered["step"] == 0
    assert delivered["message_sid"] == "SM123" and delivered["status"] == "delivered"


async def test_progress_in_order_then_a_failure(store: Store) -> None:
    e = await sent_enrollment(store)
    async with client(store) as api:
        for status in ("queued", "sending", "sent"):
            assert await callback(api, e.id, 0, status) == 204
        assert (await raw(store, e.id))["d0"] == "2:sent"
        assert await callback(api, e.id, 0, "undelivered", ErrorCode="30003") == 204
        assert await callback(api, e.id, 0, "delivered") == 204  # a final stays
    assert (await raw(store, e.id))["d0"] == "3:undelivered:30003"
    (undelivered,) = await message_events(store)
    assert undelivered["type"] == "message.undelivered"
    assert undelivered["error_code"] == "30003"
    # Delivery reports change no enrollment state.
    assert (await raw(store, e.id))["st"] == "active"


async def test_failed_is_undelivered_too(store: Store) -> None:
    e = await sent_enrollment(store)
    async with client(store) as api:
        assert await callback(api, e.id, 0, "failed", ErrorCode="30006") == 204
    ((kind, status),) = [(x["type"], x["status"]) for x in await message_events(store)]
    assert (kind, status) == ("message.undelivered", "failed")


async def test_error_21610_opts_the_phone_out(store: Store) -> None:
    e = await sent_enrollment(store)
    async with client(store) as api:
        assert await callback(api, e.id, 0, "undelivered", ErrorCode="21610") == 204
        _, listed = await api.call("GET", "/suppressions?channel=sms")
    assert [(s["value"], s["reason"]) for s in listed["data"]] == [(PHONE, "opted_out")]
    h = await raw(store, e.id)
    assert (h["st"], h["cr"]) == ("cancelled", "opted_out")
    (opted,) = [x for x in await events(store) if x["type"] == "contact.opted_out"]
    assert opted["source"] == "twilio_21610" and opted["cancelled"] == [e.id]


@pytest.mark.parametrize("forgery", ["wrong_token", "other_tenant", "missing"])
async def test_forged_callbacks_change_nothing(store: Store, forgery: str) -> None:
    e = await sent_enrollment(store)
    before = await events(store)
    async with client(store) as api:
        if forgery == "missing":
            path = "/inbound/twilio/status?" + urlencode({"e": e.id, "s": 0})
            params = {"MessageSid": "SM1", "MessageStatus": "undelivered", "ErrorCode": "21610"}
            code, _ = await api.twilio(path, params)
        else:
            token = "guess" if forgery == "wrong_token" else "beta-token"
            code = await callback(api, e.id, 0, "undelivered", token=token, ErrorCode="21610")
        assert (await api.call("GET", "/suppressions"))[1]["total"] == 0
    assert code == 403
    h = await raw(store, e.id)
    assert "d0" not in h and h["st"] == "active"
    assert await events(store) == before


async def test_unknown_enrollment_and_bad_input(store: Store) -> None:
    e = await sent_enrollment(store)
    missing = "enr_01M880EKDM4XR9YMTYSEEY"
    async with client(store) as api:
        assert await callback(api, missing, 0, "delivered") == 204
        assert await callback(api, missing, 0, "delivered", token="guess") == 403
        assert await callback(api, "garbage", 0, "delivered") == 204
        assert await callback(api, e.id, "x", "delivered") == 422
        assert await callback(api, e.id, -1, "delivered") == 422
        assert await callback(api, e.id, 0, "read") == 204  # a status seqd does not track
    assert "d0" not in await raw(store, e.id)
    assert await message_events(store) == []


async def test_a_replayed_callback_is_answered_and_not_applied(store: Store) -> None:
    """The same sid and status again (Twilio's retry, or a capture) is dropped before the
    store; the same sid with a later status is applied."""
    e = await sent_enrollment(store)
    async with client(store) as api:
        assert await callback(api, e.id, 0, "sent") == 204
        await store.client.hset(store.keys.enrollment(ids.shard_of(e.id, store.shards), e.id),
                                "d0", "0:queued")  # fmt: skip
        assert await callback(api, e.id, 0, "sent") == 204  # a replay: not recorded again
        assert (await raw(store, e.id))["d0"] == "0:queued"
        assert await callback(api, e.id, 0, "delivered") == 204
    assert (await raw(store, e.id))["d0"] == "3:delivered"
