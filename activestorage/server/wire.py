"""The server's wire format: request bodies in, validated items out; results in, answers out.

Decoding: a JSON or CBOR body (:func:`decode_body`) -> routing fields (allow-listed upstream) ->
:meth:`ChunkRequest.from_wire` validation -> an :class:`Item` (:func:`prepare`; a batch with
:func:`prepare_batch`). Encoding: a reduction's :class:`Result` as v1 raw bytes with
``x-activestorage-*`` headers (:func:`v1_parts`) or a v2 CBOR map (:func:`v2_map`). Errors of a
batch item name it (:func:`at_item`). Nothing here does I/O: :mod:`.service` does the work and
:mod:`.app` speaks HTTP.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import cbor2
import numpy as np

from .. import wire_extension
from ..errors import ActiveStorageError, RequestValidationError, StorageError
from ..request import NATIVE_BYTE_ORDER, OPERATIONS, ChunkRequest
from .limits import LimitError
from .body_key import Unkeyable, body_key
from .settings import Settings
from .upstream import Target, canonical_url, check_allowed, s3_url

#: the request options this server understands (listed by ``GET /capabilities``)
OPTIONS = ("option_wide_sum", "option_shape_as_bytes", "option_count_as_bytes", "etag",
           "version_id", "missing_multiple", "option_disable_chunk_cache")

#: the operations the Reductionist API defines; any other wire operation of the table of
#: operations (``moments``, ``minmax``) is our extension, served on v2 and batch only
REFERENCE_OPERATIONS = wire_extension.REFERENCE_OPERATIONS
EXTENSION_OPERATIONS = tuple(op for op in OPERATIONS if op not in REFERENCE_OPERATIONS)
#: values per result element of the extension's partials (their trailing axis)
RESULT_WIDTH = wire_extension.RESULT_WIDTH


def served_operations(settings: Settings, api: str) -> tuple[str, ...]:
    """The operations a route of ``api`` serves: the reference ones, plus (on v2 and batch,
    unless switched off) the extension's."""
    if api == "v1" or not settings.moments_extension:
        return REFERENCE_OPERATIONS
    return OPERATIONS


def extensions(settings: Settings) -> dict[str, Any]:
    """What ``GET /capabilities`` says of the moments extension (empty when it is off)."""
    if not settings.moments_extension or not EXTENSION_OPERATIONS:
        return {}
    return {"operations": list(EXTENSION_OPERATIONS), "weights": list(wire_extension.FORMS),
            "api": ["v2", "batch"],
            # weights travel in the body: clients keep them well under this
            "max_body_bytes": settings.max_body_bytes}


_REQ_FIELD = {name: i for i, name in enumerate(ChunkRequest._fields)}


def with_fields(req: ChunkRequest, **changes: Any) -> ChunkRequest:
    """``req._replace(**changes)`` in a fifth of the time (a named tuple's ``_replace`` of its
    15 fields costs ~8 us: per item of a batch, that was the largest cost left)."""
    values = list(req)
    for name, value in changes.items():
        values[_REQ_FIELD[name]] = value
    return tuple.__new__(ChunkRequest, values)


@dataclass(slots=True)
class Item:
    """One validated chunk reduction: what to read, how to reduce, what it may cost.

    Never changed once made (changes are new items, by :func:`dataclasses.replace`); not a
    frozen dataclass only because a frozen one's ``__init__`` takes three times as long, and a
    batch makes one per item."""

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
    #: ``option_disable_chunk_cache``: neither read from nor add to the chunk cache
    no_cache: bool = False
    #: N-D weights the server reads from their own byte range (a ``select`` item), or None
    weights_item: "Item | None" = None

    @property
    def cost(self) -> int:
        """Bytes this item may hold until its answer is written: the raw range, the decoded
        array and the result (see :func:`result_bytes`), and its weights' range and arrays."""
        raw = self.read_size if self.read_size is not None else self.max_raw
        w = self.weights_item
        return raw + self.beyond_raw + (0 if w is None else w.cost + 8 * w.req.nbytes)

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
    return _result_bytes(req.shape, req.selection, req.axis, req.dtype.itemsize, operation)


@functools.lru_cache(maxsize=1024)
def _result_bytes(shape: tuple[int, ...], selection: tuple[tuple[int, int, int], ...] | None,
                  axis: tuple[int, ...] | None, itemsize: int, operation: str) -> int:
    """:func:`result_bytes` of what it depends on (a batch's items share it: computed once)."""
    sl = ChunkRequest(np.dtype("u1"), shape, selection=selection).selection_slices()
    if sl is not None:
        shape = tuple(len(range(*s.indices(n))) for s, n in zip(sl, shape))
    if operation == "select":
        return math.prod(shape) * itemsize + 4096
    axes = set(range(len(shape)) if axis is None else axis)
    kept = math.prod(n for i, n in enumerate(shape) if i not in axes)
    width = RESULT_WIDTH.get(operation, 1)
    # the weights (float64, at most one per selected element) and the kernel's float64 work
    # arrays of a moments reduction
    extra = 3 * 8 * math.prod(shape) if operation == "moments" else 0
    return kept * (RESULT_BYTES_PER_ELEMENT + 8 * (width - 1)) + extra + 4096


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
            settings: Settings, memo: "Memo | None" = None,
            targets: dict[Any, Target] | None = None) -> Item:
    """Validate one request body (routing, numeric description, options) into an :class:`Item`.

    With a ``memo`` (of these ``settings``), a body described like one validated before (all
    fields but ``offset``, ``size`` and ``url`` equal, value for value and type for type) is
    checked only in those three fields; anything unusual takes the full path, so answers and
    errors are the same either way. ``targets``: the :class:`Target` objects already built for
    this request (a batch's items share them)."""
    if memo is not None and memo.settings is settings:
        key = memo.key(body, api)
        if key is not None:
            item = memo.item(body, key, operation, api, auth, targets)
            if item is None:
                item = _prepare(body, operation, api, auth, settings)
                memo.learn(body, key, api, item)
                if targets is not None:
                    t = item.target
                    targets.setdefault((t.url, t.kind, t.etag, t.version_id), t)
            return item
    return _prepare(body, operation, api, auth, settings)


def _prepare(body: Any, operation: str, api: str, auth: tuple[str, str] | None,
             settings: Settings) -> Item:
    """:func:`prepare`'s full path: every field validated."""
    if not isinstance(body, dict):
        raise RequestValidationError("body", "request body must be a JSON object")
    target = _target(body, api, auth, settings.allow_upstream)
    if body.get("shape") is None and body.get("size") is None and body.get("compression") is None:
        if body.get("weights") is not None and settings.moments_extension and api != "v1":
            raise RequestValidationError("weights", "need the data's shape")
        # The spec's defaults: read to the end of the object, 1-D of all its elements. Validate
        # the rest with a one-element size; the shape is set once the bytes are in (Item.sized).
        probe = ChunkRequest.from_wire({**body, "size": _itemsize(body)},
                                       max_elements=settings.max_bytes_in_flight)
        max_raw = min(settings.max_bytes_in_flight // 4, 64 << 20)
        return Item(req=probe._replace(size=None), target=target, operation=operation,
                    read_size=None, max_raw=max_raw, whole=True,
                    no_cache=_flag(body, "option_disable_chunk_cache"),
                    wide_sum=_flag(body, "option_wide_sum"),
                    shape_as_bytes=_flag(body, "option_shape_as_bytes") and api != "v1",
                    count_as_bytes=_flag(body, "option_count_as_bytes") and api != "v1")
    req = ChunkRequest.from_wire(body, max_elements=settings.max_bytes_in_flight)
    weights_item = None
    if settings.moments_extension and api != "v1":  # else an unknown field, ignored (spec)
        weights = wire_extension.parse(body.get("weights"), operation, req.shape, req.selection,
                                     target.kind)
        if isinstance(weights, wire_extension.WeightsRef):
            weights_item = _weights_item(weights, auth, settings)
            weights = None
        if weights is not None:
            req = req._replace(weights=weights)
    if req.size is not None:
        read_size: int | None = req.size
    elif req.compression is None:  # the exact range: the array plus any Fletcher-32 checksums
        read_size = req.nbytes + 4 * sum(1 for f in req.filters if f.get("id") == "fletcher32")
    else:
        read_size = None
    max_raw = req.nbytes + req.nbytes // 8 + (64 << 10)
    return Item(req=req, target=target, operation=operation, read_size=read_size, max_raw=max_raw,
                no_cache=_flag(body, "option_disable_chunk_cache"),
                wide_sum=_flag(body, "option_wide_sum"),
                shape_as_bytes=_flag(body, "option_shape_as_bytes") and api != "v1",
                count_as_bytes=_flag(body, "option_count_as_bytes") and api != "v1",
                weights_item=weights_item)



#: the fields a batch's items usually differ in: on a :class:`Memo` hit only these are checked
PER_ITEM_FIELDS = frozenset(("offset", "size", "url"))
#: longer URLs are checked in full each time (not kept: the memo stays small)
MAX_URL = 4096
_INT64_MAX = 2**63 - 1


class Memo:
    """The validations of bodies seen before, per app (bounded): an :class:`Item` template per
    distinct body description (:func:`.body_key.body_key` of its fields but
    :data:`PER_ITEM_FIELDS`) and the routing of each ``(interface_type, url)``.

    Both are pure functions of the body and the (fixed) settings: the allow-list check of a URL is
    of its text only (addresses are checked when connecting). A hit skips the numeric description's
    validation and the URL's parsing and allow-list check: in a cached batch of 64 KiB chunks those
    were ~70 % of the server's event-loop time. No credentials are kept (templates hold none),
    and the memory is bounded: at most ``max_entries`` of each, a key at most
    :data:`.body_key.MAX_VALUES` values (larger bodies are validated the full way)."""

    def __init__(self, settings: Settings, max_entries: int = 1024) -> None:
        self.settings = settings
        self.max_entries = max_entries
        self._items: dict[tuple[Any, ...], Item] = {}
        self._urls: dict[tuple[str, str], tuple[str, str]] = {}

    def key(self, body: Any, api: str) -> tuple[Any, ...] | None:
        """The body's template key, or None when it is not one a template can stand for (no
        ``shape``: the whole object or a shape from the size; weights, which are per chunk)."""
        if type(body) is not dict or body.get("shape") is None or body.get("weights") is not None:
            return None
        try:
            return body_key(body, PER_ITEM_FIELDS, api, body.get("size") is None)
        except Unkeyable:
            return None

    def item(self, body: dict[str, Any], key: tuple[Any, ...], operation: str, api: str,
             auth: tuple[str, str] | None, targets: dict[Any, Target] | None) -> Item | None:
        """The body's item from the template of ``key``, or None when there is none or the
        per-item fields need the full path (which then answers, errors included)."""
        t = self._items.get(key)
        if t is None:
            return None
        offset = body.get("offset")
        if offset is None:
            offset = 0
        elif type(offset) is not int or not 0 <= offset <= _INT64_MAX:
            return None
        size = body.get("size")
        req = t.req
        if size is not None and (type(size) is not int or not 1 <= size <= _INT64_MAX
                                 or (req.compression is None and size != req.size)):
            return None  # without compression the size is the array's: the template's
        if api == "v1":
            url, kind = t.target.url, t.target.kind
        else:
            kind, url = body.get("interface_type"), body.get("url")
            if type(kind) is not str or type(url) is not str:
                return None
            routed = self._urls.get((kind, url))
            if routed is None:
                return None
            url, kind = routed
        tk = (url, kind, t.target.etag, t.target.version_id)
        target = None if targets is None else targets.get(tk)
        if target is None:
            target = Target(kind=kind, url=url, auth=auth, etag=t.target.etag,
                            version_id=t.target.version_id)
            if targets is not None:
                targets[tk] = target
        return Item(req=with_fields(req, offset=offset, size=size), target=target,
                    operation=operation, read_size=t.read_size if size is None else size,
                    max_raw=t.max_raw, wide_sum=t.wide_sum, shape_as_bytes=t.shape_as_bytes,
                    count_as_bytes=t.count_as_bytes, no_cache=t.no_cache)

    def learn(self, body: dict[str, Any], key: tuple[Any, ...], api: str, item: Item) -> None:
        """Remember what ``body`` (of template ``key``) validated into."""
        if item.whole or item.weights_item is not None or item.req.weights is not None:
            return
        if len(self._items) >= self.max_entries:
            self._items.clear()
        self._items[key] = replace(item, target=replace(item.target, auth=None))
        kind, url = body.get("interface_type"), body.get("url")
        if api != "v1" and type(kind) is str and type(url) is str and len(url) <= MAX_URL:
            if len(self._urls) >= self.max_entries:
                self._urls.clear()
            self._urls[(kind, url)] = (item.target.url, item.target.kind)


def _weights_item(ref: wire_extension.WeightsRef, auth: tuple[str, str] | None,
                  settings: Settings) -> Item:
    """The ``select`` item reading an ``array`` weights reference: validated like a v2 body
    (allow-list, limits; the same credentials), errors naming ``weights.array.<field>``."""
    try:
        if ref.body.get("shape") is None:
            raise RequestValidationError("shape", "is required for weights")
        return prepare(ref.body, "select", "v2", auth, settings)
    except RequestValidationError as exc:
        raise RequestValidationError(f"weights.array.{exc.field}", exc.message) from None
    except StorageError as exc:  # e.g. the 403 of a host not on the allow-list
        raise type(exc)(f"weights.array.url: {exc}", status=exc.status, store=exc.store,
                        causes=exc.causes) from None


def prepare_batch(body: Any, operation: str, auth: tuple[str, str] | None,
                  settings: Settings, memo: Memo | None = None
                  ) -> tuple[list[Item], list[list[int]], bool]:
    """Validate a batch body ``{"requests": [...], "fold": [...]}``: its items, the item indices
    grouped by ``fold`` id, and whether results are folded (items described alike are validated
    once through ``memo``: see :func:`prepare`)."""
    if not isinstance(body, dict):
        raise RequestValidationError("body", 'must be an object {"requests": [...]}')
    bodies = body.get("requests")
    if not isinstance(bodies, list):
        raise RequestValidationError("requests", "must be a list of v2 request bodies")
    if len(bodies) > settings.max_batch:
        raise LimitError(f"batch of {len(bodies)} requests exceeds this server's max_batch "
                         f"of {settings.max_batch}", 413)
    items = []
    targets: dict[Any, Target] = {}
    for i, b in enumerate(bodies):
        try:
            items.append(prepare(b, operation, "v2", auth, settings, memo, targets))
        except ActiveStorageError as exc:
            raise at_item(exc, i) from None
    groups = fold_groups(body.get("fold"), len(items), operation)
    return items, groups, body.get("fold") is not None


def decode_body(raw: bytes, content_type: str, cbor_ok: bool = True) -> Any:
    """A request body parsed as CBOR (when the content type says so) or JSON."""
    if cbor_ok and "cbor" in content_type:
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


# ------------------------------------------------------------------------------- the answers

@dataclass(slots=True)
class Result:
    """One item's reduction as the API returns it."""

    values: np.ndarray      # C-contiguous, native byte order
    counts: np.ndarray      # per result element (reductions) or a 0-d total (select)
    select: bool


#: dtype -> its name (``np.dtype.name`` is computed in Python each time: ~1 us)
_DTYPE_NAMES: dict[np.dtype, str] = {}


def _dtype_name(dtype: np.dtype) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = dtype.name
        if len(_DTYPE_NAMES) < 64:
            _DTYPE_NAMES[dtype] = name
    return name


def v2_map(res: Result, item: Item) -> dict[str, Any]:
    """The v2 CBOR response map for one result (``bytes``: the values array, written from its
    own memory by :func:`.responses.cbor_map_parts`)."""
    shape = list(res.values.shape)
    # a reduction's counts stay an array: encoded by NumPy (responses.cbor_uint_array)
    counts: Any = [int(res.counts)] if res.select else res.counts.reshape(-1)
    # the result's bytes in the request's order (a multi-dimensional F result in Fortran order)
    out: dict[str, Any] = {"bytes": in_order(res.values, item.req.order),
                           "dtype": _dtype_name(res.values.dtype),
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


#: a folded-away result in a batch answer
CBOR_NULL = b"\xf6"


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


def item_index(exc: BaseException) -> int:
    """The batch item an error (from :func:`at_item`) names; errors naming none sort last."""
    text = getattr(exc, "field", None) or str(exc)
    if text.startswith("requests["):
        try:
            return int(text[9:text.index("]")])
        except ValueError:
            pass
    return 1 << 62
