"""Unauthenticated inbound email (secret in the URL): a wrong secret changes nothing, and
one tenant's secret cannot act on another tenant's enrollments or suppressions."""

from __future__ import annotations

import pytest

from seqd.store.db import Store
from tests.dispatchutil import events
from tests.lifecycleutil import BETA_INBOUND_SECRET, EMAIL, client
from tests.test_lifecycle_email import dsn, mailed, reply, sent_id, state

RFC822 = {"Content-Type": "message/rfc822"}


def _messages(only_email: str) -> dict[str, bytes]:
    return {
        "reply": reply(in_reply_to=sent_id(only_email)),
        "bounce": dsn(EMAIL, "5.1.1", original_id=sent_id(only_email)),
    }


@pytest.mark.parametrize(
    "secret",
    [BETA_INBOUND_SECRET + "x", BETA_INBOUND_SECRET[:-1], BETA_INBOUND_SECRET.upper(), "a" * 16],
)
async def test_wrong_secret_is_404_and_changes_nothing(store: Store, secret: str) -> None:
    _, only_email, mixed, _ = await mailed(store)
    before = await events(store)
    async with client(store) as api:
        for message in _messages(only_email).values():
            resp = await api.http.post(f"/v1/inbound/email/{secret}", data=message, headers=RFC822)
            assert resp.status == 404 and resp.content_type == "application/problem+json"
        for tenant in ("acme", "beta"):
            _, listing = await api.call("GET", "/suppressions", tenant=tenant)
            assert listing["total"] == 0
    assert await state(store, only_email) == ("active", None)
    assert await state(store, mixed) == ("active", None)
    assert await events(store) == before


async def test_one_tenants_secret_cannot_touch_another_tenants_enrollments(
    store: Store,
) -> None:
    """acme's enrollments mailed; beta's valid secret posts a reply and a bounce naming
    acme's Message-IDs: beta may record them for itself, acme's state is untouched."""
    _, only_email, mixed, _ = await mailed(store)
    async with client(store) as api:
        for message in _messages(only_email).values():
            resp = await api.http.post(
                f"/v1/inbound/email/{BETA_INBOUND_SECRET}", data=message, headers=RFC822
            )
            assert resp.status == 200
            assert (await resp.json())["tenant"] == "beta"
        _, listing = await api.call("GET", "/suppressions", tenant="acme")
        assert listing["total"] == 0
    assert await state(store, only_email) == ("active", None)
    assert await state(store, mixed) == ("active", None)
