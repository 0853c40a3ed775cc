"""The dashboard over HTTP (no browser): sign-in, the session cookie, CSRF, every page
answering for the signed-in tenant only. The browser tests are tests/test_ui_browser.py."""

from __future__ import annotations

import re

from seqd.api.ui import session
from tests.conftest import Api
from tests.uiutil import seed
from tests.webhookutil import api_client, receiving


async def _sign_in(api: Api, key: str | None = None) -> None:
    resp = await api.client.post(  # type: ignore[attr-defined]
        "/ui/login", data={"key": key or api.key}, allow_redirects=False
    )
    assert resp.status == 303 and resp.headers["Location"] == "/ui/", await resp.text()
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie


async def _get(api: Api, path: str) -> tuple[int, str]:
    resp = await api.client.get(path, allow_redirects=False)  # type: ignore[attr-defined]
    return resp.status, await resp.text()


async def test_sign_in_pages_csrf_and_revocation(store: object) -> None:
    async with receiving() as rx, api_client(store) as api:  # type: ignore[arg-type]
        world = await seed(api, rx)
        # Nothing readable before signing in.
        for path in ("/ui/", f"/ui/sequences/{world['sequence']}", "/ui/webhooks"):
            status, _ = await _get(api, path)
            assert status == 303, path
        resp = await api.client.post("/ui/login", data={"key": "sk_live_wrong"})  # type: ignore[attr-defined]
        assert resp.status == 401 and "not valid" in await resp.text()

        await _sign_in(api)
        status, html = await _get(api, "/ui/")
        assert status == 200 and "Nurture" in html
        assert 'data-label="active" data-value="5"' in html
        assert 'data-label="paused" data-value="3"' in html
        status, html = await _get(api, f"/ui/sequences/{world['sequence']}?status=paused")
        assert status == 200
        assert sorted(re.findall(r'/ui/enrollments/(enr_\w+)"', html)) == sorted(world["paused"])
        status, html = await _get(api, f"/ui/enrollments/{world['paused'][0]}")
        assert status == 200 and "sequence.enrollment.paused" in html
        for path in ("/ui/contacts", "/ui/contacts?q=%2B14155550301", "/ui/suppressions",
                     "/ui/forecast", "/ui/dispatcher", "/ui/static/style.css"):  # fmt: skip
            status, html = await _get(api, path)
            assert status == 200, (path, html[:300])
        status, html = await _get(api, "/ui/webhooks")
        assert world["delivery"] in html
        csrf = re.search(r'name="csrf" value="([^"]+)"', html)
        assert csrf is not None

        retry = f"/ui/webhooks/{world['endpoint']}/failed/{world['delivery']}/retry"
        # A post without the session's token is refused and changes nothing.
        for data in ({}, {"csrf": "forged"}):
            resp = await api.client.post(retry, data=data, allow_redirects=False)  # type: ignore[attr-defined]
            assert resp.status == 403 and "CSRF" in await resp.text()
        failed_path = f"/webhook-endpoints/{world['endpoint']}/failed-deliveries"
        _, failed = await api.call("GET", failed_path)
        before = failed["total"]  # type: ignore[index]
        good = {"csrf": csrf.group(1)}
        resp = await api.client.post(retry, data=good, allow_redirects=False)  # type: ignore[attr-defined]
        assert resp.status == 303
        _, failed = await api.call("GET", failed_path)
        assert failed["total"] == before - 1  # type: ignore[index]
        assert world["delivery"] not in {d["id"] for d in failed["data"]}  # type: ignore[index]

        # Bad input is a page saying so, not a 500.
        bogus = f"/ui/sequences/{world['sequence']}?status=bogus"
        for path in ("/ui/sequences/seq_nope", "/ui/enrollments/enr_nope", "/ui/?page_token=x",
                     bogus, "/ui/contacts?page_token=%00"):  # fmt: skip
            status, _ = await _get(api, path)
            assert status in (303, 404, 422), (path, status)

        # Another tenant's key sees none of it.
        _, other = await api.store.tenants.create_key("bravo")
        await _sign_in(api, other)
        status, html = await _get(api, "/ui/")
        assert status == 200 and "Nurture" not in html
        status, _ = await _get(api, f"/ui/sequences/{world['sequence']}")
        assert status == 404

        # Revoking the key ends its sessions.
        [record] = [k for k in await api.store.tenants.list_keys("bravo")]
        assert await api.store.tenants.revoke(record.id)
        status, _ = await _get(api, "/ui/")
        assert status == 303


def test_cookie_signature_and_expiry() -> None:
    s = session.new("acme", "d" * 64, now=1000.0)
    value = session.encode("secret", s)
    assert session.decode("secret", value, now=1001.0) == s
    assert session.decode("other", value, now=1001.0) is None
    assert session.decode("secret", value, now=1000.0 + session.LIFETIME_S + 1) is None
    for bad in ("", ".", "x.y", value + "x", "e30." + value.split(".")[1], "\udcff.x"):
        assert session.decode("secret", bad, now=1001.0) is None
    assert not session.csrf_ok(s, None) and not session.csrf_ok(s, "x")
    assert session.csrf_ok(s, s.csrf)
