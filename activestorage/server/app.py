"""The reduction server: Reductionist v1/v2 routes plus our batch extension, as a FastAPI app.

A request goes: bounded body read -> JSON/CBOR parse -> routing fields (allow-listed upstream) ->
:meth:`ChunkRequest.from_wire` validation -> reserve its bytes in the memory budget -> range GET
(:mod:`.upstream`) -> :func:`activestorage.kernel.reduce_chunk` in a thread pool -> v1 raw bytes with
``x-activestorage-*`` headers, or v2 CBOR, streamed from the result arrays; the reservation is
released once the answer is written or the client has gone (:mod:`.responses`). A batch may carry ``fold`` ids: results sharing one
are combined here, so an axis reduction over many small chunks answers with a few partials.
Every error leaves as ``{"error": {"message", "caused_by"}}`` with the spec's status; nothing else
(no FastAPI 422 shape, no tracebacks).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import cbor2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError as FastAPIValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..errors import (ActiveStorageError, DecodeError, RequestValidationError, StorageError,
                      UnsupportedError)
from ..combine import Accumulator
from ..kernel import Partial, reduce_chunk, scratch_bytes
from ..request import NATIVE_BYTE_ORDER, OPERATIONS, ChunkRequest
from ..stores.base import merge_spans
from . import apidocs, schema
from .status import install as install_status_page
from .limits import ByteBudget, LimitError
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics
from .responses import BudgetedResponse, Part, cbor_head, cbor_map_parts
from .settings import Settings
from .upstream import (Target, Upstream, canonical_url, check_allowed, parse_basic_auth,
                       s3_url)

log = logging.getLogger("activestorage.server")
access_log = logging.getLogger("activestorage.server.access")

OPTIONS = ("option_wide_sum", "option_shape_as_bytes", "option_count_as_bytes", "etag",
           "version_id", "missing_multiple")


# ------------------------------------------------------------------------------ a prepared item

@dataclass(frozen=True, slots=True)
class Item:
    """One validated chunk reduction: what to read, how to reduce, what it may cost."""

    req: ChunkRequest
    target: Target
    operation: str
    read_size: int | None  # None: to the end of the object (bounded by max_raw)
    max_raw: int
    wide_sum: bool = False
    shape_as_bytes: bool = False
    count_as_bytes: bool = False
    #: neither shape nor size was given: the shape is 1-D of all the elements read
    whole: bool = False

    @property
    def cost(self) -> int:
        """Bytes this item may hold until its answer is written: the raw range, the decoded
        array and the result (see :func:`result_bytes`)."""
        raw = self.read_size if self.read_size is not None else self.max_raw
        return raw + self.beyond_raw

    @property
    def beyond_raw(self) -> int:
        """What the item holds besides its raw range: the decoded array and the result. A
        ``whole`` item's size is only known once read; ``max_raw`` bounds it."""
        if self.whole:
            return self.max_raw + (self.max_raw if self.operation == "select" else 4096)
        return self.req.nbytes + result_bytes(self.req, self.operation)

    def sized(self, nbytes: int) -> "Item":
        """A ``whole`` item once its ``nbytes`` have been read: its 1-D shape, checked."""
        if not self.whole:
            return self
        req = self.req
        data = nbytes - 4 * sum(1 for f in req.filters if f.get("id") == "fletcher32")
        if data <= 0 or data % req.dtype.itemsize:
            raise RequestValidationError(
                "size", f"not given, and the {nbytes} bytes from offset {req.offset} of "
                f"{self.target.name} are not a whole number of {req.dtype.name} elements")
        return replace(self, req=req._replace(shape=(data // req.dtype.itemsize,), size=nbytes),
                       whole=False)


#: memory per element of a reduction's result: the value and count arrays (8 + 8 bytes) and the
#: Python list of counts the response is encoded from (~36 bytes) with its CBOR encoding (~9)
RESULT_BYTES_PER_ELEMENT = 64


def result_bytes(req: ChunkRequest, operation: str) -> int:
    """An upper bound on the memory of one item's result and its encoding (beyond the decoded
    array): a selection's values, or a reduction's values, counts and count list."""
    shape = req.shape
    sl = req.selection_slices()
    if sl is not None:
        shape = tuple(len(range(*s.indices(n))) for s, n in zip(sl, shape))
    if operation == "select":
        return math.prod(shape) * req.dtype.itemsize + 4096
    axes = set(req.reduce_axes)
    kept = math.prod(n for i, n in enumerate(shape) if i not in axes)
    return kept * RESULT_BYTES_PER_ELEMENT + 4096


def _flag(body: dict[str, Any], name: str) -> bool:
    v = body.get(name)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise RequestValidationError(name, "must be true or false")
    return v


def _string(body: dict[str, Any], name: str) -> str:
    v = body.get(name)
    if v is None or v == "":
        raise RequestValidationError(name, "is required")
    if not isinstance(v, str):
        raise RequestValidationError(name, "must be a string")
    if any(0xD800 <= ord(c) <= 0xDFFF or ord(c) < 0x20 or ord(c) == 0x7F for c in v):
        raise RequestValidationError(name, "must not contain control characters or unpaired "
                                     "surrogates")
    return v


def _target(body: dict[str, Any], api: str, auth: tuple[str, str] | None,
            allow: Sequence[str]) -> Target:
    """The upstream object named by the routing fields of a v1 or v2 body."""
    if api == "v1":
        source, bucket, key = (_string(body, f) for f in ("source", "bucket", "object"))
        check_allowed(source, allow, "source")
        url, kind = s3_url(source, bucket, key), "s3"
    else:
        kind = body.get("interface_type")
        if kind is None:
            raise RequestValidationError("interface_type", "is required")
        if kind not in ("s3", "http", "https"):
            raise RequestValidationError("interface_type", f"must be s3, http or https; got {kind!r}")
        url = canonical_url(_string(body, "url"))  # sent unencoded: spaces, brackets, ...
        check_allowed(url, allow, "url")
        if kind in ("http", "https"):
            # The URL's own scheme decides how to connect: PyActiveStorage 0.8 sends
            # interface_type "https" for every HTTP store, http:// URLs included.
            if not url.startswith(("http://", "https://")):
                raise RequestValidationError("url", f"must be an http:// or https:// URL for "
                                             f"interface_type {kind!r}")
            kind = "http"
    etag, version = body.get("etag"), body.get("version_id")
    for name, pin in (("etag", etag), ("version_id", version)):
        if isinstance(pin, str) and (len(pin) > 1024 or not pin.isascii()
                                     or any(ord(c) < 0x20 or ord(c) == 0x7F for c in pin)):
            raise RequestValidationError(name, "must be printable ASCII of at most 1024 characters")
    return Target(kind=kind, url=url, auth=auth, etag=etag if isinstance(etag, str) else None,
                  version_id=version if isinstance(version, str) else None)


def _itemsize(body: dict[str, Any]) -> int:
    """The element size of the body's dtype (plus its checksums), or 1 (from_wire names a bad
    dtype)."""
    try:
        n = np.dtype(body.get("dtype")).itemsize if isinstance(body.get("dtype"), str) else 1
    except TypeError:
        n = 1
    filters = body.get("filters")
    if isinstance(filters, list):
        n += 4 * sum(1 for f in filters if isinstance(f, dict) and f.get("id") == "fletcher32")
    return n


def prepare(body: Any, operation: str, api: str, auth: tuple[str, str] | None,
            settings: Settings) -> Item:
    """Validate one request body (routing, numeric description, options) into an :class:`Item`."""
    if not isinstance(body, dict):
        raise RequestValidationError("body", "request body must be a JSON object")
    target = _target(body, api, auth, settings.allow_upstream)
    if body.get("shape") is None and body.get("size") is None and body.get("compression") is None:
        # The spec's defaults: read to the end of the object, 1-D of all its elements. Validate
        # the rest with a one-element size; the shape is set once the bytes are in (Item.sized).
        probe = ChunkRequest.from_wire({**body, "size": _itemsize(body)},
                                       max_elements=settings.max_bytes_in_flight)
        max_raw = min(settings.max_bytes_in_flight // 4, 64 << 20)
        return Item(req=probe._replace(size=None), target=target, operation=operation,
                    read_size=None, max_raw=max_raw, whole=True,
                    wide_sum=_flag(body, "option_wide_sum"),
                    shape_as_bytes=_flag(body, "option_shape_as_bytes") and api != "v1",
                    count_as_bytes=_flag(body, "option_count_as_bytes") and api != "v1")
    req = ChunkRequest.from_wire(body, max_elements=settings.max_bytes_in_flight)
    if req.size is not None:
        read_size: int | None = req.size
    elif req.compression is None:  # the exact range: the array plus any Fletcher-32 checksums
        read_size = req.nbytes + 4 * sum(1 for f in req.filters if f.get("id") == "fletcher32")
    else:
        read_size = None
    max_raw = req.nbytes + req.nbytes // 8 + (64 << 10)
    return Item(req=req, target=target, operation=operation, read_size=read_size, max_raw=max_raw,
                wide_sum=_flag(body, "option_wide_sum"),
                shape_as_bytes=_flag(body, "option_shape_as_bytes") and api != "v1",
                count_as_bytes=_flag(body, "option_count_as_bytes") and api != "v1")


# ------------------------------------------------------------------- numeric work (off the loop)

@dataclass(slots=True)
class Result:
    values: np.ndarray      # C-contiguous, native byte order
    counts: np.ndarray      # per result element (reductions) or a 0-d total (select)
    select: bool


def compute(raw: bytes, item: Item, wide: bool = False,
            scratch: np.ndarray | None = None) -> Result:
    """Run the shared kernel and shape its keepdims partial into the API's result.

    ``wide``: keep sums in the accumulating dtype whatever the request asked (for folding)."""
    item = item.sized(len(raw))
    try:
        p: Partial = reduce_chunk(raw, item.req, item.operation, scratch)
    except (DecodeError, UnsupportedError) as exc:
        raise type(exc)(f"{item.target.name}: {exc}") from exc
    if item.operation == "select":
        return Result(np.asarray(p.values, order="C"), np.asarray(int(p.counts.sum())), True)
    axes = set(item.req.reduce_axes)
    shape = tuple(n for i, n in enumerate(p.values.shape) if i not in axes)
    values = p.values.reshape(shape)
    if item.operation == "sum" and not (item.wide_sum or wide) and values.dtype != item.req.dtype:
        with np.errstate(over="ignore", invalid="ignore"):
            values = values.astype(item.req.dtype)  # the spec's result dtype (wraps like NumPy)
    return Result(np.asarray(values, order="C"), p.counts.reshape(shape), False)


def v2_map(res: Result, item: Item) -> dict[str, Any]:
    """The v2 CBOR response map for one result (``bytes``: the values array, written from its
    own memory by :func:`.responses.cbor_map_parts`)."""
    shape = list(res.values.shape)
    counts = [int(res.counts)] if res.select else res.counts.reshape(-1).tolist()
    # the result's bytes in the request's order (a multi-dimensional F result in Fortran order)
    out: dict[str, Any] = {"bytes": in_order(res.values, item.req.order),
                           "dtype": res.values.dtype.name,
                           "shape": shape, "count": counts, "byte_order": NATIVE_BYTE_ORDER}
    if item.shape_as_bytes:
        out["shape_as_bytes"] = np.asarray(shape, dtype=np.uint64).tobytes()
        out["shape"] = []
    if item.count_as_bytes:
        out["count_as_bytes"] = np.asarray(counts, dtype=np.int64).tobytes()
        out["count"] = []
    return out


#: the largest ``x-activestorage-count`` header a v1 answer carries: under the 64 KiB header
#: line that Python's http.client (requests, urllib3) accepts; longer count lists are refused
#: with a 400 that says to use v2 (which returns counts in the body)
V1_COUNT_HEADER_LIMIT = 60 << 10


def in_order(values: np.ndarray, order: str) -> np.ndarray:
    """``values`` with its memory in the request's ``order`` (the spec's result layout: a
    multi-dimensional result of an ``order: "F"`` request is sent in Fortran order)."""
    if order == "F" and values.ndim > 1:
        return values.ravel(order="F")
    return values


def v1_parts(res: Result, order: str = "C") -> tuple[memoryview, dict[str, str]]:
    """The v1 response body (the values' own memory, in ``order``) and ``x-activestorage-*``
    headers.

    ``x-activestorage-count`` is a flat JSON list without spaces, as the reference server sends
    it: one count per result element in C order (``[100]`` for a scalar, ``[3,3,2,3]`` for 2x2);
    a selection's is its one total of non-missing elements, as in v2."""
    if not res.select and res.counts.size * 2 > V1_COUNT_HEADER_LIMIT:  # >= 2 characters each
        raise RequestValidationError(
            "axis", f"this reduction has {res.counts.size} counts, too many for the v1 "
                    f"x-activestorage-count header (limit {V1_COUNT_HEADER_LIMIT} bytes); "
                    "use the v2 API (/v2/<operation>), which returns counts in the body")
    counts = [int(res.counts)] if res.select else res.counts.reshape(-1).tolist()
    count = json.dumps(counts, separators=(",", ":"))
    if len(count) > V1_COUNT_HEADER_LIMIT:
        raise RequestValidationError(
            "axis", f"this reduction's counts take {len(count)} bytes, too many for the v1 "
                    f"x-activestorage-count header (limit {V1_COUNT_HEADER_LIMIT} bytes); "
                    "use the v2 API (/v2/<operation>), which returns counts in the body")
    headers = {"x-activestorage-dtype": res.values.dtype.name,
               "x-activestorage-shape": json.dumps(list(res.values.shape)),
               "x-activestorage-count": count,
               "x-activestorage-byte-order": NATIVE_BYTE_ORDER}
    flat = np.ascontiguousarray(in_order(res.values, order)).reshape(-1).view(np.uint8)
    return memoryview(flat), headers


def _compute_v1(raw: bytes, item: Item) -> tuple[memoryview, dict[str, str]]:
    return v1_parts(compute(raw, item), item.req.order)


def _compute_v2(raw: bytes, item: Item) -> list[Part]:
    return cbor_map_parts(v2_map(compute(raw, item), item))


def _compute_items(idx: list[int], raws: list[Any], items: list[Item],
                   wide: bool) -> list[Result]:
    """The results of items ``idx`` (whose bytes have arrived), errors naming the item."""
    out = []
    decoded = scratch_bytes(items[i].req for i in idx)
    scratch = np.empty(decoded, np.uint8) if decoded and len(idx) > 1 else None
    for i in idx:
        try:
            out.append(compute(raws[i], items[i], wide=wide, scratch=scratch))
        except ActiveStorageError as exc:
            raise at_item(exc, i) from exc
    return out


def _encode_groups(groups: list[list[int]], results: list[Any], items: list[Item],
                   folding: bool) -> list[tuple[int, list[Part]]]:
    """One response map per group, for its first item; when ``folding``, the group's results
    folded in request order exactly as the client's accumulator would (float sums in float64,
    integer sums in (u)int64, min/max over the elements that have a value)."""
    out = []
    for group in groups:
        first = group[0]
        if not folding:
            out.append((first, cbor_map_parts(v2_map(results[first], items[first]))))
            continue
        acc: Accumulator | None = None
        for i in group:
            res = results[i]
            if acc is None:
                acc = Accumulator(items[i].operation, res.values.shape, items[i].req.dtype)
            elif res.values.shape != acc.values.shape:
                raise at_item(RequestValidationError(
                    "fold", f"requests {first} and {i} share a fold id but their results have "
                            f"shapes {list(acc.values.shape)} and {list(res.values.shape)}"), i)
            acc.add((), Partial(res.values, res.counts))
        assert acc is not None
        out.append((first, cbor_map_parts(v2_map(Result(acc.values, acc.counts, False),
                                                  items[first]))))
    return out


def fold_groups(fold: Any, n: int, operation: str) -> list[list[int]]:
    """Item indices grouped by the batch's ``fold`` ids (each item alone when there are none)."""
    if fold is None:
        return [[i] for i in range(n)]
    if not isinstance(fold, list) or len(fold) != n or not all(
            isinstance(f, int) and not isinstance(f, bool) for f in fold):
        raise RequestValidationError("fold", f"must be a list of {n} integers, one per request")
    if operation == "select":
        raise RequestValidationError("fold", "selections cannot be folded")
    groups: dict[int, list[int]] = {}
    for i, f in enumerate(fold):
        groups.setdefault(f, []).append(i)
    return list(groups.values())


_CBOR_NULL = b"\xf6"


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


def at_item(exc: ActiveStorageError, i: int) -> ActiveStorageError:
    """The same error, its message (or field) naming batch item ``i``."""
    if isinstance(exc, RequestValidationError):
        field = f"requests[{i}].{exc.field}" if exc.field else f"requests[{i}]"
        return RequestValidationError(field, exc.message)
    msg = f"requests[{i}]: {exc}"
    if isinstance(exc, StorageError):
        return type(exc)(msg, status=exc.status, store=exc.store, causes=exc.causes)
    if isinstance(exc, LimitError):
        return LimitError(msg, exc.status)
    try:
        return type(exc)(msg)
    except TypeError:
        return ActiveStorageError(msg)


# ------------------------------------------------------------------------------ the app itself

class Server:
    """Per-app state: settings, upstream pool, memory budget, kernel threads, metrics."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.budget = ByteBudget(settings.max_bytes_in_flight, settings.memory_wait_seconds)
        self.upstream = Upstream(max_concurrency=settings.max_upstream_concurrency,
                                 connect_timeout=settings.upstream_connect_timeout,
                                 read_timeout=settings.upstream_read_timeout,
                                 region=settings.s3_region,
                                 allow=settings.allow_upstream)
        self.pool = ThreadPoolExecutor(settings.kernel_threads, thread_name_prefix="as-kernel")

    async def read_body(self, request: Request) -> bytes:
        """The body, at most ``max_body_bytes`` (413), within ``client_timeout`` seconds (408)."""
        limit = self.settings.max_body_bytes
        parts: list[bytes] = []

        async def read() -> None:
            n = 0
            async for part in request.stream():
                n += len(part)
                if n > limit:
                    raise LimitError(f"request body exceeds {limit} bytes (--max-body-bytes)", 413)
                parts.append(part)

        try:
            await asyncio.wait_for(read(), self.settings.client_timeout)
        except asyncio.TimeoutError:
            raise LimitError(f"request body not received within {self.settings.client_timeout} s "
                             "(--client-timeout)", 408) from None
        return b"".join(parts)

    async def parse(self, request: Request, cbor_ok: bool = True) -> Any:
        raw = await self.read_body(request)
        ctype = request.headers.get("content-type", "")
        if cbor_ok and "cbor" in ctype:
            try:
                return cbor2.loads(raw)
            except Exception as exc:  # noqa: BLE001 - cbor2 raises several types on junk
                raise RequestValidationError("body", f"malformed CBOR: {exc}") from None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestValidationError("body", f"malformed JSON: {exc}") from None
        except RecursionError:
            raise RequestValidationError("body", "malformed JSON: nested too deeply") from None

    async def fetch(self, item: Item) -> bytes:
        data = await self.upstream.read(item.target, item.req.offset, item.read_size,
                                        max_bytes=item.max_raw)
        self.metrics.bytes_in.inc(len(data))
        self.metrics.upstream_requests.inc()
        return data

    async def single(self, request: Request, operation: str, api: str) -> Response:
        op = check_operation(operation)
        auth = parse_basic_auth(request.headers.get("authorization"))
        body = await self.parse(request)
        item = prepare(body, op, api, auth, self.settings)
        loop = asyncio.get_running_loop()
        held = await self.budget.acquire(item.cost)
        try:
            self.metrics.in_flight.set(self.budget.used)
            raw = await self.fetch(item)
            if api == "v1":
                body_v1, headers = await loop.run_in_executor(self.pool, _compute_v1, raw, item)
                parts: list[Part] = [body_v1]
                media: str = "application/octet-stream"
            else:
                parts = await loop.run_in_executor(self.pool, _compute_v2, raw, item)
                headers, media = None, "application/cbor"
            del raw
        except BaseException:
            self._release(held)
            raise
        return BudgetedResponse(parts, media_type=media, headers=headers,
                                release=lambda: self._release(held), held=held)

    def _release(self, nbytes: int) -> None:
        """Give a request's reservation back (once its answer is written or abandoned)."""
        self.budget.release(nbytes)
        self.metrics.in_flight.set(self.budget.used)

    async def batch(self, request: Request, operation: str) -> Response:
        op = check_operation(operation)
        auth = parse_basic_auth(request.headers.get("authorization"))
        body = await self.parse(request)
        if not isinstance(body, dict):
            raise RequestValidationError("body", 'must be an object {"requests": [...]}')
        bodies = body.get("requests")
        if not isinstance(bodies, list):
            raise RequestValidationError("requests", "must be a list of v2 request bodies")
        if len(bodies) > self.settings.max_batch:
            raise LimitError(f"batch of {len(bodies)} requests exceeds this server's max_batch "
                             f"of {self.settings.max_batch}", 413)
        items = []
        for i, b in enumerate(bodies):
            try:
                items.append(prepare(b, op, "v2", auth, self.settings))
            except ActiveStorageError as exc:
                raise at_item(exc, i) from None
        groups = fold_groups(body.get("fold"), len(items), op)
        jobs = self._plan(items)
        # what this batch holds at once: every fetched range (gaps included) + decoded arrays
        total = sum(size if size is not None else items[run[0]].max_raw
                    for run, _t, _o, size in jobs) + sum(
            it.beyond_raw for it in items)
        folding = body.get("fold") is not None
        loop = asyncio.get_running_loop()
        computed: list[Any] = [None] * len(items)

        async def ready(idx: list[int], raws: list[Any]) -> None:
            """Reduce items as soon as their GET is in: kernels overlap the other GETs."""
            for i, res in zip(idx, await loop.run_in_executor(
                    self.pool, _compute_items, idx, raws, items, folding)):
                computed[i] = res
                raws[i] = b""  # the bytes are no longer needed

        held = await self.budget.acquire(total)
        try:
            self.metrics.in_flight.set(self.budget.used)
            await self._fetch(items, jobs, ready)
            n = max(1, min(self.settings.kernel_threads, len(groups)))
            parts = await asyncio.gather(
                *(loop.run_in_executor(self.pool, _encode_groups, groups[k::n], computed, items,
                                       folding) for k in range(n)), return_exceptions=True)
            errors = [p for p in parts if isinstance(p, BaseException)]
            if errors:
                raise min(errors, key=_item_index)
            results: list[list[Part]] = [[_CBOR_NULL]] * len(items)  # folded-away: null
            for part in parts:
                for i, m in part:  # type: ignore[union-attr]
                    results[i] = m
            # {"results": [...]} written piece by piece from the result arrays
            out: list[Part] = [cbor_head(5, 1), cbor2.dumps("results"), cbor_head(4, len(items))]
            for r in results:
                out.extend(r)
            del results, parts, computed[:]
        except BaseException:
            self._release(held)
            raise
        return BudgetedResponse(out, media_type="application/cbor",
                                release=lambda: self._release(held), held=held)

    def _plan(self, items: list[Item]) -> list[tuple[list[int], Target, int, int | None]]:
        """GETs to make: (item indices, object, start, size); ranges of one object that are
        adjacent or within ``coalesce_gap_bytes`` share one GET of at most ``coalesce_max_bytes``."""
        s = self.settings
        jobs: list[tuple[list[int], Target, int, int | None]] = []
        small: list[int] = []
        for i, it in enumerate(items):
            if it.read_size is None or it.read_size >= s.coalesce_below_bytes:
                # large ranges gain nothing from sharing a GET, and alone each is reduced as
                # soon as it arrives instead of waiting for its neighbours
                jobs.append(([i], it.target, it.req.offset, it.read_size))
            else:
                small.append(i)
        if small:
            starts = [items[i].req.offset for i in small]
            ends = [o + (items[i].read_size or 0) for o, i in zip(starts, small)]
            for target, run, start, end in merge_spans(
                    [items[i].target for i in small], starts, ends,
                    max_gap=s.coalesce_gap_bytes, max_range=s.coalesce_max_bytes):
                jobs.append(([small[j] for j in run], target, start, end - start))  # type: ignore[misc]
        return jobs

    async def _fetch(self, items: list[Item], jobs: list[tuple[list[int], Target, int, int | None]],
                     ready: Callable[[list[int], list[Any]], Awaitable[None]]) -> None:
        """Run the planned GETs concurrently (bounded by the upstream semaphore), handing each
        one's items to ``ready`` (with the bytes per item) as soon as it is in."""
        raws: list[Any] = [b""] * len(items)

        async def each(run: list[int]) -> None:
            for i in sorted(run):
                try:
                    raws[i] = await self.fetch(items[i])
                except ActiveStorageError as exc:
                    raise at_item(exc, i) from exc
                await ready([i], raws)

        async def one(run: list[int], target: Target, start: int, size: int | None) -> None:
            if size is None or len(run) == 1:
                await each(run)
                return
            try:
                data = await self.upstream.read(target, start, size, max_bytes=size)
            except StorageError:
                # Find the culprit (and spare its neighbours): retry the items one by one.
                await each(run)
                return
            self.metrics.bytes_in.inc(len(data))
            self.metrics.upstream_requests.inc()
            view = memoryview(data)
            for i in run:
                o = items[i].req.offset - start
                raws[i] = view[o:o + items[i].read_size]  # type: ignore[operator]
            await ready(run, raws)

        results = await asyncio.gather(*(one(*j) for j in jobs), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise min(errors, key=_item_index)

    def capabilities(self) -> dict[str, Any]:
        return {"name": "activestorage", "version": __version__, "api": ["v1", "v2"],
                "batch": True, "max_batch": self.settings.max_batch, "fold": True,
                "operations": list(OPERATIONS), "options": list(OPTIONS),
                # results of order-F requests come in Fortran order, as the spec says (older
                # versions of this server sent C order: clients check this before reading F)
                "result_order": "request"}

    async def aclose(self) -> None:
        await self.upstream.aclose()
        self.pool.shutdown(wait=False, cancel_futures=True)


def _item_index(exc: BaseException) -> int:
    text = getattr(exc, "field", None) or str(exc)
    if text.startswith("requests["):
        try:
            return int(text[9:text.index("]")])
        except ValueError:
            pass
    return 1 << 62


def check_operation(operation: str) -> str:
    if operation not in OPERATIONS:
        raise StarletteHTTPException(
            404, f"unknown operation {operation!r}; expected one of {', '.join(OPERATIONS)}")
    return operation


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
    """Pure ASGI middleware: refuse oversized bodies early, time, count and log each request."""

    def __init__(self, app: Any, server: Server) -> None:
        self.app = app
        self.server = server

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
            api, op = _labels(scope.get("path", ""))
            m.requests.labels(api, op, str(state["status"])).inc()
            if api != "other":
                m.latency.labels(api, op).observe(dt)
                m.reduction_bytes_out.inc(state["bytes"])
            m.bytes_out.inc(state["bytes"])
            m.in_flight.set(self.server.budget.used)
            if self.server.settings.access_log and access_log.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("-", 0)
                access_log.info(json.dumps({
                    "client": f"{client[0]}:{client[1]}", "method": scope.get("method"),
                    "path": scope.get("path"), "status": state["status"],
                    "bytes_out": state["bytes"], "ms": round(dt * 1000, 3)}))


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
    server = Server(settings)

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
                  lifespan=lifespan, redirect_slashes=False)
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

    v1_doc = schema.body_doc(schema.inline_schema(schema.V1Request))
    v2_doc = schema.body_doc(schema.inline_schema(schema.V2Request))
    batch_doc = schema.body_doc(schema.batch_schema(), cbor=True)
    op_desc = "operation: " + ", ".join(OPERATIONS)

    async def v1(operation: str, request: Request) -> Response:
        """Reductionist v1: S3 source/bucket/object; raw result bytes + x-activestorage-* headers."""
        return await server.single(request, operation, "v1")

    async def v2(operation: str, request: Request) -> Response:
        """Reductionist v2: interface_type + url; CBOR {bytes, dtype, shape, count, byte_order}."""
        return await server.single(request, operation, "v2")

    async def batch(operation: str, request: Request) -> Response:
        """Extension: many v2 bodies in one call; CBOR {"results": [...]} in request order."""
        return await server.batch(request, operation)

    for path, fn, doc in (("/v1/{operation}/", v1, v1_doc), ("/v2/{operation}", v2, v2_doc),
                          ("/v2/batch/{operation}", batch, batch_doc)):
        other = path[:-1] if path.endswith("/") else path + "/"
        app.add_api_route(path, fn, methods=["POST"], openapi_extra=doc, description=op_desc,
                          response_class=Response)
        app.add_api_route(other, fn, methods=["POST"], include_in_schema=False,
                          response_class=Response)

    # The hot paths skip FastAPI's per-request dependency solving (~15% of a 64 KiB request's
    # CPU): plain Starlette routes placed first answer them; the FastAPI routes above remain for
    # the OpenAPI document and are never reached.
    fast = []
    for path, fn in (("/v1/{operation}/", v1), ("/v1/{operation}", v1), ("/v2/{operation}", v2),
                     ("/v2/{operation}/", v2), ("/v2/batch/{operation}", batch),
                     ("/v2/batch/{operation}/", batch)):
        fast.append(Route(path, _plain(fn), methods=["POST"], include_in_schema=False))
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
    return app


def _plain(fn: Any) -> Any:
    """A Starlette endpoint calling ``fn(operation, request)``."""
    async def endpoint(request: Request) -> Response:
        return await fn(request.path_params["operation"], request)
    return endpoint


def app_from_env() -> FastAPI:
    """Factory for multi-worker uvicorn: settings come from ``ACTIVESTORAGE_SERVER_SETTINGS``."""
    import os

    from .serve import configure_logging

    text = os.environ.get("ACTIVESTORAGE_SERVER_SETTINGS")
    settings = Settings.from_json(text) if text else Settings()
    configure_logging(settings.log_level)  # worker processes start with logging unconfigured
    return create_app(settings)

