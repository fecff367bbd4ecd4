"""The server as an operator meets it: /docs, /redoc and / in a real headless Chromium.

Chromium is Debian's (``apt-get install chromium``; ``scripts/test`` installs it when root), driven
by Playwright for Python through ``executable_path`` (never ``playwright install``). The browser
has no route off this machine: host names other than loopback do not resolve
(``--host-resolver-rules``), and every request to a host other than 127.0.0.1 is aborted and
recorded; each test asserts that none was attempted, so a page that needed a CDN fails here.

Screenshots go to ``ACTIVESTORAGE_SCREENSHOTS`` when set (``docs/img/server`` refreshes the
docs' pictures), else to the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from servers import S3_KEY, S3_SECRET, ServerProcess, start_active_server

CHROMIUM = os.environ.get("ACTIVESTORAGE_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"]
LOOPBACK = ("127.0.0.1", "localhost")
WAIT_MS = 90_000  # two cores shared by many: Chromium can be slow to start and lay out


def _require_browser() -> None:
    """Skip (locally) or fail (CI=true) without Debian's Chromium or Playwright."""
    problem = None
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        problem = f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "Playwright for Python is not installed (pip install -e '.[test]')"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests are required under CI=true: {problem}")
        pytest.skip(problem)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


class Offline:
    """A page whose requests to anything but loopback are aborted and recorded."""

    def __init__(self, browser: object) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
        self.context.set_default_timeout(WAIT_MS)
        self.blocked: list[str] = []
        self.failed: list[str] = []
        self.refused_by_csp: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("requestfailed", self._failed)

    def _failed(self, request: object) -> None:
        url, error = request.url, request.failure or ""  # type: ignore[attr-defined]
        # the page's own Content-Security-Policy stopped it inside the browser: never sent
        (self.refused_by_csp if error in ("csp", "net::ERR_BLOCKED_BY_CSP") else self.failed).append(
            f"{url} ({error})")

    def _route(self, route: object) -> None:
        url = route.request.url  # type: ignore[attr-defined]
        host = urlsplit(url).hostname or ""
        if url.startswith(("http:", "https:", "ws:", "wss:")) and host not in LOOPBACK:
            self.blocked.append(url)
            route.abort("internetdisconnected")  # type: ignore[attr-defined]
        else:
            route.continue_()  # type: ignore[attr-defined]

    def assert_offline(self) -> None:
        assert not self.blocked, f"the page tried to leave the machine: {self.blocked}"
        assert not self.failed, f"requests failed: {self.failed}"


@pytest.fixture()
def offline(browser: object) -> Iterator[Offline]:
    o = Offline(browser)
    yield o
    o.context.close()


@pytest.fixture(scope="module")
def fresh_server(servers_dir: Path) -> Iterator[ServerProcess]:
    """Our server, started for this module so its counters start at zero."""
    proc = start_active_server(servers_dir / "browser")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("ACTIVESTORAGE_SCREENSHOTS")
    out = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _paths(server: ServerProcess) -> set[str]:
    spec = requests.get(server.url + "/openapi.json", timeout=10).json()
    return {f"{m.upper()} {p}" for p, ms in spec["paths"].items() for m in ms}


def test_swagger_ui_renders_every_operation_offline(fresh_server, offline, shots):
    page = offline.page
    page.goto(fresh_server.url + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=WAIT_MS)
    shown = set()
    for block in page.query_selector_all(".opblock"):
        method = block.query_selector(".opblock-summary-method").inner_text().strip()
        path = block.query_selector(".opblock-summary-path").get_attribute("data-path")
        shown.add(f"{method.upper()} {path}")
    assert shown == _paths(fresh_server), shown
    page.screenshot(path=str(shots / "docs-swagger.png"))
    # open one operation: its error responses and examples are rendered from the schema
    page.click(".opblock-post .opblock-summary")
    page.wait_for_selector(".responses-table", timeout=WAIT_MS)
    codes = {c.inner_text().strip() for c in page.query_selector_all(".response-col_status")}
    assert {"200", "400", "401", "403", "404", "413", "502", "503", "504"} <= codes, codes
    offline.assert_offline()


def test_redoc_renders_every_operation_offline(fresh_server, offline, shots):
    page = offline.page
    page.goto(fresh_server.url + "/redoc")
    page.wait_for_selector("[data-section-id^='operation/'], [id^='operation/']", timeout=WAIT_MS)
    text = page.inner_text("body")
    for route in _paths(fresh_server):
        method, path = route.split(" ", 1)
        assert path in text, route
    sections = page.query_selector_all("[data-section-id^='operation/']")
    assert len(sections) >= len(_paths(fresh_server)), len(sections)
    # ReDoc's own logo (from its maker's CDN) is refused by /redoc's CSP inside the browser,
    # and ReDoc then drops the image: no request left, no broken image shown
    assert all("cdn.redoc.ly" in u for u in offline.refused_by_csp), offline.refused_by_csp
    assert page.query_selector("img[alt='redocly logo']") is None
    page.screenshot(path=str(shots / "docs-redoc.png"))
    offline.assert_offline()


def _reduce(server: ServerProcess, store_url: str, n: int) -> int:
    for _ in range(n):
        r = requests.post(server.url + "/v2/sum", json={
            "interface_type": "s3", "url": store_url, "dtype": "float64",
            "byte_order": "little", "size": 8 * 4096,
            "option_disable_chunk_cache": True},  # each one reads the store: counters move
            auth=(S3_KEY, S3_SECRET), timeout=30)
        assert r.status_code == 200, r.text
    return n


def test_status_page_counters_move_without_reload(fresh_server, offline, shots, s3, moto_server):
    import numpy as np

    s3.create_bucket(Bucket="status-page")
    data = np.arange(4096, dtype="<f8").tobytes()
    s3.put_object(Bucket="status-page", Key="x.f8", Body=data)
    store_url = f"{moto_server.url}/status-page/x.f8"

    page = offline.page
    page.goto(fresh_server.url + "/?refresh=0.5")
    page.wait_for_selector("#requests")
    before = int(page.inner_text("#requests"))
    page.evaluate("window.__not_reloaded = true")

    _reduce(fresh_server, store_url, 3)
    r = requests.post(fresh_server.url + "/v2/sum", json={"interface_type": "s3", "url": store_url,
                                                          "dtype": "float16"},
                      auth=(S3_KEY, S3_SECRET), timeout=30)
    assert r.status_code == 400
    from playwright.sync_api import expect

    # the page's CSP forbids string evaluation, so wait with a locator, not wait_for_function
    expect(page.locator("#requests")).to_have_text(str(before + 4), timeout=WAIT_MS)
    assert page.evaluate("window.__not_reloaded === true")  # updated in place, not reloaded
    by_status = dict(
        (row.query_selector_all("td")[0].inner_text(), row.query_selector_all("td")[1].inner_text())
        for row in page.query_selector_all("#by_status tr"))
    assert by_status.get("200") == "3" and by_status.get("400") == "1", by_status
    assert page.inner_text("#bytes_upstream") == "96.0 KiB"  # 3 x 32 KiB read from the store
    saving = page.inner_text("#saving")
    assert saving.endswith("%") and float(saving.rstrip(" %")) > 90, saving
    assert "live" in page.inner_text("#live")
    # the page's numbers are the server's
    snap = requests.get(fresh_server.url + "/", headers={"accept": "application/json"},
                        timeout=10).json()["counters"]
    assert snap["bytes_upstream"] == 3 * len(data) and snap["requests_by_status"]["200"] == 3
    page.screenshot(path=str(shots / "status.png"), full_page=True)
    offline.assert_offline()
