"""Every error class of the API, as problem+json, and tenant isolation on every route."""

from __future__ import annotations

import io
import re

import pytest

from seqd import ids
from seqd.api.routing import ROUTES
from seqd.config import WebhooksConfig
from seqd.events.reader import Reader
from tests.conftest import Api

SEQ = {"name": "S", "status": "active", "steps": [{"kind": "sms", "body": "hi"}]}


async def _raw(api: Api, method: str, path: str, **kw: object) -> tuple[int, str, dict]:
    resp = await api.client.request(method, "/v1" + path, **kw)  # type: ignore[attr-defined]
    body = await resp.json(content_type=None)
    return resp.status, resp.content_type, body


async def test_malformed_json_is_400(api: Api) -> None:
    status, ctype, body = await _raw(
        api,
        "POST",
        "/contacts",
        data=b'{"phone": ',
        headers={**api.headers(), "Content-Type": "application/json"},
    )
    assert status == 400 and ctype == "application/problem+json"
    assert body["type"] == "urn:seqd:problem:bad_request" and body["status"] == 400


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer sk_live_nope"},
        {"X-Api-Key": "nope"},
        {"Authorization": "Basic abc"},
    ],
)
async def test_missing_or_wrong_key_is_401(api: Api, headers: dict[str, str]) -> None:
    status, ctype, _ = await _raw(api, "GET", "/contacts", headers=headers)
    assert status == 401 and ctype == "application/problem+json"


async def test_x_api_key_header_works(api: Api) -> None:
    status, _, _ = await _raw(api, "GET", "/contacts", headers={"X-Api-Key": api.key})
    assert status == 200


async def test_revoked_key_is_401(api: Api) -> None:
    key, secret = await api.store.tenants.create_key("acme", "temp")
    assert (await _raw(api, "GET", "/contacts", headers=api.headers(secret)))[0] == 200
    assert await api.store.tenants.revoke(key.id)
    assert (await _raw(api, "GET", "/contacts", headers=api.headers(secret)))[0] == 401


async def test_unknown_route_404_and_wrong_method_405(api: Api) -> None:
    status, ctype, body = await _raw(api, "GET", "/nothing-here", headers=api.headers())
    assert status == 404 and ctype == "application/problem+json"
    status, ctype, body = await _raw(api, "PUT", "/contacts", headers=api.headers())
    assert status == 405 and body["status"] == 405


async def test_body_over_limit_is_413(api: Api) -> None:
    big = b'{"first_name": "' + b"x" * (1024 * 1024) + b'"}'
    status, ctype, _ = await _raw(
        api,
        "POST",
        "/contacts",
        data=io.BytesIO(big),
        headers={**api.headers(), "Content-Type": "application/json"},
    )
    assert status == 413 and ctype == "application/problem+json"


async def test_wrong_media_type_is_415(api: Api) -> None:
    status, _, _ = await _raw(
        api,
        "POST",
        "/contacts",
        data="phone=1",
        headers={**api.headers(), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 415


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/contacts", {"phone": "+14155550100", "nickname": "x"}, "nickname"),
        ("/contacts", {"first_name": 3, "phone": "+14155550100"}, "first_name"),
        ("/contacts", {"first_name": "no phone"}, "phone"),
        ("/contacts", {"phone": "12"}, "phone"),
        ("/contacts", {"phone": "not a number"}, "phone"),
        ("/contacts", {"email": "not-an-email"}, "email"),
        ("/contacts", {"email": "a@b.co", "timezone": "Mars/Olympus"}, "timezone"),
        ("/contacts", {"email": "a@b.co", "attributes": {"k": [1]}}, "attributes[...]"),
        ("/contacts", {"email": "a@b.co", "first_name": "x" * 201}, "first_name"),
        ("/sequences", {"steps": [{"kind": "sms", "body": "x"}]}, "name"),
        ("/sequences", {"name": "n", "steps": []}, "steps"),
        ("/sequences", {"name": "n", "steps": [{"kind": "sms", "body": "x"}] * 51}, "steps"),
        ("/sequences", {"name": "n", "steps": [{"kind": "fax", "body": "x"}]}, "steps[0].kind"),
        (
            "/sequences",
            {"name": "n", "steps": [{"kind": "sms", "body": "x", "wait_minutes": -1}]},
            "steps[0].wait_minutes",
        ),
        (
            "/sequences",
            {"name": "n", "steps": [{"kind": "email", "body": "x"}]},
            "steps[0].subject",
        ),
        (
            "/sequences",
            {"name": "n", "steps": [{"kind": "sms", "body": "{{ first_name"}]},
            "steps[0].body",
        ),
        (
            "/sequences",
            {
                "name": "n",
                "steps": [{"kind": "sms", "body": "ok"}, {"kind": "sms", "body": "{{oops}}"}],
            },
            "steps[1].body",
        ),
        (
            "/sequences",
            {"name": "n", "status": "archived", "steps": [{"kind": "sms", "body": "x"}]},
            "status",
        ),
    ],
)
async def test_bad_fields_are_422_with_their_path(
    api: Api, path: str, payload: dict, field: str
) -> None:
    status, body = await api.call("POST", path, payload)
    assert status == 422, body
    assert body["type"] == "urn:seqd:problem:validation_error"  # type: ignore[index]
    assert field in [e["path"] for e in body["errors"]], body  # type: ignore[index]


async def test_bad_query_is_422(api: Api) -> None:
    for query, field in [
        ("limit=0", "query.limit"),
        ("limit=201", "query.limit"),
        ("limit=abc", "query.limit"),
        ("page_token=zzz", "query.page_token"),
        ("colour=red", "query.colour"),
    ]:
        status, body = await api.call("GET", f"/contacts?{query}")
        assert status == 422, (query, body)
        assert body["errors"][0]["path"] == field  # type: ignore[index]
    status, body = await api.call("GET", "/sequences?status=bogus")
    assert status == 422


async def test_metadata_over_limit_is_422(api: Api) -> None:
    _, c = await api.call("POST", "/contacts", {"phone": "+14155550100"})
    _, s = await api.call("POST", "/sequences", SEQ)
    status, body = await api.call(
        "POST",
        f"/sequences/{s['sequence']['id']}/enrollments",  # type: ignore[index]
        {"contact_id": c["contact"]["id"], "metadata": {"blob": "x" * 20_000}},  # type: ignore[index]
    )
    assert status == 422 and body["errors"][0]["path"] == "metadata"  # type: ignore[index]


# -- tenant isolation -------------------------------------------------------------------
_KIND_BY_PREFIX = {
    "/contacts/": "contact",
    "/sequences/": "sequence",
    "/enrollments/": "enrollment",
    "/events/": "event",
    "/webhook-endpoints/": "webhook_endpoint",
    "/schedules/": "schedule",
    "/senders/": "sender",
}
_MISSING = {
    "contact": ids.new(ids.CONTACT),
    "sequence": ids.new(ids.SEQUENCE),
    "enrollment": ids.new(ids.ENROLLMENT),
    "event": ids.new(ids.EVENT),
    "webhook_endpoint": ids.new(ids.WEBHOOK),
    "schedule": ids.new(ids.SCHEDULE),
    "sender": ids.new(ids.SENDER),
}


# A valid body for routes whose body has required fields; others get {}.
_SAMPLE_BODIES = {
    "EnrollmentCreate": {"contact_id": ids.new(ids.CONTACT)},
    "PreviewRequest": {"contact": {}},
    "ContactEventCreate": {"name": "meeting_booked"},
}


def _kind(path: str) -> str | None:
    return next((k for p, k in _KIND_BY_PREFIX.items() if path.startswith(p)), None)


async def test_other_tenant_gets_the_same_404_as_for_a_missing_id(api: Api) -> None:
    _, c = await api.call("POST", "/contacts", {"phone": "+14155550100"})
    _, s = await api.call("POST", "/sequences", SEQ)
    cid, sid = c["contact"]["id"], s["sequence"]["id"]  # type: ignore[index]
    _, e = await api.call("POST", f"/sequences/{sid}/enrollments", {"contact_id": cid})
    owned = {"contact": cid, "sequence": sid, "enrollment": e["enrollment"]["id"]}  # type: ignore[index]
    # An event in the log (the enrollment's) and a webhook endpoint (a public IP literal:
    # nothing is resolved, nothing is sent).
    await Reader(api.store, WebhooksConfig()).run_once()
    _, events = await api.call("GET", "/events")
    owned["event"] = events["data"][0]["id"]  # type: ignore[index]
    _, w = await api.call(
        "POST", "/webhook-endpoints", {"url": "https://93.184.216.34/hook", "events": ["*"]}
    )
    owned["webhook_endpoint"] = w["webhook_endpoint"]["id"]  # type: ignore[index]
    _, sch = await api.call(
        "POST", "/schedules", {"name": "x", "windows": {"mon": [["09:00", "17:00"]]}}
    )
    owned["schedule"] = sch["schedule"]["id"]  # type: ignore[index]
    _, snd = await api.call("POST", "/senders", {"channel": "sms", "address": "+14155550199"})
    owned["sender"] = snd["sender"]["id"]  # type: ignore[index]
    _, other = await api.store.tenants.create_key("bravo")

    routes = [r for r in ROUTES if "{id}" in r.path and r.auth]
    assert routes
    for r in routes:
        kind = _kind(r.path)
        assert kind is not None, f"tenant isolation test does not cover {r.method} {r.path}"
        body = _SAMPLE_BODIES.get(r.body.__name__, {}) if r.body is not None else None
        theirs = await api.call(r.method, r.path.replace("{id}", owned[kind]), body, key=other)
        missing = await api.call(r.method, r.path.replace("{id}", _MISSING[kind]), body, key=other)
        assert theirs[0] == 404, (r.method, r.path, theirs)
        scrub = lambda b: re.sub(r"(con|seq|enr|evt|whe|snd|sch)_\w+", "<id>", str(b))  # noqa: E731
        assert scrub(theirs[1]) == scrub(missing[1]), (r.method, r.path)

    # Lists of the other tenant show nothing of the first.
    for path in (
        "/contacts",
        "/sequences",
        f"/contacts?phone={cid and '%2B14155550100'}",
        "/events",
        "/webhook-endpoints",
        "/schedules",
        "/senders",
    ):
        status, listing = await api.call("GET", path, key=other)
        assert status == 200 and listing["total"] == 0, path  # type: ignore[index]
    # The first tenant's objects are untouched by all of the above.
    _, again = await api.call("GET", f"/enrollments/{owned['enrollment']}")
    assert again["enrollment"]["status"] == "active"  # type: ignore[index]
    _, seq = await api.call("GET", f"/sequences/{sid}")
    assert seq["sequence"]["status"] == "active"  # type: ignore[index]
    # The other tenant can hold the same phone number: uniqueness is per tenant.
    status, _ = await api.call("POST", "/contacts", {"phone": "+14155550100"}, key=other)
    assert status == 201
