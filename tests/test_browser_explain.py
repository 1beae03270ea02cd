"""The page's "where?" toggle (issue 29): on a text search's result it lays the query's map over the thumbnail
(POST /explain, format overlay), and a second click hides it. Real server, headless Chromium (as test_browser)."""

import pytest

from test_browser import CHROMIUM, server  # noqa: F401  (the module's live server fixture)

pytestmark = pytest.mark.browser


def test_where_toggles_the_overlay_on_a_result(server):  # noqa: F811
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(server + "/")
            page.fill("#query", "a cup of coffee")
            page.press("#query", "Enter")
            page.wait_for_selector(".card .where", timeout=15_000)
            first = page.locator(".card").first
            first.locator(".where").click()
            page.wait_for_function("document.querySelector('.card img.overlay[src^=\"blob:\"]') !== null",
                                   timeout=15_000)
            assert page.evaluate("document.querySelector('.card img.overlay').naturalWidth") > 0
            assert first.locator(".where.on").count() == 1
            assert page.url.endswith("?q=a+cup+of+coffee")  # the click did not run "more like this"
            first.locator(".where").click()
            assert page.evaluate("document.querySelector('.card img.overlay').hidden") is True
        finally:
            browser.close()
