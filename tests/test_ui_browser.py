"""The dashboard in a real browser: Debian's headless Chromium through chromedriver
(Selenium), against the app on a loopback port. Signing in, the funnel, filtering
enrollments, retrying a failed delivery, a forged form refused. With SEQD_UI_SCREENSHOTS
set to a folder, the main pages are saved there as PNG (docs/ui/ holds the committed ones).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from seqd.store.db import Store
from tests.uiutil import seed
from tests.webhookutil import api_client, receiving

pytestmark = pytest.mark.slow
T = TypeVar("T")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="seqd-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                 f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Selenium blocks: run it beside the loop that serves the app."""
    return await asyncio.to_thread(fn, *args)


def _shot(driver: webdriver.Chrome, name: str) -> None:
    folder = os.environ.get("SEQD_UI_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def _text(driver: webdriver.Chrome, css: str) -> str:
    return str(_wait(driver).until(ec.presence_of_element_located((By.CSS_SELECTOR, css))).text)


def _wait(driver: webdriver.Chrome) -> WebDriverWait[webdriver.Chrome]:
    return WebDriverWait(driver, 20)


async def test_sign_in_funnel_filter_retry_and_forged_post(
    store: Store, browser: webdriver.Chrome
) -> None:
    async with receiving() as rx, api_client(store) as api:
        world = await seed(api, rx)
        base = str(api.client.make_url("/ui"))  # type: ignore[attr-defined]

        def sign_in() -> None:
            browser.get(f"{base}/")  # not signed in: the form
            assert browser.current_url.endswith("/ui/login")
            browser.find_element(By.ID, "key").send_keys("sk_live_wrong")
            browser.find_element(By.ID, "signin").click()
            assert "not valid" in _text(browser, "#error")
            _shot(browser, "login")
            browser.find_element(By.ID, "key").send_keys(api.key)
            browser.find_element(By.ID, "signin").click()
            _wait(browser).until(ec.url_matches(r"/ui/$"))

        await _in_thread(sign_in)
        cookie = await _in_thread(browser.get_cookie, "seqd_ui")
        assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"

        def funnel() -> dict[str, str]:
            _shot(browser, "sequences")
            browser.find_element(By.LINK_TEXT, "Nurture").click()
            _wait(browser).until(ec.presence_of_element_located((By.ID, "funnel")))
            bars = browser.find_elements(By.CSS_SELECTOR, "#funnel g.bar")
            return {b.get_attribute("data-label"): b.get_attribute("data-value") for b in bars}

        assert await _in_thread(funnel) == {
            "active": "5", "paused": "3", "completed": "0", "cancelled": "0"
        }  # fmt: skip

        def filter_paused() -> list[str]:
            Select(browser.find_element(By.ID, "status")).select_by_value("paused")
            browser.find_element(By.ID, "filter").click()
            _wait(browser).until(ec.url_contains("status=paused"))
            _shot(browser, "sequence")
            rows = browser.find_elements(By.CSS_SELECTOR, "#enrollments tr.enrollment")
            assert {r.get_attribute("data-status") for r in rows} == {"paused"}
            return [r.find_element(By.TAG_NAME, "a").text for r in rows]

        assert sorted(await _in_thread(filter_paused)) == sorted(world["paused"])

        def timeline() -> str:
            browser.find_element(By.LINK_TEXT, world["paused"][0]).click()
            _wait(browser).until(ec.url_contains(world["paused"][0]))
            _shot(browser, "enrollment")
            return _text(browser, "#timeline")

        assert "sequence.enrollment.paused" in await _in_thread(timeline)

        def retry() -> str:
            browser.get(f"{base}/webhooks")
            _shot(browser, "webhooks")
            row = browser.find_element(By.ID, f"delivery-{world['delivery']}")
            row.find_element(By.CSS_SELECTOR, "button.retry").click()
            return _text(browser, "#retried")

        assert world["delivery"] in await _in_thread(retry)
        _, failed = await api.call(
            "GET", f"/webhook-endpoints/{world['endpoint']}/failed-deliveries"
        )
        assert world["delivery"] not in {d["id"] for d in failed["data"]}  # type: ignore[index]

        def forged() -> tuple[str, str]:
            # A same-site form without the session's token: refused.
            browser.execute_script(
                "const f = document.createElement('form'); f.method = 'post';"
                "f.action = arguments[0]; document.body.appendChild(f); f.submit();",
                f"{base}/webhooks/{world['endpoint']}/failed/dlv_any/retry",
            )
            _wait(browser).until(ec.url_contains("dlv_any"))
            same = _text(browser, "#error")
            # A form from another site: the SameSite=Strict cookie stays home.
            browser.get(
                "data:text/html,<form method=post action='"
                f"{base}/logout'><input name=csrf value=x></form>"
                "<script>document.forms[0].submit()</script>"
            )
            _wait(browser).until(ec.url_contains("/ui/logout"))
            return same, _text(browser, "#error")

        same_site, cross_site = await _in_thread(forged)
        assert "CSRF" in same_site and "Sign in first" in cross_site

        def still_signed_in() -> str:
            browser.get(f"{base}/forecast")
            _shot(browser, "forecast")
            browser.get(f"{base}/dispatcher")
            _shot(browser, "dispatcher")
            return browser.current_url

        assert (await _in_thread(still_signed_in)).endswith("/ui/dispatcher")
