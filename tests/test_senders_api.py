"""/v1/senders: CRUD, validation (422 naming the field), one owner per address, today's
budget in the view, tenants kept apart."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from seqd.config import ChannelsConfig, Config, SmtpConfig, SmtpServer
from seqd.store.db import Store
from tests.conftest import Api
from tests.webhookutil import api_client

NUMBER = "+14155550100"


def _errors(body: Any) -> dict[str, str]:
    return {e["path"]: e["message"] for e in body["errors"]}


def _config() -> Config:
    smtp = SmtpConfig(profiles={"warm": SmtpServer(host="127.0.0.1", port=2525)})
    return Config(channels=ChannelsConfig(smtp=smtp))


async def _create(api: Api, **over: Any) -> dict[str, Any]:
    body = {"channel": "sms", "address": NUMBER, **over}
    status, answer = await api.call("POST", "/senders", body)
    assert status == 201, answer
    return answer["sender"]  # type: ignore[index,no-any-return]


async def test_create_get_list_patch_delete(store: Store) -> None:
    async with api_client(store, _config()) as api:
        made = await _create(
            api,
            name="main line",
            limits={"per_second": 1, "per_day": 500, "timezone": "America/Chicago"},
            ramp={"start_per_day": 20, "increase_per_day": 10},
        )
        assert made["id"].startswith("snd_") and made["address"] == NUMBER
        assert made["limits"] == {
            "per_second": 1, "per_hour": None, "per_day": 500, "timezone": "America/Chicago"
        }  # fmt: skip
        # Created today: the ramp's first day caps it at 20.
        assert made["daily_cap"] == 20 and made["used_today"] == 0
        assert made["remaining_today"] == 20 and made["next_free_at"] is not None
        assert made["paused"] is False and made["min_gap_seconds"] == 0
        status, one = await api.call("GET", f"/senders/{made['id']}")
        assert status == 200 and one["sender"]["id"] == made["id"]  # type: ignore[index]
        mail = await _create(api, channel="email", address="Ana@Acme.IO", smtp_profile="warm")
        assert mail["address"] == "Ana@acme.io" and mail["smtp_profile"] == "warm"
        assert mail["daily_cap"] is None and mail["remaining_today"] is None
        status, listing = await api.call("GET", "/senders?limit=1")
        assert status == 200 and listing["total"] == 2  # type: ignore[index]
        assert [s["id"] for s in listing["data"]] == [min(made["id"], mail["id"])]  # type: ignore[index]
        status, patched = await api.call(
            "PATCH", f"/senders/{made['id']}", {"paused": True, "ramp": None, "name": "x"}
        )
        assert status == 200, patched
        view = patched["sender"]  # type: ignore[index]
        assert view["paused"] is True and view["ramp"] is None and view["name"] == "x"
        # Paused: no moment it is free can be named; the cap is per_day again.
        assert view["next_free_at"] is None and view["daily_cap"] == 500
        assert view["address"] == NUMBER and view["limits"] == made["limits"]
        status, _ = await api.call("DELETE", f"/senders/{made['id']}")
        assert status == 204
        status, _ = await api.call("GET", f"/senders/{made['id']}")
        assert status == 404
        # Its address is free again.
        again = await _create(api)
        assert again["id"] != made["id"]


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"channel": "fax", "address": NUMBER}, "channel"),
        ({"channel": "sms", "address": "not a number"}, "address"),
        ({"channel": "email", "address": "nobody"}, "address"),
        ({"channel": "sms"}, "address"),
        ({"channel": "sms", "address": NUMBER, "limits": {"timezone": "Mars/Base"}},
         "limits.timezone"),
        ({"channel": "sms", "address": NUMBER, "limits": {"per_second": 0}}, "limits.per_second"),
        ({"channel": "sms", "address": NUMBER, "limits": {"per_day": -1}}, "limits.per_day"),
        ({"channel": "sms", "address": NUMBER, "limits": {"per_week": 1}}, "limits.per_week"),
        ({"channel": "sms", "address": NUMBER, "ramp": {"increase_per_day": 1}},
         "ramp.start_per_day"),
        ({"channel": "sms", "address": NUMBER, "min_gap_seconds": 100_000}, "min_gap_seconds"),
        ({"channel": "sms", "address": NUMBER, "smtp_profile": "warm"}, "smtp_profile"),
        ({"channel": "email", "address": "a@b.io", "smtp_profile": "cold"}, "smtp_profile"),
        ({"channel": "email", "address": "a@b.io", "messaging_service_sid": "MG" + "0" * 32},
         "messaging_service_sid"),
        ({"channel": "sms", "address": NUMBER, "messaging_service_sid": "MG1"},
         "messaging_service_sid"),
        ({"channel": "email", "address": "a@b.io", "name": "a\r\nBcc: x@y.z"}, "name"),
    ],
)  # fmt: skip
async def test_bad_input_is_a_422_naming_the_field(
    store: Store, body: dict[str, Any], path: str
) -> None:
    async with api_client(store, _config()) as api:
        status, answer = await api.call("POST", "/senders", body)
        assert status == 422, answer
        assert path in _errors(answer), answer


async def test_patch_validates_and_keeps_the_address(store: Store) -> None:
    async with api_client(store, _config()) as api:
        made = await _create(api)
        for body, path in [
            ({"limits": {"timezone": "Nowhere"}}, "limits.timezone"),
            ({"address": "+14155550199"}, "address"),
            ({"smtp_profile": "warm"}, "smtp_profile"),
            ({"paused": "yes"}, "paused"),
        ]:
            status, answer = await api.call("PATCH", f"/senders/{made['id']}", body)
            assert status == 422 and path in _errors(answer), (body, answer)
        status, _ = await api.call("PATCH", "/senders/snd_nope", {"paused": True})
        assert status == 404


async def test_an_address_has_one_owner_across_tenants(store: Store) -> None:
    async with api_client(store, _config()) as api:
        made = await _create(api)
        status, answer = await api.call("POST", "/senders", {"channel": "sms", "address": NUMBER})
        assert status == 409, answer
        _, other = await store.tenants.create_key("globex")
        status, answer = await api.call(
            "POST", "/senders", {"channel": "sms", "address": NUMBER}, key=other
        )
        assert status == 409, answer
        # The other tenant sees none of acme's senders.
        status, _ = await api.call("GET", f"/senders/{made['id']}", key=other)
        assert status == 404
        status, listing = await api.call("GET", "/senders", key=other)
        assert listing == {"data": [], "next_page_token": None, "total": 0}
        found = await store.senders.owner("sms", NUMBER)
        assert found is not None and found[0] == "acme" and found[1].id == made["id"]


async def test_a_stale_index_entry_does_not_block_the_address(store: Store) -> None:
    async with api_client(store, _config()) as api:
        # A crash between the index claim and the record write leaves an entry that names
        # no sender.
        await store.client.hset(
            store.keys.sender_addresses(), f"sms:{NUMBER}", "acme snd_00000000000000000000000000"
        )
        assert await store.senders.owner("sms", NUMBER) is None
        made = await _create(api)
        found = await store.senders.owner("sms", NUMBER)
        assert found is not None and found[1].id == made["id"]


async def test_the_tenant_limit(store: Store) -> None:
    config = msgspec.structs.replace(_config(), senders=msgspec.convert(
        {"max_per_tenant": 1}, type(Config().senders)))  # fmt: skip
    async with api_client(store, config) as api:
        await _create(api)
        status, answer = await api.call(
            "POST", "/senders", {"channel": "sms", "address": "+14155550101"}
        )
        assert status == 409, answer
        # The refused sender's address is not kept.
        assert await store.client.hget(store.keys.sender_addresses(), "sms:+14155550101") is None


SEQ = {"name": "s", "steps": [{"kind": "sms", "body": "hi"}]}


async def test_a_sequence_names_its_pools_and_rotation(store: Store) -> None:
    async with api_client(store, _config()) as api:
        a = await _create(api)
        b = await _create(api, address="+14155550101")
        mail = await _create(api, channel="email", address="ana@acme.io")
        body = {**SEQ, "senders": {"sms": [a["id"], b["id"]], "email": [mail["id"]]}}
        status, made = await api.call("POST", "/sequences", body)
        assert status == 201, made
        seq = made["sequence"]  # type: ignore[index]
        assert seq["senders"] == {"sms": [a["id"], b["id"]], "email": [mail["id"]]}
        assert seq["rotation"] == "sticky"
        status, patched = await api.call(
            "PATCH", f"/sequences/{seq['id']}", {"rotation": "round_robin"}
        )
        assert status == 200 and patched["sequence"]["rotation"] == "round_robin"  # type: ignore[index]
        assert patched["sequence"]["senders"] == seq["senders"]  # type: ignore[index]
        # Without pools: the tenant's configured number and address, as before.
        status, plain = await api.call("POST", "/sequences", SEQ)
        assert plain["sequence"]["senders"] == {"sms": [], "email": []}  # type: ignore[index]


async def test_a_pool_names_senders_of_its_channel_once(store: Store) -> None:
    async with api_client(store, _config()) as api:
        a = await _create(api)
        mail = await _create(api, channel="email", address="ana@acme.io")
        _, other = await store.tenants.create_key("globex")
        status, theirs = await api.call(
            "POST", "/senders", {"channel": "sms", "address": "+14155550177"}, key=other
        )
        assert status == 201
        bad = {
            "sms": [a["id"], mail["id"], a["id"], theirs["sender"]["id"]],  # type: ignore[index]
            "email": ["snd_nope"],
        }
        status, answer = await api.call("POST", "/sequences", {**SEQ, "senders": bad})
        assert status == 422, answer
        assert set(_errors(answer)) == {
            "senders.sms[1]", "senders.sms[2]", "senders.sms[3]", "senders.email[0]"
        }  # fmt: skip
        _, made = await api.call("POST", "/sequences", SEQ)
        sid = made["sequence"]["id"]  # type: ignore[index]
        for body, path in [
            ({"senders": {"email": [a["id"]]}}, "senders.email[0]"),
            ({"rotation": "random"}, "rotation"),
            ({"senders": {"fax": []}}, "senders.fax"),
        ]:
            status, answer = await api.call("PATCH", f"/sequences/{sid}", body)
            assert status == 422 and path in _errors(answer), (body, answer)


async def test_a_record_that_does_not_decode_is_left_out(store: Store) -> None:
    async with api_client(store, _config()) as api:
        made = await _create(api)
        await store.client.hset(store.keys.senders("acme"), "snd_bad", '{"id": "snd_bad"}')
        status, listing = await api.call("GET", "/senders")
        assert status == 200 and [s["id"] for s in listing["data"]] == [made["id"]]  # type: ignore[index]


async def test_a_whole_float_is_an_int_in_optional_limits(store: Store) -> None:
    # JSON does not tell 2 from 2.0 (JSON Schema's integer takes both).
    async with api_client(store, _config()) as api:
        made = await _create(api, limits={"per_second": 2.0, "per_day": None})
        assert made["limits"]["per_second"] == 2
        status, answer = await api.call("POST", "/senders", {
            "channel": "sms", "address": "+14155550111", "limits": {"per_second": 2.5}
        })  # fmt: skip
        assert status == 422 and "limits.per_second" in _errors(answer)
