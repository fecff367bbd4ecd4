"""GET / in-process: content negotiation, counters that follow the traffic exactly, no secrets,
an HTML page that escapes what it shows and whose inline script its CSP allows."""

from __future__ import annotations

import base64
import hashlib
import re

import cbor2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings, strategies as st

from activestorage.errors import StorageError
from activestorage.server.app import create_app
from activestorage.server.settings import Settings
from activestorage.server.status import SECRET_WORDS, wants_html

STORE: dict[str, bytes] = {}
BROWSERS = [  # Accept headers real browsers send for a page load
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",  # Chromium
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",  # Firefox
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",  # Safari
]


async def fake_read(target, offset, size, *, max_bytes):
    data = STORE.get(target.url)
    if data is None:
        raise StorageError(f"object not found: {target.name}", status=400, store=target.store)
    return data[offset:] if size is None else data[offset:offset + size]


def make_client(**kw):
    app = create_app(Settings(**kw))
    app.state.server.upstream.read = fake_read
    return TestClient(app)


@pytest.fixture()
def client():
    with make_client() as c:
        yield c


def status(client) -> dict:
    r = client.get("/", headers={"accept": "application/json"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-store" and r.headers["vary"] == "Accept"
    return r.json()


@pytest.mark.parametrize("accept", BROWSERS)
def test_browsers_get_html(client, accept):
    r = client.get("/", headers={"accept": accept})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<!DOCTYPE html>" in r.text


@pytest.mark.parametrize("accept", ["application/json", "*/*", "",
                                    "application/json;q=0.9,text/html;q=0.5", "text/html;q=0"])
def test_programs_get_json(client, accept):
    r = client.get("/", headers={"accept": accept})
    assert r.headers["content-type"] == "application/json", accept
    assert r.json()["version"]


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 1), st.floats(0, 1))
def test_wants_html_follows_the_weights(q_html, q_json):
    accept = f"application/json;q={q_json:.3f}, text/html;q={q_html:.3f}"
    h, j = float(f"{q_html:.3f}"), float(f"{q_json:.3f}")
    assert wants_html(accept) == (h > 0 and h >= j)


def test_snapshot_describes_the_server(client):
    s = status(client)
    assert s["api"] == ["v1", "v2"] and s["extensions"] == {"batch": True, "fold": True}
    assert s["operations"] == ["count", "min", "max", "sum", "select", "minmax", "moments"]
    assert "zlib" in s["codecs"]["compression"] and "shuffle" in s["codecs"]["filters"]
    assert s["allow_upstream"] == ["127.0.0.1", "localhost", "::1"]
    assert s["limits"]["max_body_bytes"] == Settings().max_body_bytes
    assert s["limits"]["max_batch"] == Settings().max_batch
    assert set(s["links"].values()) >= {"/docs", "/redoc", "/metrics", "/healthz"}
    assert s["uptime_seconds"] >= 0


def test_uptime_grows(client):
    a = status(client)["uptime_seconds"]
    b = status(client)["uptime_seconds"]
    assert b >= a


def test_counters_follow_the_traffic_exactly(client):
    """Bytes read upstream and sent back equal what really moved; the saving is their ratio."""
    rng = np.random.default_rng(7)
    before = status(client)["counters"]
    assert before["requests"] == 0 and before["bytes_upstream"] == 0 and before["saving"] is None
    sent = read = 0
    for i in range(5):
        data = rng.standard_normal(1000 + 100 * i).astype("<f8").tobytes()
        url = f"http://127.0.0.1:9/b/x{i}"
        STORE[url] = data
        r = client.post("/v2/sum", json={"interface_type": "http", "url": url, "dtype": "float64",
                                         "byte_order": "little", "size": len(data)})
        assert r.status_code == 200, r.text
        got = cbor2.loads(r.content)
        assert np.frombuffer(got["bytes"], "<f8")[0] == pytest.approx(
            np.frombuffer(data, "<f8").sum())
        sent += len(r.content)
        read += len(data)
    bad = client.post("/v2/sum", json={"interface_type": "http", "url": "http://127.0.0.1:9/b/x0",
                                       "dtype": "float17"})
    assert bad.status_code == 400
    sent += len(bad.content)
    client.get("/docs-assets/swagger-ui-bundle.js")  # not reduction traffic
    c = status(client)["counters"]
    assert c["requests"] == 6 and c["requests_by_status"] == {"200": 5, "400": 1}
    assert c["requests_by_api"] == {"v1": 0, "v2": 6, "batch": 0}
    assert c["errors_by_kind"].get("validation") == 1
    assert c["upstream_requests"] == 5
    assert c["bytes_upstream"] == read and c["bytes_sent"] == sent
    assert c["bytes_saved"] == read - sent
    assert c["saving"] == pytest.approx(1 - sent / read)
    assert c["other_requests"] >= 2  # the status reads and the asset


def test_no_secret_or_key_path_is_shown():
    with make_client(tls_cert="/etc/as/server-cert.pem", tls_key="/etc/as/private-key.pem") as c:
        s = status(c)
        page = c.get("/", headers={"accept": BROWSERS[0]}).text
    for text in (str(s), page):
        assert "server-cert.pem" not in text and "private-key.pem" not in text
    assert s["limits"]["tls"] is True
    assert not any(w in k for k in s["limits"] for w in SECRET_WORDS)


def test_page_escapes_what_it_shows():
    evil = "<script>alert(1)</script>.example.org"
    with make_client(allow_upstream=(evil,)) as c:
        page = c.get("/", headers={"accept": BROWSERS[0]}).text
    assert evil not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.example.org" in page


def test_page_is_self_contained_and_its_csp_allows_its_own_script(client):
    r = client.get("/", headers={"accept": BROWSERS[0]})
    page, csp = r.text, r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page)  # nothing from another host
    for tag in ("script", "style"):
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S)
        assert len(bodies) == 1, tag
        digest = base64.b64encode(hashlib.sha256(bodies[0].encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp, tag
    for link in ("/docs", "/redoc", "/metrics", "/healthz"):
        assert f'href="{link}"' in page
