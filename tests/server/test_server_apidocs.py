"""/docs, /redoc and /openapi.json in-process: assets served locally, every response documented,
and the documented examples are what the server really says."""

from __future__ import annotations

import re

import jsonschema
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from activestorage.request import ChunkRequest
from activestorage.server import apidocs
from activestorage.server.app import create_app
from activestorage.server.settings import Settings


@pytest.fixture(scope="module")
def app():
    return create_app(Settings(max_body_bytes=1 << 20))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def spec(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


def _refs(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', page)


@pytest.mark.parametrize("path,expect", [("/docs", "swagger-ui-bundle.js"),
                                         ("/redoc", "redoc.standalone.js")])
def test_doc_pages_load_only_local_assets(client, path, expect):
    r = client.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    refs = _refs(r.text)
    assert any(ref.endswith(expect) for ref in refs), refs
    assert "fonts.googleapis" not in r.text and "cdn." not in r.text
    for ref in refs:
        assert ref.startswith("/") and not ref.startswith("//"), ref  # this server only
        asset = client.get(ref)
        assert asset.status_code == 200, ref
        assert len(asset.content) > 1000, ref
    assert "/openapi.json" in r.text


def test_swagger_ui_does_not_ask_the_online_validator(client):
    assert '"validatorUrl": null' in client.get("/docs").text


def test_every_route_is_in_the_schema(app, spec):
    documented = {(p, m.upper()) for p, ms in spec["paths"].items() for m in ms}
    for route in app.routes:
        if isinstance(route, APIRoute) and route.include_in_schema:
            for method in route.methods:
                assert (route.path, method) in documented, (route.path, method)
    assert {"/", "/healthz", "/capabilities", "/metrics", "/v1/{operation}/",
            "/v2/{operation}", "/v2/batch/{operation}"} <= set(spec["paths"])


def test_every_reduction_route_documents_each_error_with_an_example(spec):
    error_schema = spec["components"]["schemas"]["Error"]
    posts = [(p, ms["post"]) for p, ms in spec["paths"].items() if "post" in ms]
    assert len(posts) == 3
    for path, op in posts:
        responses = op["responses"]
        assert "422" not in responses  # we never answer FastAPI's validation shape
        assert "200" in responses and responses["200"]["content"]
        for status in (400, 401, 403, 404, 408, 409, 413, 500, 502, 503, 504):
            media = responses[str(status)]["content"]["application/json"]
            jsonschema.validate(media["example"], error_schema)
            assert responses[str(status)]["description"]
        media = op["requestBody"]["content"]["application/json"]
        jsonschema.validate(media["example"], media["schema"])  # the example is valid


def test_get_routes_have_examples(spec):
    for path in ("/", "/healthz", "/capabilities", "/metrics"):
        content = spec["paths"][path]["get"]["responses"]["200"]["content"]
        assert any("example" in m for m in content.values()), path


def test_example_bodies_pass_the_servers_own_validation():
    ChunkRequest.from_wire(apidocs.V2_EXAMPLE, max_elements=1 << 30)
    ChunkRequest.from_wire(apidocs.V1_EXAMPLE, max_elements=1 << 30)
    for body in apidocs.BATCH_EXAMPLE["requests"]:
        ChunkRequest.from_wire(body, max_elements=1 << 30)


def _example(spec, path: str, status: int) -> str:
    media = spec["paths"][path]["post"]["responses"][str(status)]["content"]["application/json"]
    return media["example"]["error"]["message"]


def test_documented_error_examples_are_the_servers_words(client, spec):
    """403/404/400/413 examples are exactly what this server answers to matching requests."""
    r = client.post("/v2/sum", json=apidocs.V2_EXAMPLE)  # s3.example.org is not allowed
    assert r.status_code == 403 and r.json()["error"]["message"] == _example(spec, "/v2/{operation}", 403)
    r = client.post("/v2/mean", json=apidocs.V2_EXAMPLE)
    assert r.status_code == 404 and r.json()["error"]["message"] == _example(spec, "/v2/{operation}", 404)
    stride0 = dict(apidocs.V2_EXAMPLE, url="http://127.0.0.1:9/bucket/tas.nc",
                   selection=[[0, 10, 0], [0, 50, 2]])
    r = client.post("/v2/sum", json=stride0)
    assert r.status_code == 400 and r.json()["error"]["message"] == _example(spec, "/v2/{operation}", 400)
    r = client.post("/v2/sum", content=b" " * 2_000_000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["message"] == _example(spec, "/v2/{operation}", 413)
