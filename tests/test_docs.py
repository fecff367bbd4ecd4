"""The docs build with ``mkdocs build --strict``, and the parts that describe code stay true."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT / "scripts"))
import docs_hooks  # noqa: E402

HAS_SERVER = importlib.util.find_spec("fastapi") is not None


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WARNING" not in r.stderr, r.stderr
    return out


def test_every_page_is_built_and_in_the_nav(site):
    pages = sorted(p.relative_to(DOCS) for p in DOCS.rglob("*.md"))
    assert len(pages) >= 18
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in pages:
        assert page.as_posix() in nav, f"{page} is not in the mkdocs.yml nav"
        html = site / page.with_suffix("") / "index.html" if page.stem != "index" else \
            site / page.parent / "index.html"
        assert html.exists(), html


def test_generated_sections_are_filled(site):
    api = (site / "server" / "api" / "index.html").read_text()
    arch = (site / "architecture" / "index.html").read_text()
    for marker in ("openapi-reference", "module-table", "benchmark-plots"):
        assert marker not in api + arch
    assert "activestorage/kernel.py" in arch and "activestorage/cli.py" in arch
    if HAS_SERVER:
        for route in ("/v1/{operation}/", "/v2/{operation}", "/healthz", "/metrics"):
            assert route in api, route
        assert "<code>dtype</code>" in api and "selection" in api


@pytest.mark.skipif(not HAS_SERVER, reason="the server extra (fastapi) is not installed")
def test_openapi_render_covers_every_route_and_field():
    schema = docs_hooks.load_schema()
    md = docs_hooks.render(schema)
    for path, methods in schema["paths"].items():
        for method in methods:
            assert f"`{method.upper()} {path}`" in md
    v2 = schema["paths"]["/v2/{operation}"]["post"]["requestBody"]["content"]
    for ctype in v2.values():
        for field in ctype["schema"].get("properties", {}):
            assert f"| `{field}` |" in md, field


def test_module_table_lists_every_module():
    table = docs_hooks.module_table(ROOT / "activestorage")
    for path in (ROOT / "activestorage").rglob("*.py"):
        if "__pycache__" not in path.parts:
            assert f"`{path.relative_to(ROOT).as_posix()}`" in table


@pytest.mark.skipif(not HAS_SERVER, reason="the server extra (fastapi) is not installed")
def test_configuration_page_documents_every_server_flag():
    from activestorage.server.settings import build_parser

    page = (DOCS / "server" / "configuration.md").read_text()
    for action in build_parser({})._actions:
        for opt in action.option_strings:
            if opt.startswith("--") and opt != "--help":
                assert f"`{opt}`" in page, f"{opt} is not documented in server/configuration.md"


@pytest.mark.skipif(not HAS_SERVER, reason="the server extra (fastapi) is not installed")
def test_metrics_page_names_real_metrics():
    from fastapi.testclient import TestClient

    from activestorage.server import create_app

    with TestClient(create_app()) as client:
        client.get("/healthz")
        text = client.get("/metrics").text
    exposed = {n for n in re.findall(r"^# TYPE (\S+)", text, flags=re.M)
               if not n.endswith("_created")}  # prometheus_client's per-series timestamps
    documented = set(re.findall(r"`(activestorage_[a-z_]+)`",
                                (DOCS / "server" / "metrics.md").read_text()))
    assert documented == exposed, (documented - exposed, exposed - documented)


def test_cli_page_documents_every_subcommand_and_option():
    from activestorage.cli import build_parser

    page = (DOCS / "cli.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        assert f"## {name}" in page, name
        for action in p._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt not in ("--help", "--debug", "--verbose"):
                    assert opt in page, f"{name} {opt} is not documented in cli.md"


def test_docs_links_are_relative_and_exist():
    for page in DOCS.rglob("*.md"):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("img/benchmarks/"):
                continue
            assert (page.parent / target).resolve().exists(), f"{page.name} links to missing {target}"
