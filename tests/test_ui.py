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
        # Per step, from the counters: step 0 went to the five active ones.
        assert 'data-step="0" data-sent="5"' in html and 'data-step="1" data-sent="0"' in html
        assert 'data-label="step 0" data-value="5"' in html
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


async def test_the_hours_series_sums_minutes_and_means_lateness(store: object) -> None:
    from seqd.store.rates import LATENESS_CHANNEL, SendRates

    rates = SendRates(store)  # type: ignore[arg-type]
    now = 1_800_000_000_000 + 25_000  # 25 s into a minute
    minute = 60_000
    await rates.add({("sms", "sent"): 4, ("webhook", "sent"): 9}, now - 2 * minute)
    await rates.add({("email", "sent"): 2, ("sms", "failed"): 1}, now - 2 * minute + 30_000)
    await rates.add({(LATENESS_CHANNEL, "ms"): 3000, (LATENESS_CHANNEL, "n"): 6}, now - 2 * minute)
    await rates.add({("sms", "sent"): 5}, now)
    series = await rates.series(now, minutes=5)
    assert [m.start for m in series] == [now - 25_000 - k * minute for k in (4, 3, 2, 1, 0)]
    assert [m.sent for m in series] == [0, 0, 6, 0, 5]
    assert [m.lateness for m in series] == [0.0, 0.0, 0.5, 0.0, 0.0]
    window = await rates.window(now)
    assert LATENESS_CHANNEL not in window.counts


async def test_on_a_listener_of_its_own_or_off(store: object) -> None:
    import aiohttp
    from aiohttp.test_utils import TestClient, TestServer

    from seqd.api.app import create_app
    from seqd.config import Config, UiConfig
    from tests.conftest import free_port

    port = free_port()
    app = create_app(Config(ui=UiConfig(listen=f"127.0.0.1:{port}")), store)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client, aiohttp.ClientSession() as http:
        assert (await client.get("/ui/login")).status == 404
        async with http.get(f"http://127.0.0.1:{port}/ui/login") as resp:
            assert resp.status == 200 and "API key" in await resp.text()
        async with http.get(f"http://127.0.0.1:{port}/v1/sequences") as resp:
            assert resp.status == 404  # the API stays on its own listener
    app = create_app(Config(ui=UiConfig(enabled=False)), store)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/ui/login")).status == 404


async def test_an_enrollment_page_shows_its_steps_and_walks_a_long_log(store: object) -> None:
    """The steps come from the enrollment's own record, complete whatever the log's size;
    its events from the log, from its creation on, page by page past other enrollments'."""
    from seqd.store.events import SCAN_MAX
    from seqd.times import now_ms
    from tests.dispatchutil import Clock as DispatchClock
    from tests.lifecycleutil import send_due
    from tests.webhookutil import pipeline

    async with api_client(store) as api:  # type: ignore[arg-type]
        variants = [{"id": "a", "body": "A"}, {"id": "b", "body": "B"}]
        steps = [{"kind": "sms", "body": "x", "variants": variants}, {"kind": "sms", "body": "y"}]
        code, made = await api.call(
            "POST", "/sequences", {"name": "n", "status": "active", "steps": steps}
        )
        assert code == 201, made
        sid = made["sequence"]["id"]  # type: ignore[index]
        code, got = await api.call(
            "POST", f"/sequences/{sid}/enrollments", {"contact": {"phone": "+14155550377"}}
        )
        eid = got["enrollment"]["id"]  # type: ignore[index]
        async with pipeline(api.store) as p:
            await p.read()
            # Other enrollments' events, more than one page's scan, after its creation.
            log = api.store.keys.events("acme")
            for n in range(SCAN_MAX + 10):
                fields = {"v": f"evt_{n}", "y": "x", "at": str(now_ms()), "e": "enr_other"}
                await api.store.client.xadd(log, fields)  # type: ignore[arg-type]
            clock = DispatchClock()
            clock.advance(1_000)
            await send_due(api.store, clock)
            await p.read()
        await _sign_in(api)
        status, html = await _get(api, f"/ui/enrollments/{eid}")
        assert status == 200
        _, enrollment = await api.call("GET", f"/enrollments/{eid}")
        variant = enrollment["enrollment"]["variants"]["0"]  # type: ignore[index]
        row = re.search(r'<tr class="step" data-step="0">(.*?)</tr>', html)
        assert row and "<td>sent</td>" in row.group(1) and f"<td>{variant}</td>" in row.group(1)
        assert "sequence.enrollment.created" in html and "sequence.step.sent" not in html
        pages = 0
        while "sequence.step.sent" not in html:
            later = re.search(r'href="\?page_token=([^"]+)">Later events', html)
            assert later and pages < 3, html[-600:]
            status, html = await _get(api, f"/ui/enrollments/{eid}?page_token={later.group(1)}")
            assert status == 200
            pages += 1
        status, _ = await _get(api, f"/ui/enrollments/{eid}?page_token=nope")
        assert status == 422
