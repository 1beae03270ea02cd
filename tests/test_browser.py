"""End-to-end: the real server (uvicorn on a free loopback port) and the web page in headless Chromium driven
by Playwright — type a query, see thumbnails; upload an image, see results; click one for "more like this".
Needs Debian's /usr/bin/chromium and the `playwright` Python package (its own browsers are not used)."""

import os
import socket
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
# Refresh the docs' screenshot only when asked (CLIPFORGE_UPDATE_SCREENSHOT=1); otherwise write it to tmp.
DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "screenshot-search.png"


@pytest.fixture(scope="module")
def server(photos_demo, tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    import uvicorn

    from clipforge.retrieval.build import build_index
    from clipforge.serve.app import create_app

    idx = tmp_path_factory.mktemp("browser") / "idx"
    build_index(f"files:{photos_demo['images_dir']}", "tiny", idx, batch_size=8, progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(idx), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    t.join(timeout=10)


def test_search_page_text_upload_and_more_like_this(server, photos_demo, tmp_path):
    from playwright.sync_api import sync_playwright

    SCREENSHOT = DOCS_SCREENSHOT if os.environ.get("CLIPFORGE_UPDATE_SCREENSHOT") else tmp_path / "shot.png"

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(server + "/")
            page.wait_for_selector("#stats:has-text('22 items')", timeout=15_000)
            # text query -> a grid of thumbnails (blob: URLs fetched from /thumb/{id})
            page.fill("#query", "a cup of coffee")
            page.press("#query", "Enter")
            page.wait_for_function("document.querySelectorAll('.card img[src^=\"blob:\"]').length >= 10",
                                   timeout=20_000)
            assert page.locator(".card").count() == 22  # 24 asked, 22 indexed
            assert "results for a cup of coffee" in page.inner_text("#status")
            loaded = page.evaluate("Array.from(document.querySelectorAll('.card img')).filter("
                                   "i => i.complete && i.naturalWidth > 0).length")
            assert loaded >= 10
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=False)
            assert SCREENSHOT.stat().st_size > 10_000
            # upload an image -> results; the photo itself ranks first
            page.fill("#query", "")
            page.set_input_files("#image-input", os.path.join(photos_demo["images_dir"], "rocket.png"))
            page.wait_for_selector("#drop img", timeout=10_000)
            page.wait_for_function("document.querySelector('.card .meta div:nth-child(2)')"
                                   "?.textContent === 'rocket.png'", timeout=20_000)
            assert "results for your image" in page.inner_text("#status")
            # click a result: more like this -> that item first
            second = page.locator(".card").nth(1)
            key = second.locator(".meta div").nth(1).inner_text()
            second.click()
            page.wait_for_function(f"document.querySelector('#status').textContent.includes('items like')"
                                   f" && document.querySelector('.card .meta div:nth-child(2)')"
                                   f"?.textContent === {key!r}", timeout=20_000)
            # a bad request shows the server's error message, and the page keeps working
            page.fill("#query", "img:/etc/passwd")
            page.press("#query", "Enter")
            page.wait_for_selector("#status.error", timeout=10_000)
            assert "not allowed" in page.inner_text("#status")
        finally:
            browser.close()
