"""The OpenAPI description of the reduction routes cannot drift from what the server accepts:
every closed set it lists is request.py's, every listed value passes the server's own validation,
and each reduction route is registered once (and documented once)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from hypothesis import given, settings, strategies as st
from starlette.routing import Route

from activestorage.errors import RequestValidationError
from activestorage.request import (COMPRESSION_IDS, FILTER_IDS, MISSING_KEYS, OPERATIONS,
                                   WIRE_DTYPES, ChunkRequest)
from activestorage.server import schema
from activestorage.server.app import create_app
from activestorage.server.settings import Settings

PACKAGE = Path(__file__).resolve().parents[2] / "activestorage"


@pytest.fixture(scope="module")
def app():
    return create_app(Settings())


@pytest.fixture(scope="module")
def doc(app):
    return app.openapi()


def _nonnull(prop: dict) -> dict:
    """A property's schema without its ``null`` alternative."""
    alts = [s for s in prop.get("anyOf", [prop]) if s.get("type") != "null"]
    assert len(alts) == 1, prop
    return alts[0]


def _bodies(doc) -> dict[str, dict]:
    """Each reduction body's schema (JSON and CBOR, the batch's item too), by a readable name."""
    out = {}
    for route in schema.ROUTES:
        content = doc["paths"][route.path]["post"]["requestBody"]["content"]
        for ctype, media in content.items():
            body = media["schema"]
            if route.api == "batch":
                body = body["properties"]["requests"]["items"]
            out[f"{route.path} {ctype}"] = body
    return out


def test_the_documented_closed_sets_are_request_py_constants(doc):
    bodies = _bodies(doc)
    assert len(bodies) == 4  # v1, v2 and the batch (JSON and CBOR)
    for name, body in bodies.items():
        props = body["properties"]
        assert tuple(props["dtype"]["enum"]) == WIRE_DTYPES, name
        compression = _nonnull(props["compression"])
        assert tuple(compression["properties"]["id"]["enum"]) == COMPRESSION_IDS, name
        filters = _nonnull(props["filters"])["items"]
        assert tuple(filters["properties"]["id"]["enum"]) == FILTER_IDS, name
        missing = _nonnull(props["missing"])
        assert tuple(missing["properties"]) == MISSING_KEYS, name
        assert "$ref" not in str(body), name  # each body's schema stands alone


def test_the_documented_operations_are_the_servers(app, doc):
    for route in schema.ROUTES:
        text = doc["paths"][route.path]["post"]["description"]
        ops = ("count", "min", "max", "sum", "select") if route.api == "v1" else OPERATIONS
        assert f"operation: {', '.join(ops)}" in text
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        assert tuple(c.get("/capabilities").json()["operations"]) == OPERATIONS


def _minimal(**extra) -> dict:
    return {"dtype": "float32", "shape": [4, 4], **extra}


@pytest.mark.parametrize("dtype", WIRE_DTYPES)
def test_every_documented_dtype_is_accepted(dtype):
    ChunkRequest.from_wire(_minimal(dtype=dtype))


@pytest.mark.parametrize("cid", COMPRESSION_IDS)
def test_every_documented_compression_is_accepted(cid):
    assert ChunkRequest.from_wire(_minimal(compression={"id": cid})).compression["id"] == cid


@pytest.mark.parametrize("fid", FILTER_IDS)
def test_every_documented_filter_is_accepted(fid):
    assert len(ChunkRequest.from_wire(_minimal(filters=[{"id": fid}])).filters) == 1


@pytest.mark.parametrize("key", MISSING_KEYS)
def test_every_documented_missing_key_is_accepted(key):
    value = [0.0, 1.0] if key in ("missing_values", "valid_range") else 0.0
    assert ChunkRequest.from_wire(_minimal(missing={key: value})).missing is not None


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=12))
def test_an_id_outside_the_documented_sets_is_refused(word):
    """What the document leaves out, the server refuses (naming the field)."""
    if word not in COMPRESSION_IDS:
        with pytest.raises(RequestValidationError, match="compression"):
            ChunkRequest.from_wire(_minimal(compression={"id": word}))
    if word not in FILTER_IDS:
        with pytest.raises(RequestValidationError, match=r"filters\[0\]"):
            ChunkRequest.from_wire(_minimal(filters=[{"id": word}]))
    if word not in MISSING_KEYS:
        with pytest.raises(RequestValidationError, match="missing"):
            ChunkRequest.from_wire(_minimal(missing={word: 0.0}))


def test_each_reduction_route_is_registered_once(app, doc):
    posts = [(r.path, type(r)) for r in app.routes
             if isinstance(r, Route) and "POST" in (r.methods or ())]
    assert not [p for p, kind in posts if kind is APIRoute]  # no FastAPI twin for the docs
    for route in schema.ROUTES:
        other = route.path[:-1] if route.path.endswith("/") else route.path + "/"
        assert [p for p, _ in posts].count(route.path) == 1, route.path
        assert [p for p, _ in posts].count(other) == 1, other
    documented = [p for p, ms in doc["paths"].items() if "post" in ms]
    assert sorted(documented) == sorted(r.path for r in schema.ROUTES)


def _imports(path: Path, package: str) -> set[str]:
    """The ``activestorage.server`` modules ``path`` imports (anywhere in it, lazily too, but
    not under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = f"{package}.{node.module}" if node.module else package
            elif node.level == 0 and node.module:
                base = node.module
            else:
                continue
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_no_import_circles_among_the_server_modules():
    package = "activestorage.server"
    files = {f"{package}.{p.stem}": p for p in (PACKAGE / "server").glob("*.py")
             if p.stem not in ("__init__", "__main__")}
    graph = {m: _imports(p, package) & set(files) for m, p in files.items()}
    assert "activestorage.server.app" in graph["activestorage.server.serve"]  # the check sees lazy imports

    def visit(m: str, stack: list[str]) -> None:
        for n in graph[m]:
            assert n not in stack, " -> ".join(stack[stack.index(n):] + [m, n])
            visit(n, stack + [m])

    for m in graph:
        visit(m, [])
