"""API documentation that works without internet: /docs and /redoc, and a complete OpenAPI document.

Servers beside institutional object stores often have no route to public CDNs, where FastAPI's
default /docs and /redoc pages load Swagger UI, ReDoc, fonts and a favicon from, so those pages
render blank there. ``fastapi-offline`` ships those assets inside the installed package; we serve
them from :data:`ASSETS_URL` (no Google fonts, Swagger UI's online validator off).

The OpenAPI document FastAPI derives from the routes lacks what operators and client authors
need most: every error a route can answer, and examples. :func:`complete_openapi` adds them
(responses with ``{"error": {"message", "caused_by"}}`` examples, request body examples), so
``/openapi.json``, ``/docs``, ``/redoc`` and the generated docs page say the same thing.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html
from fastapi_offline import FastAPIOffline
from starlette.responses import HTMLResponse

from ..operations import WIRE_OPERATIONS

#: ``extra_paths`` of :func:`offline_app`: the OpenAPI paths of routes FastAPI does not describe
PathsFactory = Callable[[], dict[str, Any]]

#: where the Swagger UI / ReDoc JavaScript, CSS and favicon are served from.
ASSETS_URL = "/docs-assets"
FAVICON_URL = ASSETS_URL + "/favicon.png"

#: Swagger UI options: never ask the public online validator about our schema.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None, "tryItOutEnabled": False,
                         "defaultModelsExpandDepth": 0}


#: ReDoc's page may load from this server only. ReDoc's sidebar shows its maker's logo from
#: their CDN; refused here, the image removes itself (ReDoc drops it on a load error).
REDOC_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
             "font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
             "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def offline_app(extra_paths: PathsFactory | None = None, **kwargs: Any) -> FastAPI:
    """A :class:`FastAPI` whose /docs and /redoc load everything from this server.

    ``extra_paths()``: OpenAPI paths of routes FastAPI does not describe itself
    (plain Starlette routes), put first in the document."""
    kwargs.setdefault("swagger_ui_parameters", dict(SWAGGER_UI_PARAMETERS))
    redoc_url = kwargs.pop("redoc_url", "/redoc")
    app = FastAPIOffline(static_url=ASSETS_URL, redoc_url=None, **kwargs)
    if redoc_url:
        _add_redoc(app, redoc_url)
    install_openapi(app, extra_paths)
    return app


def _add_redoc(app: FastAPI, url: str) -> None:
    """/redoc from the installed assets, without Google fonts, under :data:`REDOC_CSP`."""

    @app.get(url, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(openapi_url=f"{root}{app.openapi_url}",
                              title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{FAVICON_URL}", with_google_fonts=False)
        return HTMLResponse(page.body, headers={"content-security-policy": REDOC_CSP})


def install_openapi(app: FastAPI, extra_paths: PathsFactory | None = None) -> None:
    """Make ``app.openapi()`` (and so /openapi.json) return the completed document."""
    base: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if not app.openapi_schema:
            doc = copy.deepcopy(base())
            if extra_paths is not None:
                doc["paths"] = {**extra_paths(), **doc.get("paths", {})}
            app.openapi_schema = complete_openapi(doc)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# ----------------------------------------------------------------------------- the additions

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error", "type": "object", "required": ["error"],
    "description": "Every error: a message naming the field or store at fault, and optionally "
                   "the chain of lower-level causes (root cause last).",
    "properties": {"error": {
        "type": "object", "required": ["message"],
        "properties": {"message": {"type": "string"},
                       "caused_by": {"type": "array", "items": {"type": "string"}}}}}}

_ALLOW = ("upstream host 's3.example.org' is not on this server's allow-list (start the server "
          "with --allow-upstream HOST to permit it; '*' never covers loopback, private, "
          "link-local or metadata addresses)")

#: status -> (meaning, example message, example causes) for the reduction routes.
REDUCTION_ERRORS: dict[int, tuple[str, str, list[str]]] = {
    400: ("Bad request: malformed JSON/CBOR, a missing or invalid field (the message names it), "
          "data that does not decode, or an object/bucket that does not exist upstream.",
          "selection[0]: stride must not be zero", []),
    401: ("The upstream store refused the credentials (the message carries the store's words).",
          "store refused the credentials for s3.example.org/bucket/tas.nc",
          ["Access Denied"]),
    403: ("The upstream host is not on this server's allow-list (--allow-upstream).", _ALLOW, []),
    404: ("Unknown path or operation.",
          f"unknown operation 'mean'; expected one of {', '.join(WIRE_OPERATIONS)}", []),
    408: ("The client did not send the request body within --client-timeout.",
          "request body not received within 10.0 s (--client-timeout)", []),
    409: ("The object changed: its ETag or version is not the one the request pinned "
          "(extension fields etag, version_id).",
          "object changed since manifest was written: s3.example.org/bucket/tas.nc", []),
    413: ("Too large: the body exceeds --max-body-bytes, a batch exceeds --max-batch, or one "
          "request alone exceeds --max-bytes-in-flight.",
          "request body of 2000000 bytes exceeds 1048576 bytes (--max-body-bytes)", []),
    500: ("Internal error (a bug: reported without a traceback, logged on the server).",
          "internal server error (RuntimeError)", []),
    502: ("The upstream store is unreachable or failed.",
          "could not read https://s3.example.org/bucket/tas.nc: store https://s3.example.org is "
          "unreachable or failed (ClientConnectorError)", ["Connection refused"]),
    503: ("Busy: the memory budget (--max-bytes-in-flight) stayed full for "
          "--memory-wait-seconds; retry after the Retry-After header's seconds.",
          "server busy: 1073741824 bytes in flight; retry later", []),
    504: ("The upstream store timed out.",
          "store timed out serving s3.example.org/bucket/tas.nc", ["timeout"]),
}

_NUMERIC_EXAMPLE: dict[str, Any] = {
    "dtype": "float32", "byte_order": "little", "offset": 4096, "size": 4000,
    "shape": [10, 100], "order": "C", "selection": [[0, 10, 1], [0, 50, 2]],
    "compression": {"id": "zlib"}, "filters": [{"id": "shuffle", "element_size": 4}],
    "missing": {"missing_value": 1e20}}
V2_EXAMPLE: dict[str, Any] = {"interface_type": "s3",
                              "url": "https://s3.example.org/bucket/tas.nc", **_NUMERIC_EXAMPLE}
V1_EXAMPLE: dict[str, Any] = {"source": "https://s3.example.org", "bucket": "bucket",
                              "object": "tas.nc", **_NUMERIC_EXAMPLE}
BATCH_EXAMPLE: dict[str, Any] = {"requests": [V2_EXAMPLE, dict(V2_EXAMPLE, offset=8096)],
                                 "fold": [0, 0]}

_V2_RESULT_SCHEMA: dict[str, Any] = {
    "type": "object", "title": "V2Result",
    "description": "CBOR map. bytes: the result values (C order); count: elements that had a "
                   "value, per result element.",
    "properties": {"bytes": {"type": "string", "format": "binary"},
                   "dtype": {"type": "string"}, "shape": {"type": "array",
                                                          "items": {"type": "integer"}},
                   "count": {"type": "array", "items": {"type": "integer"}},
                   "byte_order": {"type": "string", "enum": ["little", "big"]},
                   "shape_as_bytes": {"type": "string", "format": "binary"},
                   "count_as_bytes": {"type": "string", "format": "binary"}}}
_V2_RESULT_EXAMPLE = {"bytes": "<4 bytes>", "dtype": "float32", "shape": [],
                      "count": [250], "byte_order": "little"}


def _error_response(status: int, meaning: str, message: str, causes: list[str]) -> dict[str, Any]:
    err: dict[str, Any] = {"message": message}
    if causes:
        err["caused_by"] = causes
    resp: dict[str, Any] = {"description": meaning, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}, "example": {"error": err}}}}
    if status == 503:
        resp["headers"] = {"Retry-After": {"description": "seconds to wait",
                                           "schema": {"type": "integer"}}}
    return resp


def _ok_response(path: str) -> dict[str, Any]:
    if path.startswith("/v1/"):
        headers = {f"x-activestorage-{h}": {"description": d, "schema": {"type": "string"}}
                   for h, d in (("dtype", "result dtype, e.g. float32"),
                                ("shape", "result shape as JSON, e.g. [] or [10]"),
                                ("count", "elements that had a value, as JSON, e.g. [250]"),
                                ("byte-order", "little or big"))}
        return {"description": "The reduced values as raw bytes; dtype, shape, count and byte "
                               "order in the x-activestorage-* headers.",
                "headers": headers,
                "content": {"application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"}}}}
    if path.startswith("/v2/batch/"):
        return {"description": "CBOR map {\"results\": [...]}: one V2Result per request, in "
                               "request order (null for requests folded into an earlier one).",
                "content": {"application/cbor": {
                    "schema": {"type": "object", "properties": {"results": {
                        "type": "array", "items": _V2_RESULT_SCHEMA}}},
                    "example": {"results": [_V2_RESULT_EXAMPLE, None]}}}}
    return {"description": "CBOR map with the reduced values and counts.",
            "content": {"application/cbor": {"schema": _V2_RESULT_SCHEMA,
                                             "example": _V2_RESULT_EXAMPLE}}}


def _body_example(path: str) -> dict[str, Any]:
    if path.startswith("/v1/"):
        return V1_EXAMPLE
    if path.startswith("/v2/batch/"):
        return BATCH_EXAMPLE
    return V2_EXAMPLE


#: examples for the GET routes' 200 answers, by path.
GET_EXAMPLES: dict[str, tuple[str, Any]] = {
    "/healthz": ("application/json", {"status": "ok", "version": "0.1.0"}),
    "/capabilities": ("application/json", {
        "name": "activestorage", "version": "0.1.0", "api": ["v1", "v2"], "batch": True,
        "max_batch": 1024, "fold": True, "operations": ["count", "min", "max", "sum", "select"],
        "options": ["option_wide_sum"]}),
    "/metrics": ("text/plain", "# HELP activestorage_requests_total HTTP requests served\n"
                               "activestorage_requests_total{api=\"v2\",operation=\"sum\","
                               "status=\"200\"} 42.0\n"),
}


def complete_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every route's errors and examples added (mutated and returned)."""
    schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path, methods in schema.get("paths", {}).items():
        for method, op in methods.items():
            responses = op.setdefault("responses", {})
            if method == "post" and path.startswith(("/v1/", "/v2/")):
                responses.pop("422", None)  # FastAPI's shape; we never answer it
                responses["200"] = _ok_response(path)
                for status, (meaning, message, causes) in REDUCTION_ERRORS.items():
                    responses[str(status)] = _error_response(status, meaning, message, causes)
                # (on the JSON body only: a CBOR example would be shown as JSON anyway, and
                # fuzzers that use examples cannot serialise CBOR)
                json_body = op.get("requestBody", {}).get("content", {}).get("application/json")
                if json_body is not None:
                    json_body["example"] = _body_example(path)
                for p in op.get("parameters", []):
                    if p.get("name") == "operation":
                        p["description"] = "count, min, max, sum or select"
                        p["example"] = "sum"
            elif method == "get":
                if path in GET_EXAMPLES:
                    ctype, example = GET_EXAMPLES[path]
                    ok = responses.setdefault("200", {"description": "OK"})
                    ok["content"] = {ctype: {**ok.get("content", {}).get(ctype, {}),
                                             "example": example}}
    return schema
