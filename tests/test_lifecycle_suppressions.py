"""/v1/suppressions: normalised values, idempotent adds, listing, lifting, tenant isolation,
and the 409 on enrolling a contact suppressed on every channel a sequence uses."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from seqd.store.db import Store
from tests.dispatchutil import email, sequence, sms
from tests.lifecycleutil import EMAIL, PHONE, client, contact


async def test_add_is_normalised_and_idempotent(store: Store) -> None:
    async with client(store) as api:
        code, body = await api.call(
            "POST", "/suppressions", {"channel": "sms", "value": "+1 (415) 555-0100"}
        )
        assert code == 201, body
        first = body["suppression"]
        assert first["value"] == PHONE and first["reason"] == "manual"
        assert first["created_at"].endswith("Z")
        code, body = await api.call(
            "POST", "/suppressions", {"channel": "sms", "value": PHONE, "reason": "bounced"}
        )
        assert code == 200 and body["suppression"] == first  # the first record stays
        code, body = await api.call(
            "POST", "/suppressions", {"channel": "email", "value": "Ada@EXAMPLE.com"}
        )
        assert code == 201 and body["suppression"]["value"] == "Ada@example.com"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"channel": "sms", "value": "not a phone"}, "value"),
        ({"channel": "email", "value": "nobody"}, "value"),
        ({"channel": "fax", "value": PHONE}, "channel"),
        ({"channel": "sms"}, "value"),
        ({"channel": "sms", "value": ""}, "value"),
        ({"channel": "sms", "value": PHONE, "reason": "because"}, "reason"),
        ({"channel": "sms", "value": PHONE, "extra": 1}, "extra"),
    ],
)
async def test_bad_input_names_the_field(store: Store, body: dict[str, str], path: str) -> None:
    async with client(store) as api:
        code, problem = await api.call("POST", "/suppressions", body)
        assert code == 422, problem
        assert [e["path"] for e in problem["errors"]] == [path]
        assert (await api.call("GET", "/suppressions"))[1]["total"] == 0


async def test_list_pages_filters_and_lift(store: Store) -> None:
    values = [("sms", "+14155550101"), ("sms", "+14155550102"), ("email", "a@example.com"),
              ("email", "b@example.com"), ("email", "c@example.com")]  # fmt: skip
    async with client(store) as api:
        for channel, value in values:
            assert (await api.call("POST", "/suppressions", {"channel": channel, "value": value}))[
                0
            ] == 201
        seen, token = [], None
        while True:
            query = "?limit=2" + (f"&page_token={token}" if token else "")
            code, page = await api.call("GET", "/suppressions" + query)
            assert code == 200 and page["total"] == 5 and len(page["data"]) <= 2
            seen += [(s["channel"], s["value"]) for s in page["data"]]
            token = page["next_page_token"]
            if token is None:
                break
        assert sorted(seen) == sorted(values) and len(seen) == 5
        _, page = await api.call("GET", "/suppressions?channel=sms")
        assert [s["value"] for s in page["data"]] == ["+14155550101", "+14155550102"]
        assert page["total"] == 2
        _, page = await api.call("GET", "/suppressions?value=" + "%2B1 415-555-0102")
        assert [(s["channel"], s["value"]) for s in page["data"]] == [("sms", "+14155550102")]
        _, page = await api.call("GET", "/suppressions?value=nothing-like-either")
        assert page["data"] == [] and page["total"] == 0
        code, problem = await api.call("GET", "/suppressions?channel=fax")
        assert code == 422 and problem["errors"][0]["path"] == "query.channel"
        code, problem = await api.call("GET", "/suppressions?page_token=bogus")
        assert code == 422

        query = urlencode({"channel": "email", "value": "B@example.com"})
        assert (await api.call("DELETE", f"/suppressions?{query}"))[0] == 404  # local part kept
        query = urlencode({"channel": "email", "value": "b@EXAMPLE.com"})
        assert (await api.call("DELETE", f"/suppressions?{query}"))[0] == 204
        assert (await api.call("DELETE", f"/suppressions?{query}"))[0] == 404
        code, problem = await api.call("DELETE", "/suppressions?channel=sms")
        assert code == 422 and problem["errors"][0]["path"] == "query.value"
        assert (await api.call("GET", "/suppressions"))[1]["total"] == 4


async def test_tenants_are_isolated(store: Store) -> None:
    async with client(store) as api:
        await api.call("POST", "/suppressions", {"channel": "sms", "value": PHONE})
        assert (await api.call("GET", "/suppressions", tenant="beta"))[1]["total"] == 0
        query = urlencode({"channel": "sms", "value": PHONE})
        assert (await api.call("DELETE", f"/suppressions?{query}", tenant="beta"))[0] == 404
        assert (await api.call("GET", "/suppressions", tenant="acme"))[1]["total"] == 1
    assert not await store.client.hexists(store.keys.suppressions("beta", "sms"), PHONE)
    assert await store.client.hexists(store.keys.suppressions("acme", "sms"), PHONE)


async def test_enrolling_a_contact_suppressed_everywhere_is_409(store: Store) -> None:
    cid = await contact(store)
    mixed = await sequence(store, sms(), email(wait=10))
    texts = await sequence(store, sms())
    async with client(store) as api:
        await api.call("POST", "/suppressions", {"channel": "sms", "value": PHONE})
        code, _ = await api.call("POST", f"/sequences/{texts.id}/enrollments", {"contact_id": cid})
        assert code == 409
        code, body = await api.call(
            "POST", f"/sequences/{mixed.id}/enrollments", {"contact_id": cid}
        )
        assert code == 201, body  # the email steps can still reach the contact
        await api.call("POST", "/suppressions", {"channel": "email", "value": EMAIL})
        other = await sequence(store, sms(), email(wait=10))
        code, problem = await api.call(
            "POST", f"/sequences/{other.id}/enrollments", {"contact_id": cid}
        )
        assert code == 409 and problem["contact_id"] == cid
        # Another tenant's lists do not block this tenant.
        beta = await store.contacts.create("beta", {"phone": PHONE, "email": EMAIL})
        from seqd import models

        seq = await store.sequences.create(
            "beta", models.SequenceCreate(name="b", status="active", steps=[sms()])
        )
        code, _ = await api.call(
            "POST", f"/sequences/{seq.id}/enrollments", {"contact_id": beta.id}, tenant="beta"
        )
        assert code == 201


async def test_suppress_script_keeps_first_record_and_honours_keep(store: Store) -> None:
    sup = store.suppressions
    record, new = await sup.add("acme", "sms", PHONE, "manual")
    assert new and record.reason == "manual"
    record, new = await sup.add("acme", "sms", PHONE, "opted_out")
    assert not new and record.reason == "manual"
    assert await sup.remove("acme", "sms", PHONE, keep="manual") is None
    assert await sup.get("acme", "sms", PHONE) is not None
    removed = await sup.remove("acme", "sms", PHONE)
    assert removed is not None and removed.reason == "manual"
    assert await sup.get("acme", "sms", PHONE) is None
    assert await store.client.zcard(store.keys.suppression_index("acme", "sms")) == 0
