"""The reduction server's HTTP layer: routes, middleware, error handlers and :func:`create_app`.

A request goes: bounded body read (:func:`read_body`) -> JSON/CBOR parse and validation into items
(:mod:`.wire`) -> the work (:mod:`.service`: memory budget, range GETs, the kernel in a thread
pool, folding) -> v1 raw bytes with ``x-activestorage-*`` headers, or v2 CBOR, streamed from the
result arrays by :class:`.responses.BudgetedResponse`, which releases the memory reservation once
the answer is written or the client has gone. Every error leaves as
``{"error": {"message", "caused_by"}}`` with the spec's status; nothing else (no FastAPI 422
shape, no tracebacks).

The reduction routes are registered once each, from :data:`.schema.ROUTES`, as plain Starlette
routes (the hot paths skip FastAPI's per-request dependency solving, ~15% of a 64 KiB request's
CPU); their OpenAPI description is generated from the same table by :mod:`.schema`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

from fastapi import FastAPI, Request
from starlette.requests import ClientDisconnect
from fastapi.exceptions import RequestValidationError as FastAPIValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from .. import __version__
from ..errors import (ActiveStorageError, DecodeError, RequestValidationError, StorageError,
                      UnsupportedError)
from ..request import OPERATIONS
from . import apidocs, schema
from .limits import LimitError
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .responses import BudgetedResponse
from .service import Answer, Service
from .settings import Settings
from .status import install as install_status_page
from .upstream import parse_basic_auth
from .wire import decode_body, served_operations

log = logging.getLogger("activestorage.server")
access_log = logging.getLogger("activestorage.server.access")


# ------------------------------------------------------------------------------------- errors

def status_of(exc: BaseException) -> int:
    if isinstance(exc, (StorageError, LimitError)):
        return exc.status
    if isinstance(exc, (RequestValidationError, UnsupportedError, DecodeError)):
        return 400
    if isinstance(exc, ActiveStorageError):
        return 400
    return 500


def _printable(text: str) -> str:
    """``text`` safe to encode as UTF-8 JSON (an unpaired surrogate becomes an escape)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(status: int, message: str, caused_by: Sequence[str] = ()) -> JSONResponse:
    err: dict[str, Any] = {"message": _printable(message)}
    if caused_by:
        err["caused_by"] = [_printable(c) for c in caused_by]
    headers = {"retry-after": "1"} if status == 503 else None
    return JSONResponse({"error": err}, status_code=status, headers=headers)


def _causes(exc: BaseException) -> list[str]:
    causes = list(getattr(exc, "causes", []) or [])
    c = exc.__cause__
    while c is not None and len(causes) < 8:
        text = str(c)
        if text and text not in causes and text not in str(exc):
            causes.append(text)
        c = c.__cause__
    return causes


def check_operation(operation: str, served: Sequence[str] = OPERATIONS) -> str:
    """``operation`` if this route serves it, else a 404 listing those it does."""
    if operation not in served:
        raise StarletteHTTPException(
            404, f"unknown operation {operation!r}; expected one of {', '.join(served)}")
    return operation


async def read_body(request: Request, settings: Settings) -> bytes:
    """The body, at most ``max_body_bytes`` (413), within ``client_timeout`` seconds (408).

    Read from the ASGI messages themselves (what Starlette's ``request.stream()`` does, without
    its generator and the task ``asyncio.wait_for`` made: ~4 % of a 64 KiB request's CPU)."""
    limit = settings.max_body_bytes
    receive = request.receive
    parts: list[bytes] = []
    n = 0
    try:
        async with asyncio.timeout(settings.client_timeout):
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "http.request":
                    part = message.get("body", b"")
                    n += len(part)
                    if n > limit:
                        raise LimitError(f"request body exceeds {limit} bytes (--max-body-bytes)",
                                         413)
                    if part:
                        parts.append(part)
                    if not message.get("more_body", False):
                        break
                elif kind == "http.disconnect":
                    raise ClientDisconnect()
    except TimeoutError:
        raise LimitError(f"request body not received within {settings.client_timeout} s "
                         "(--client-timeout)", 408) from None
    return parts[0] if len(parts) == 1 else b"".join(parts)


# ---------------------------------------------------------------------------- ASGI front door

def _labels(path: str) -> tuple[str, str]:
    parts = path.strip("/").split("/")
    if parts[0] in ("v1", "v2") and len(parts) >= 2:
        api, op = parts[0], parts[1]
        if api == "v2" and op == "batch":
            api, op = "batch", parts[2] if len(parts) > 2 else ""
        return api, op if op in OPERATIONS else "other"
    return "other", "-"


class FrontDoor:
    """Pure ASGI middleware: refuse oversized bodies early, time, count and log each request.

    The labelled metrics each request updates are looked up once per label set (prometheus'
    ``labels()`` takes a lock and builds a key each call) and the labels once per path."""

    def __init__(self, app: Any, server: Service) -> None:
        self.app = app
        self.server = server
        self._paths: dict[str, tuple[str, str]] = {}
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    def _labels(self, path: str) -> tuple[str, str]:
        labels = self._paths.get(path)
        if labels is None:
            labels = _labels(path)
            if len(self._paths) >= 1024:  # any path may come: keep the most recent ones
                self._paths.clear()
            self._paths[path] = labels
        return labels

    def _count(self, api: str, op: str, status: int, seconds: float) -> None:
        m = self.server.metrics
        counter = self._counted.get((api, op, status))
        if counter is None:  # a few label sets: api x operation x status
            counter = self._counted[(api, op, status)] = m.requests.labels(api, op, str(status))
        counter.inc()
        if api != "other":
            timer = self._timed.get((api, op))
            if timer is None:
                timer = self._timed[(api, op)] = m.latency.labels(api, op)
            timer.observe(seconds)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        state = {"status": 500, "bytes": 0}
        m = self.server.metrics

        async def send_counted(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                state["status"] = msg["status"]
            elif msg["type"] == "http.response.body":
                state["bytes"] += len(msg.get("body", b""))
            await send(msg)

        try:
            limit = self.server.settings.max_body_bytes
            for k, v in scope.get("headers", ()):
                if k == b"content-length" and v.isdigit() and int(v) > limit:
                    resp = error_response(413, f"request body of {int(v)} bytes exceeds "
                                          f"{limit} bytes (--max-body-bytes)")
                    m.errors.labels("limit").inc()
                    await resp(scope, receive, send_counted)
                    return
            await self.app(scope, receive, send_counted)
        finally:
            dt = time.perf_counter() - t0
            api, op = self._labels(scope.get("path", ""))
            self._count(api, op, state["status"], dt)
            if api != "other":
                m.reduction_bytes_out.inc(state["bytes"])
            m.bytes_out.inc(state["bytes"])
            m.in_flight.set(self.server.budget.used)
            if self.server.settings.access_log and access_log.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("-", 0)
                access_log.info(json.dumps({
                    "client": f"{client[0]}:{client[1]}", "method": scope.get("method"),
                    "path": scope.get("path"), "status": state["status"],
                    "bytes_out": state["bytes"], "ms": round(dt * 1000, 3)}))


class ServerApp(FastAPI):
    """The app: POSTs to the reduction routes go straight to :class:`FrontDoor` and their
    endpoint (:attr:`fast`), past FastAPI's and Starlette's per-request layers (telemetry
    checks, error and body-limit middleware, router, exit stack: ~15 % of a 64 KiB request's
    CPU in a py-spy profile); everything else takes the full stack."""

    #: the reduction routes and the ASGI app serving a request matched by one of them
    fast: tuple[list[Route], Callable[..., Awaitable[None]]] | None = None
    #: (root path, path) -> the matched route's endpoint and path parameters (or None: no match)
    _matched: dict[tuple[str, str], tuple[Any, dict[str, Any]] | None] | None = None

    def _match(self, scope: dict[str, Any], routes: list[Route]
               ) -> tuple[Any, dict[str, Any]] | None:
        """The endpoint and path parameters of the reduction route matching ``scope``'s path,
        remembered per path (clients send a few paths again and again)."""
        if self._matched is None:
            self._matched = {}
        key = (scope.get("root_path", ""), scope["path"])
        if key in self._matched:
            return self._matched[key]
        found = None
        for route in routes:
            match, child = route.matches({**scope, "path_params": {}})
            if match is Match.FULL:
                found = (child["endpoint"], child["path_params"])
                break
        if len(self._matched) >= 1024:  # any path may come: keep the most recent ones
            self._matched.clear()
        self._matched[key] = found
        return found

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.fast is not None and scope["type"] == "http" and scope["method"] == "POST":
            routes, serve = self.fast
            found = self._match(scope, routes)
            if found is not None:
                endpoint, params = found
                scope["endpoint"] = endpoint
                scope["path_params"] = {**scope.get("path_params", {}), **params}
                scope["app"] = self
                await serve(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _handled(app: FastAPI) -> Callable[..., Awaitable[Response]]:
    """An error as the app's exception handlers answer it (the nearest registered class)."""
    async def handle(request: Request, exc: Exception) -> Response:
        for cls in type(exc).__mro__:
            handler = app.exception_handlers.get(cls)
            if handler is not None:
                return await handler(request, exc)
        raise exc
    return handle


def _fast_path(app: FastAPI, routes: list[Route]) -> Callable[..., Awaitable[None]]:
    """The ASGI app of a matched reduction route: its endpoint, errors through the app's
    exception handlers (as the full stack would answer them)."""
    handle = _handled(app)

    async def serve(scope: dict[str, Any], receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        try:
            response = await scope["endpoint"](request)
        except Exception as exc:  # noqa: BLE001 - every error is answered as JSON
            response = await handle(request, exc)
        await response(scope, receive, send)

    return serve


def _kind(exc: BaseException) -> str:
    if isinstance(exc, RequestValidationError):
        return "validation"
    if isinstance(exc, LimitError):
        return "limit"
    if isinstance(exc, StorageError):
        return "upstream"
    if isinstance(exc, (DecodeError, UnsupportedError)):
        return "decode"
    return "internal"


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app. All configuration comes in through ``settings`` (no globals)."""
    settings = settings or Settings()
    server = Service(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        log.info("activestorage server %s ready; upstream allow-list: %s", __version__,
                 ", ".join(settings.allow_upstream))
        # lifespan state: read by the connection protocol for its request-header deadline
        yield {"client_timeout": settings.client_timeout,
               "max_header_bytes": settings.max_header_bytes,
               "write_timeout": settings.write_timeout}
        await server.aclose()

    app = apidocs.offline_app(title="activestorage reduction server", version=__version__,
                  description="Reductionist-compatible active-storage API (v1, v2) plus a batch "
                              "extension. Errors: {\"error\": {\"message\", \"caused_by\"}}.",
                  lifespan=lifespan, redirect_slashes=False, extra_paths=schema.reduction_paths)
    # fastapi_offline builds a plain FastAPI: give it the class with the reduction fast path
    # (a subclass that adds no state, so the object is already all it needs)
    app.__class__ = ServerApp
    app.state.server = server

    @app.exception_handler(ActiveStorageError)
    async def _domain_error(_r: Request, exc: ActiveStorageError) -> JSONResponse:
        status = status_of(exc)
        server.metrics.errors.labels(_kind(exc)).inc()
        if status >= 500:
            log.warning("%s: %s", type(exc).__name__, exc)
        return error_response(status, str(exc), _causes(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        server.metrics.errors.labels("http").inc()
        msg = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and msg == "Not Found":
            msg = f"no such path: {_r.url.path}"
        return error_response(exc.status_code, msg)

    @app.exception_handler(FastAPIValidationError)
    async def _fastapi_validation(_r: Request, exc: FastAPIValidationError) -> JSONResponse:
        server.metrics.errors.labels("validation").inc()
        errs = exc.errors()
        first = errs[0] if errs else {}
        field = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "request"
        return error_response(400, f"{field}: {first.get('msg', 'invalid request')}",
                              [str(e.get("msg")) for e in errs[1:8]])

    @app.exception_handler(Exception)
    async def _internal(_r: Request, exc: Exception) -> JSONResponse:
        server.metrics.errors.labels("internal").inc()
        log.exception("internal error serving %s", _r.url.path)
        return error_response(500, f"internal server error ({type(exc).__name__})")

    # The reduction routes, each once (from schema.ROUTES, which also documents them), as plain
    # Starlette routes: no FastAPI dependency solving on the hot path, and placed first so that
    # routing tries them before the docs routes. Each path also answers with its trailing slash
    # added or removed (clients differ; redirect_slashes is off).
    handlers = {"v1": _reduction(server, "v1"), "v2": _reduction(server, "v2"),
                "batch": _reduction(server, "batch")}
    fast = []
    for route in schema.ROUTES:
        other = route.path[:-1] if route.path.endswith("/") else route.path + "/"
        for path in (route.path, other):
            fast.append(Route(path, handlers[route.api], methods=["POST"],
                              include_in_schema=False))
    app.router.routes[:0] = fast

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process serves requests."""
        return {"status": "ok", "version": __version__}

    @app.get("/capabilities")
    async def capabilities() -> dict[str, Any]:
        """What this server supports beyond the Reductionist API (batching, options)."""
        return server.capabilities()

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(server.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    install_status_page(app, server)  # GET /: the status page
    app.add_middleware(FrontDoor, server=server)
    app.fast = (fast, FrontDoor(_fast_path(app, fast), server))  # type: ignore[attr-defined]
    return app


def _reduction(server: Service, api: str) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint of one reduction API (``v1``, ``v2`` or ``batch``)."""
    settings = server.settings
    served = served_operations(settings, api)

    async def endpoint(request: Request) -> Response:
        op = check_operation(request.path_params["operation"], served)
        authorization, content_type = _headers(request.scope)
        auth = parse_basic_auth(authorization)
        body = decode_body(await read_body(request, settings), content_type)
        if api == "batch":
            answer = await server.batch(body, op, auth)
        else:
            answer = await server.single(body, op, api, auth)
        return _respond(server, answer)

    return endpoint


def _headers(scope: dict[str, Any]) -> tuple[str | None, str]:
    """The request's ``authorization`` (None when absent) and ``content-type`` ("" when absent)
    headers, the first of each as Starlette's ``request.headers`` gives it, in one pass over the
    raw list (ASGI header names are lower case)."""
    authorization = content_type = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if authorization is None:
                authorization = value.decode("latin-1")
        elif name == b"content-type" and content_type is None:
            content_type = value.decode("latin-1")
    return authorization, content_type or ""


def _respond(server: Service, answer: Answer) -> Response:
    """The streamed response of an answer, releasing its memory once written or abandoned."""
    held = answer.held
    return BudgetedResponse(answer.parts, media_type=answer.media_type, headers=answer.headers,
                            release=lambda: server.release(held), held=held)
