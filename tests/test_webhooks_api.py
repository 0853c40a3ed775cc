"""/v1/webhook-endpoints: CRUD, secrets shown once, validation, the SSRF guard, tenants."""

from __future__ import annotations

from typing import Any

import pytest

from seqd.config import Config
from seqd.store.db import Store
from tests.conftest import Api
from tests.webhookutil import api_client, emit, pipeline, settings

HOOK = "http://127.0.0.1:9/hook"


def _errors(body: Any) -> dict[str, str]:
    return {e["path"]: e["message"] for e in body["errors"]}


async def _create(api: Api, **over: Any) -> dict[str, Any]:
    status, body = await api.call(
        "POST", "/webhook-endpoints", {"url": HOOK, "events": ["*"], **over}
    )
    assert status == 201, body
    return body  # type: ignore[no-any-return]


async def test_create_shows_the_secret_once(store: Store) -> None:
    async with api_client(store) as api:
        body = await _create(api, description="crm", events=["sequence.enrollment.created"])
        ep = body["webhook_endpoint"]
        assert body["secret"].startswith("whsec_")
        assert ep["id"].startswith("whe_") and ep["enabled"] is True
        assert ep["events"] == ["sequence.enrollment.created"] and ep["description"] == "crm"
        assert ep["disabled_reason"] is None and ep["previous_secret_expires_at"] is None
        status, one = await api.call("GET", f"/webhook-endpoints/{ep['id']}")
        assert status == 200 and one == {"webhook_endpoint": ep}
        status, listing = await api.call("GET", "/webhook-endpoints")
        assert listing["data"] == [ep] and listing["total"] == 1
        assert body["secret"] not in str(listing) and body["secret"] not in str(one)
        assert "secret" not in ep


async def test_list_pages(store: Store) -> None:
    async with api_client(store) as api:
        # Listed in id order (ids made in the same millisecond need not sort as made).
        made = sorted([(await _create(api))["webhook_endpoint"]["id"] for _ in range(3)])
        _status, first = await api.call("GET", "/webhook-endpoints?limit=2")
        assert [e["id"] for e in first["data"]] == made[:2] and first["total"] == 3
        _, rest = await api.call(
            "GET", f"/webhook-endpoints?limit=2&page_token={first['next_page_token']}"
        )
        assert [e["id"] for e in rest["data"]] == made[2:] and rest["next_page_token"] is None


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"url": HOOK, "events": ["nope"]}, "events[0]"),
        ({"url": HOOK, "events": ["*", "contact.bounced"]}, "events"),
        ({"url": HOOK, "events": []}, "events"),
        ({"url": HOOK}, "events"),
        ({"events": ["*"]}, "url"),
        ({"url": "ftp://example.com/x", "events": ["*"]}, "url"),
        ({"url": "not a url", "events": ["*"]}, "url"),
        ({"url": "http:///nohost", "events": ["*"]}, "url"),
        ({"url": HOOK, "events": ["*"], "secret": "mine"}, "secret"),
        ({"url": HOOK, "events": ["*"], "description": "x" * 501}, "description"),
    ],
)
async def test_create_validation_names_the_field(
    store: Store, body: dict[str, Any], path: str
) -> None:
    async with api_client(store) as api:
        status, problem = await api.call("POST", "/webhook-endpoints", body)
        assert status == 422, problem
        assert path in _errors(problem)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.0.0.5/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://0.0.0.0/hook",
        "https://192.168.1.20/hook",
        "http://224.0.0.1/hook",
        # 6to4 (2002::/16) embedding link-local, loopback and private IPv4.
        "http://[2002:a9fe:a9fe::]/latest/meta-data",
        "http://[2002:7f00:1::]/hook",
        "http://[2002:c0a8:114::1]/hook",
        # Teredo (2001::/32): a tunnel, never a webhook receiver.
        "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/hook",
        "http://[2001:0:a9fe:a9fe::1]/hook",
        # NAT64: the well-known prefix embedding private IPv4, and the local-use prefix.
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data",
        "http://[64:ff9b::7f00:1]/hook",
        "http://[64:ff9b::10.0.0.5]/hook",
        "http://[64:ff9b:1::a9fe:a9fe]/hook",
        "http://[64:ff9b:1:2:3::8.8.8.8]/hook",
    ],
)
async def test_ssrf_guard_refuses_private_targets(store: Store, url: str) -> None:
    guarded = Config(webhooks=settings(allow_private_targets=False))
    async with api_client(store, guarded) as api:
        status, problem = await api.call(
            "POST", "/webhook-endpoints", {"url": url, "events": ["*"]}
        )
        assert status == 422
        assert "not a public address" in _errors(problem)["url"]
        assert "allow_private_targets" in _errors(problem)["url"]


@pytest.mark.parametrize(
    "address", ["2002:808:808::1", "64:ff9b::8.8.8.8", "2606:4700:4700::1111", "8.8.8.8"]
)
def test_ssrf_guard_lets_public_addresses_through(address: str) -> None:
    """6to4 and NAT64 forms of a public IPv4 are as public as the IPv4 itself."""
    from seqd.events import ssrf

    assert not ssrf.forbidden(address)


async def test_a_webhook_urls_password_is_never_shown(store: Store) -> None:
    """The endpoint's URL may carry basic-auth credentials: used for delivery, masked in
    every answer (create, get, list, patch)."""
    secret_url = "http://hook-user:s3cr3t-pa55@127.0.0.1:9/hook?x=1"
    masked = "http://hook-user:***@127.0.0.1:9/hook?x=1"
    async with api_client(store) as api:
        created = (await _create(api, url=secret_url))["webhook_endpoint"]
        eid = created["id"]
        _, one = await api.call("GET", f"/webhook-endpoints/{eid}")
        _, listing = await api.call("GET", "/webhook-endpoints")
        _, patched = await api.call("PATCH", f"/webhook-endpoints/{eid}", {"description": "d"})
        answers = [created, one, listing, patched]
        assert all("s3cr3t-pa55" not in str(a) for a in answers), answers
        assert created["url"] == masked and one["webhook_endpoint"]["url"] == masked
        # The masked URL sent back as shown keeps the stored one.
        code, _ = await api.call("PATCH", f"/webhook-endpoints/{eid}", {"url": masked})
        assert code == 200
    stored = await store.webhooks.get("acme", eid)
    assert stored.url == secret_url  # deliveries still authenticate


async def test_ssrf_guard_also_checks_a_patched_url(store: Store) -> None:
    async with api_client(store) as api:
        eid = (await _create(api))["webhook_endpoint"]["id"]
    guarded = Config(webhooks=settings(allow_private_targets=False))
    async with api_client(store, guarded) as api:
        status, problem = await api.call(
            "PATCH", f"/webhook-endpoints/{eid}", {"url": "http://127.0.0.2/x"}
        )
        assert status == 422 and "url" in _errors(problem)


async def test_unresolvable_host_is_refused_when_guarded(store: Store) -> None:
    guarded = Config(webhooks=settings(allow_private_targets=False))
    async with api_client(store, guarded) as api:
        status, problem = await api.call(
            "POST", "/webhook-endpoints", {"url": "http://no-such-host.invalid/", "events": ["*"]}
        )
        assert status == 422 and "does not resolve" in _errors(problem)["url"]


async def test_patch_changes_fields_and_enabled(store: Store) -> None:
    async with api_client(store) as api:
        eid = (await _create(api))["webhook_endpoint"]["id"]
        status, body = await api.call(
            "PATCH",
            f"/webhook-endpoints/{eid}",
            {"url": "http://127.0.0.1:9/new", "events": ["contact.bounced"], "enabled": False},
        )
        ep = body["webhook_endpoint"]
        assert status == 200 and ep["url"].endswith("/new") and ep["events"] == ["contact.bounced"]
        assert ep["enabled"] is False and ep["disabled_reason"] == "manual"
        status, body = await api.call("PATCH", f"/webhook-endpoints/{eid}", {"enabled": True})
        assert body["webhook_endpoint"]["enabled"] is True
        assert body["webhook_endpoint"]["disabled_reason"] is None
        status, problem = await api.call("PATCH", f"/webhook-endpoints/{eid}", {"events": ["x"]})
        assert status == 422 and "events[0]" in _errors(problem)
        status, problem = await api.call("PATCH", f"/webhook-endpoints/{eid}", {"secret": "x"})
        assert status == 422


async def test_delete_then_404(store: Store) -> None:
    async with api_client(store) as api:
        eid = (await _create(api))["webhook_endpoint"]["id"]
        status, _ = await api.call("DELETE", f"/webhook-endpoints/{eid}")
        assert status == 204
        for method, path in (
            ("GET", f"/webhook-endpoints/{eid}"),
            ("DELETE", f"/webhook-endpoints/{eid}"),
            ("PATCH", f"/webhook-endpoints/{eid}"),
            ("POST", f"/webhook-endpoints/{eid}/rotate-secret"),
            ("GET", f"/webhook-endpoints/{eid}/failed-deliveries"),
            ("GET", "/webhook-endpoints/whe_nonsense"),
        ):
            status, _ = await api.call(method, path, {} if method == "PATCH" else None)
            assert status == 404, (method, path)


async def test_rotate_secret_returns_a_new_one_once(store: Store) -> None:
    async with api_client(store) as api:
        created = await _create(api)
        eid = created["webhook_endpoint"]["id"]
        status, body = await api.call("POST", f"/webhook-endpoints/{eid}/rotate-secret")
        assert status == 200 and body["secret"].startswith("whsec_")
        assert body["secret"] != created["secret"]
        assert body["webhook_endpoint"]["previous_secret_expires_at"] is not None
        record = await store.webhooks.get("acme", eid)
        assert record.secret == body["secret"] and record.previous_secret == created["secret"]


async def test_another_tenants_endpoint_is_a_404(store: Store) -> None:
    async with api_client(store) as api:
        eid = (await _create(api))["webhook_endpoint"]["id"]
        _, other = await store.tenants.create_key("globex")
        for method, path in (
            ("GET", f"/webhook-endpoints/{eid}"),
            ("PATCH", f"/webhook-endpoints/{eid}"),
            ("DELETE", f"/webhook-endpoints/{eid}"),
            ("POST", f"/webhook-endpoints/{eid}/rotate-secret"),
            ("GET", f"/webhook-endpoints/{eid}/failed-deliveries"),
            ("POST", f"/webhook-endpoints/{eid}/failed-deliveries/dlv_x/retry"),
        ):
            status, _ = await api.call(method, path, {} if method == "PATCH" else None, key=other)
            assert status == 404, (method, path)
        status, listing = await api.call("GET", "/webhook-endpoints", key=other)
        assert listing["data"] == [] and listing["total"] == 0


async def test_endpoint_limit_per_tenant(store: Store) -> None:
    config = Config(webhooks=settings(max_endpoints_per_tenant=2))
    async with api_client(store, config) as api:
        await _create(api)
        await _create(api)
        status, problem = await api.call(
            "POST", "/webhook-endpoints", {"url": HOOK, "events": ["*"]}
        )
        assert status == 409 and "at most 2" in problem["detail"]


async def test_retry_of_unknown_or_pending_delivery(store: Store) -> None:
    async with api_client(store) as api:
        eid = (await _create(api))["webhook_endpoint"]["id"]
        base = f"/webhook-endpoints/{eid}/failed-deliveries"
        status, _ = await api.call("POST", f"{base}/dlv_nonsense/retry")
        assert status == 404
        await emit(store)
        async with pipeline(store) as p:
            await p.read()
        [shard] = [s for s, h in enumerate(await store.deliveries.heads()) if h is not None]
        [did] = await store.client.zrange(store.keys.delivery_queue(shard, eid), 0, -1)
        status, problem = await api.call("POST", f"{base}/{did}/retry")
        assert status == 409 and problem["current_status"] == "pending"
        status, _ = await api.call("PATCH", f"/webhook-endpoints/{eid}", {"enabled": False})
        status, problem = await api.call("POST", f"{base}/{did}/retry")
        assert status == 409 and problem["current_status"] == "disabled"
