#!/usr/bin/env python3
"""Generated parts of the docs: the server API reference (from the server's OpenAPI schema) and the
benchmark plots. Used as an MkDocs hook (``hooks:`` in mkdocs.yml) and as a script:

    python scripts/docs_hooks.py > api.md     # the API reference as Markdown

A page containing ``<!-- openapi-reference -->`` gets the reference in its place, one containing
``<!-- module-table -->`` the package's modules with their docstrings' first lines, one containing
``<!-- benchmark-plots -->`` every PNG under ``docs/img/benchmarks/``. Generating from the
running code keeps the reference true: a route added to the server appears in the docs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OPENAPI_MARKER = "<!-- openapi-reference -->"
MODULES_MARKER = "<!-- module-table -->"
PLOTS_MARKER = "<!-- benchmark-plots -->"
PLOTS_DIR = Path("img") / "benchmarks"  # relative to docs_dir


def load_schema() -> dict[str, Any]:
    """The OpenAPI document of the reduction server as built by ``create_app()``."""
    from activestorage.server import create_app

    return create_app().openapi()


def _type(schema: dict[str, Any], top: bool = True) -> str:
    """A short human type: ``integer``, ``list of integer``, ``"C" | "F"``. A top-level null
    alternative is left out (the *required* column says whether a field may be absent)."""
    if "anyOf" in schema:
        parts = [_type(s, top) for s in schema["anyOf"] if s.get("type") != "null"]
        if not top and any(s.get("type") == "null" for s in schema["anyOf"]):
            parts.append("null")
        return " or ".join(parts)
    if "enum" in schema:
        return " | ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    t = schema.get("type", "any")
    if t == "array":
        return f"list of {_type(schema.get('items', {}), top=False)}"
    if t == "object" and "properties" not in schema:
        return "object"
    return str(t)


def _limits(schema: dict[str, Any]) -> str:
    bits = []
    for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                      ("minItems", "items >="), ("maxItems", "items <=")):
        if key in schema:
            bits.append(f"{word} {schema[key]}")
    for s in schema.get("anyOf", ()):
        if s.get("type") != "null":
            bits += [b for b in _limits(s).split("; ") if b]
    return "; ".join(bits)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _body_table(schema: dict[str, Any], components: dict[str, Any]) -> list[str]:
    if "$ref" in schema:
        schema = components.get(schema["$ref"].rsplit("/", 1)[-1], {})
    props = schema.get("properties", {})
    if not props:
        return [f"Body: {_type(schema)}.", ""]
    required = set(schema.get("required", ()))
    out = ["| field | type | required | meaning |", "|---|---|---|---|"]
    for name, p in props.items():
        meaning = p.get("description", "")
        lim = _limits(p)
        if lim:
            meaning = f"{meaning} ({lim})" if meaning else lim
        out.append(f"| `{name}` | {_cell(_type(p))} | {'yes' if name in required else 'no'} | "
                   f"{_cell(meaning)} |")
    return out + [""]


def render(schema: dict[str, Any]) -> str:
    """Markdown for every documented route: parameters, body fields, responses."""
    components = schema.get("components", {}).get("schemas", {})
    info = schema.get("info", {})
    lines = [f"Generated from the OpenAPI {schema.get('openapi', '')} schema of "
             f"*{info.get('title', 'the server')}* {info.get('version', '')}.", ""]
    if info.get("description"):
        lines += [info["description"], ""]
    for path, methods in schema.get("paths", {}).items():
        for method, op in methods.items():
            lines += [f"### `{method.upper()} {path}`", ""]
            text = op.get("description") or op.get("summary")  # FastAPI's summary is the name
            if text:
                lines += [text, ""]
            params = op.get("parameters", [])
            if params:
                lines += ["| parameter | in | type | required |", "|---|---|---|---|"]
                lines += [f"| `{p['name']}` | {p.get('in', '')} | {_cell(_type(p.get('schema', {})))} "
                          f"| {'yes' if p.get('required') else 'no'} |" for p in params]
                lines.append("")
            body = op.get("requestBody", {}).get("content", {})
            for ctype, content in body.items():
                lines += [f"Request body (`{ctype}`):", ""]
                lines += _body_table(content.get("schema", {}), components)
            responses = op.get("responses", {})
            if responses:
                lines += ["| status | meaning |", "|---|---|"]
                lines += [f"| {code} | {_cell(r.get('description', ''))} |"
                          for code, r in responses.items()]
                lines.append("")
    return "\n".join(lines)


def _openapi_section() -> str:
    try:
        return render(load_schema())
    except ImportError as exc:  # the server extra is not installed in this environment
        return ("!!! note\n    The API reference is generated from the server's OpenAPI schema, "
                f"which needs the server extra (`pip install -e \".[server]\"`): {exc}.")


def _plots_section(docs_dir: Path) -> str:
    pngs = sorted((docs_dir / PLOTS_DIR).glob("*.png"))
    if not pngs:
        return ("*No benchmark plots yet: they appear here when the benchmark scripts have written "
                f"PNGs to `docs/{PLOTS_DIR.as_posix()}/` (planned).*")
    return "\n\n".join(f"![{p.stem}]({(PLOTS_DIR / p.name).as_posix()})" for p in pngs)


def module_table(package_dir: Path) -> str:
    """A table of every module of the package with the first line of its docstring."""
    import ast

    rows = ["| module | what it is |", "|---|---|"]
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        try:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        except SyntaxError:
            doc = ""
        first = " ".join(doc.strip().split("\n\n")[0].split()) if doc else "(no docstring)"
        rel = path.relative_to(package_dir.parent).as_posix()
        rows.append(f"| `{rel}` | {_cell(first.replace(':class:', '').replace(':func:', ''))} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- MkDocs hook events

def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **_: Any) -> str:
    if OPENAPI_MARKER in markdown:
        markdown = markdown.replace(OPENAPI_MARKER, _openapi_section())
    if MODULES_MARKER in markdown:
        root = Path(config["config_file_path"]).parent
        markdown = markdown.replace(MODULES_MARKER, module_table(root / "activestorage"))
    if PLOTS_MARKER in markdown:
        markdown = markdown.replace(PLOTS_MARKER, _plots_section(Path(config["docs_dir"])))
    return markdown


def main(argv: list[str]) -> int:
    out = render(load_schema())
    if argv:
        Path(argv[0]).write_text(out + "\n")
    else:
        sys.stdout.write(out + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
