"""The server backend: ask a Reductionist-compatible reduction server to reduce chunks.

Only the small results cross the network. One ``requests.Session`` per backend (its connection pool
sized to the thread count) carries Basic auth (for S3 the access key and secret, which the server
uses to sign its range GETs), TLS verification and a timeout on every call; 429/502/503/504 and
connection resets are retried a bounded number of times with exponential backoff (the reductions
are idempotent). Errors come back as :class:`~activestorage.errors.ServerError` with the status,
the decoded error body and the URL.

Wire: v2 (JSON request, CBOR response) by default, v1 (JSON request, raw bytes + headers) with
``api_version=1``. Against our own server (``GET /capabilities`` says ``"batch": true``, detected
once per backend) many chunk reductions travel in one ``POST /v2/batch/{op}``; other servers get one
request per chunk. Integer sums ask for ``option_wide_sum`` so they come back in int64/uint64.

:func:`reduce_chunk` is the module-level function with the argument conventions PyActiveStorage
integrations use.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Hashable, Mapping, Sequence
from urllib.parse import quote, unquote, urlsplit

import numpy as np

from .. import wire_extension
from ..errors import ServerError, UnsupportedError
from ..kernel import Partial, missing_mask, sum_dtype
from ..operations import OPERATIONS
from ..request import ChunkRequest, make_request
from ..storage import resolve_s3_options, s3_credentials, s3_endpoint, split_s3_url, url_kind
from .base import Backend

log = logging.getLogger(__name__)

#: a server's request body limit when its capabilities do not say (our server's default)
DEFAULT_MAX_BODY = 1 << 20
#: (connect, read) timeout in seconds for every call to the server.
DEFAULT_TIMEOUT = (5.0, 120.0)
#: client-side bound on the declared decoded bytes of one batch (the server bounds it too).
DEFAULT_MAX_BATCH_BYTES = 256 * 1024 * 1024
#: batches smaller than this are not split further just to use more threads.
MIN_SPLIT_BATCH = 256
#: seconds a server's ``GET /capabilities`` answer is reused by every backend of this process
#: (cf-python makes one ``Active`` per Dask chunk); ``$ACTIVESTORAGE_CAPABILITIES_TTL`` overrides
CAPABILITIES_TTL = 60.0

#: server URL -> (monotonic time fetched, answer); shared by every ServerBackend of the process
_CAPS_CACHE: dict[str, tuple[float, dict[str, Any]]] = {}
_CAPS_CACHE_LOCK = threading.Lock()


def cached_capabilities(url: str, fetch: Callable[[], dict[str, Any]],
                        ttl: float | None = None,
                        env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``fetch()``'s answer for server ``url``, reused for ``ttl`` seconds across the process.

    A failed fetch is not cached (the next caller tries again). Capabilities are a property of
    the server, not of a client's credentials, so the key is the URL alone.
    """
    if ttl is None:
        env = os.environ if env is None else env
        try:
            ttl = float(env.get("ACTIVESTORAGE_CAPABILITIES_TTL") or CAPABILITIES_TTL)
        except ValueError:
            ttl = CAPABILITIES_TTL
    now = time.monotonic()
    with _CAPS_CACHE_LOCK:
        hit = _CAPS_CACHE.get(url)
        if hit is not None and now - hit[0] < ttl:
            return hit[1]
    caps = fetch()
    with _CAPS_CACHE_LOCK:
        _CAPS_CACHE[url] = (time.monotonic(), caps)
    return caps


def clear_capabilities_cache() -> None:
    """Forget every cached ``GET /capabilities`` answer (tests; a server that was upgraded)."""
    with _CAPS_CACHE_LOCK:
        _CAPS_CACHE.clear()


# ------------------------------------------------------------------------------ session

def make_session(*, username: str | None = None, password: str | None = None,
                 verify: bool | str = True, pool_size: int = 8, retries: int = 3,
                 backoff: float = 0.1) -> Any:
    """A ``requests.Session`` for a reduction server: pooled connections, Basic auth, TLS verify,
    and POSTs retried ``retries`` times with exponential ``backoff`` (:mod:`.retry`)."""
    import requests

    s = requests.Session()
    _mount(s, "", retries, backoff, pool_size)
    if username is not None:
        s.auth = (username, password or "")
    s.verify = verify
    return s


def _mount(session: Any, prefix: str, retries: int, backoff: float, pool_size: int = 8) -> None:
    """An adapter with the retry policy on ``session`` for URLs under ``prefix`` ("": all)."""
    from requests.adapters import HTTPAdapter

    from .retry import server_retry  # imports urllib3: only once a session is made

    adapter = HTTPAdapter(pool_connections=2, pool_maxsize=max(1, pool_size),
                          max_retries=server_retry(retries, backoff))
    for scheme in (("http://", "https://") if not prefix else (prefix,)):
        session.mount(scheme, adapter)


_MOUNT_LOCK = threading.Lock()


def _ensure_policy(session: Any, url: str, retries: int, backoff: float) -> None:
    """Make ``session`` retry POSTs to ``url``'s server ``retries`` times: sessions from
    :func:`make_session` with the same numbers already do; any other session (a caller's own)
    gets an adapter with the policy mounted for that server's origin."""
    from .retry import ServerRetry

    policy = getattr(session.get_adapter(url), "max_retries", None)
    if (isinstance(policy, ServerRetry) and policy.total == retries
            and policy.backoff_factor == backoff):
        return
    parts = urlsplit(url)
    with _MOUNT_LOCK:
        _mount(session, f"{parts.scheme}://{parts.netloc}/", retries, backoff)


def post_with_retries(session: Any, url: str, *, data: bytes, headers: Mapping[str, str],
                      timeout: Any = DEFAULT_TIMEOUT, retries: int = 3,
                      backoff: float = 0.1, on_attempt: Callable[[int], None] | None = None,
                      auth: tuple[str, str] | None = None) -> Any:
    """POST with the client's retry policy (:mod:`.retry`: 429/502/503/504 and connection
    failures, up to ``retries`` times with exponential backoff, honouring a short
    ``Retry-After``), done by urllib3 under ``session``; an answer cut short is sent again up to
    ``retries`` times. Raise ServerError when unreachable. ``on_attempt(bytes_received)`` is
    called for every HTTP request made (for accounting); ``auth`` overrides the session's Basic
    auth for this call."""
    import requests

    from .retry import RETRY_STATUSES

    _ensure_policy(session, url, retries, backoff)
    cut = 0
    while True:
        try:
            # verify= per call: requests would otherwise let REQUESTS_CA_BUNDLE override it
            resp = session.post(url, data=data, headers=dict(headers), timeout=timeout,
                                verify=session.verify,
                                **({"auth": auth} if auth is not None else {}))
        except requests.Timeout as exc:
            _account_failure(on_attempt, exc)
            raise ServerError(f"reduction server {url} did not answer within {timeout}s",
                              status=504, url=url, body=None) from exc
        except (requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError) as exc:
            # the answer was cut short (reset, wrong Content-Length): it is idempotent, send
            # it again (urllib3 retries only until the answer begins)
            _account_failure(on_attempt, exc)
            if cut < retries:
                cut += 1
                time.sleep(backoff * 2 ** (cut - 1) * (0.5 + random.random()))
                continue
            raise ServerError(f"reduction server {url} answer was cut short: {_root_cause(exc)}",
                              status=502, url=url, body=None) from exc
        except requests.ConnectionError as exc:
            _account_failure(on_attempt, exc)
            raise ServerError(f"cannot reach reduction server {url}: {_root_cause(exc)}",
                              status=None, url=url, body=None) from exc
        except requests.RequestException as exc:
            raise ServerError(f"request to reduction server {url} failed: {exc}", url=url) from exc
        history = getattr(getattr(resp.raw, "retries", None), "history", ())
        if on_attempt is not None:
            for _ in history:  # the attempts urllib3 retried (their bodies were drained)
                on_attempt(0)
            on_attempt(len(resp.content))
        if resp.status_code in RETRY_STATUSES:
            log.info("reduction server %s answered %s after %d retries", url, resp.status_code,
                     len(history))
        return resp


def _account_failure(on_attempt: Callable[[int], None] | None, exc: BaseException) -> None:
    from .retry import attempts_of

    if on_attempt is not None:
        for _ in range(attempts_of(exc)):
            on_attempt(0)


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return f"{type(exc).__name__}: {exc}"


def raise_for_error(resp: Any, url: str) -> None:
    """Raise ServerError for a non-2xx response, with the decoded ``{"error": ...}`` body."""
    if 200 <= resp.status_code < 300:
        return
    body: Any = None
    message = ""
    try:
        body = resp.json()
        err = body.get("error", body) if isinstance(body, dict) else body
        if isinstance(err, dict):
            message = str(err.get("message", "")) or json.dumps(err)[:500]
            causes = err.get("caused_by") or []
            if causes:
                message += " (caused by: " + "; ".join(str(c) for c in causes) + ")"
        else:
            message = str(err)[:500]
    except ValueError:
        body = resp.text[:2000]
        message = body[:500]
    raise ServerError(f"reduction server {url} answered HTTP {resp.status_code}: "
                      f"{message or resp.reason}", status=resp.status_code, url=url, body=body)


# ------------------------------------------------------------------------- wire helpers

def routing_fields(url: str, api_version: int, s3_endpoint_url: str | None,
                   storage_type: str | None = None) -> dict[str, Any]:
    """Where the server finds the object: v2 ``interface_type``/``url``, v1
    ``source``/``bucket``/``object``. ``s3://bucket/key`` becomes ``<endpoint>/bucket/key``;
    an http(s) URL under the S3 endpoint (or with ``storage_type="s3"``) is treated as S3 path-style.
    """
    kind = url_kind(url)
    if kind == "file":
        raise UnsupportedError(
            f"the server backend needs an object URL (s3:// or http(s)://), not the local path "
            f"{url}: the reduction server cannot read this machine's files; use the posix backend")
    if kind == "s3":
        if not s3_endpoint_url:
            raise UnsupportedError(f"no S3 endpoint known for {url}")
        bucket, key = split_s3_url(url)
        source, is_s3 = s3_endpoint_url.rstrip("/"), True
        full = f"{source}/{bucket}/{quote(key, safe='/~')}"
    else:
        full, is_s3 = url, storage_type == "s3" or bool(
            s3_endpoint_url and url.startswith(s3_endpoint_url.rstrip("/") + "/"))
        parts = urlsplit(url)
        source = f"{parts.scheme}://{parts.netloc}"
        bucket, _, key = parts.path.lstrip("/").partition("/")
        # v1 takes the raw key (the server encodes it); the URL's path is percent-encoded
        bucket, key = unquote(bucket), unquote(key)
    if api_version == 1:
        if not (bucket and key):
            raise UnsupportedError(f"v1 needs an S3 path-style URL (endpoint/bucket/key); got {url}")
        return {"source": source, "bucket": bucket, "object": key}
    return {"interface_type": "s3" if is_s3 else kind, "url": full}


def request_body(req: ChunkRequest, operation: str, routing: Mapping[str, Any], *,
                 wide_sum: bool = True, disable_chunk_cache: bool = False,
                 binary: bool = False, memo: dict[Any, Any] | None = None) -> dict[str, Any]:
    """One chunk's request body: routing + the wire model (+ option_wide_sum for integer sums,
    + option_disable_chunk_cache when asked, + the chunk's weights: our extension, float64 bytes
    when ``binary``, i.e. for a CBOR body). ``memo``: see :meth:`ChunkRequest.to_wire`."""
    body = dict(routing)
    body.update(req.to_wire(memo))
    if operation == "sum" and wide_sum and req.dtype.kind in "iu":
        body["option_wide_sum"] = True
    if disable_chunk_cache:
        body["option_disable_chunk_cache"] = True
    weights = getattr(req, "weights", None)
    if weights is not None:
        body["weights"] = wire_extension.encode(weights, binary)
    return body


def weights_nbytes(weights: Any) -> int:
    """Bytes a request's weights take in a CBOR body (float64 each)."""
    if weights is None:
        return 0
    if isinstance(weights, Mapping):
        return 8 * sum(int(np.size(w)) for w in weights.values() if w is not None)
    return 8 * int(np.size(weights))


def _selected_shape(req: ChunkRequest) -> tuple[int, ...]:
    if req.selection is None:
        return tuple(req.shape)
    return tuple(len(range(a, b, c)) for a, b, c in req.selection)


def result_shapes(req: ChunkRequest, operation: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(shape the server returns, keepdims shape of the kernel Partial); the extension's
    ``moments``/``minmax`` have a trailing axis of their values per element."""
    sel = _selected_shape(req)
    if operation == "select":
        return sel, sel
    axes = set(req.reduce_axes)
    width = wire_extension.RESULT_WIDTH.get(operation)
    tail = (width,) if width else ()
    return (tuple(n for i, n in enumerate(sel) if i not in axes) + tail,
            tuple(1 if i in axes else n for i, n in enumerate(sel)) + tail)


def _expected_dtypes(req: ChunkRequest, operation: str, folded: bool) -> tuple[np.dtype, ...]:
    if operation == "count":
        return (np.dtype(np.int64),)
    if operation == "moments":
        return (np.dtype(np.float64),)
    if operation == "sum":
        wide = (np.dtype(np.float64),) if folded and req.dtype.kind == "f" else ()
        return (np.dtype(sum_dtype(req.dtype)), req.dtype) + wide
    return (req.dtype,)


def _malformed(url: str, why: str, body: Any = None) -> ServerError:
    return ServerError(f"malformed response from reduction server {url}: {why}", status=200,
                       url=url, body=body)


def to_partial(values_bytes: Any, dtype: Any, byte_order: Any, shape: Any, count: Any,
               req: ChunkRequest, operation: str, url: str, folded: bool = False,
               result_order: str = "C") -> Partial:
    """Check one decoded response against its request and turn it into a keepdims Partial.

    ``folded``: the result combines several chunks (a batch ``fold``), so float sums may come
    back in float64. ``result_order``: the layout of the result bytes (the spec: the request's
    order; older servers of ours: always C)."""
    try:
        dt = np.dtype(str(dtype))
    except TypeError as exc:
        raise _malformed(url, f"unknown dtype {dtype!r}") from exc
    if dt not in _expected_dtypes(req, operation, folded):
        raise _malformed(url, f"{operation} of {req.dtype.name} came back as {dt.name}")
    if byte_order not in ("little", "big"):
        raise _malformed(url, f"byte_order {byte_order!r}")
    out_shape, keep_shape = result_shapes(req, operation)
    if shape is not None and (not isinstance(shape, (list, tuple)) or tuple(
            int(n) if isinstance(n, int) else -1 for n in shape) != out_shape):
        raise _malformed(url, f"result shape {str(shape)[:100]}, expected {list(out_shape)}")
    if not isinstance(values_bytes, (bytes, bytearray, memoryview)):
        raise _malformed(url, "result bytes missing")
    n = math.prod(out_shape)
    if len(values_bytes) != n * dt.itemsize:
        raise _malformed(url, f"{len(values_bytes)} result bytes for {n} {dt.name} values")
    values = np.frombuffer(values_bytes, dt.newbyteorder("<" if byte_order == "little" else ">"))
    values = values.astype(dt, copy=True)
    if result_order == "F" and len(out_shape) > 1:
        values = np.ascontiguousarray(values.reshape(out_shape, order="F"))
    values = values.reshape(keep_shape)
    if operation == "sum" and values.dtype != sum_dtype(req.dtype) and not (
            folded and values.dtype == np.float64):
        # a server without option_wide_sum summed in the request dtype (may have overflowed)
        log.info("%s returned a %s sum of %s data", url, values.dtype.name, req.dtype.name)
        values = values.astype(sum_dtype(req.dtype))
    if operation == "select":
        bad = missing_mask(values, req.missing)
        counts = np.ones(keep_shape, np.int64) if bad is None else (~bad).astype(np.int64)
        total = (np.zeros(0, np.int64) if count is None or count == []
                 else _as_counts(count, url))
        if len(total) == 1 and int(total[0]) != int(counts.sum()):
            log.warning("server %s counted %s non-missing selected elements, client %s",
                        url, total[0], int(counts.sum()))
        elif len(total) == n and n != 1:
            counts = total.reshape(keep_shape)
        return Partial(values, counts)
    # one count per result element (the extension's values have a trailing axis: not counted)
    count_shape = keep_shape[:-1] if operation in wire_extension.RESULT_WIDTH else keep_shape
    nc = math.prod(count_shape)
    counts = _as_counts(count, url)
    if len(counts) != nc:
        raise _malformed(url, f"{len(counts)} counts for {nc} result elements")
    if nc > 1 and counts.min() == counts.max():  # nothing missing: one number, as the kernel's
        return Partial(values, np.broadcast_to(counts[:1].reshape((1,) * len(count_shape)),
                                               count_shape))
    return Partial(values, counts.reshape(count_shape))


def _as_counts(count: Any, url: str) -> np.ndarray:
    """A response's count (an integer, or a list of them: one per result value) as int64.

    Axis reductions bring one count per result value (64,800 for a 180 x 360 mean): the list is
    checked and converted in C, which took ~20 ms a response element by element."""
    if isinstance(count, (int, np.integer)) and not isinstance(count, bool):
        count = [int(count)]
    if isinstance(count, (list, tuple)) and all(
            issubclass(k, (int, np.integer)) and not issubclass(k, bool)
            for k in set(map(type, count))):
        try:
            return np.fromiter(count, np.int64, len(count))
        except OverflowError:
            pass
    raise _malformed(url, f"count {str(count)[:100]!r}")


def decode_v2(payload: Any, req: ChunkRequest, operation: str, url: str,
              folded: bool = False, result_order: str = "C") -> Partial:
    """A v2 CBOR response map -> Partial."""
    if not isinstance(payload, Mapping):
        raise _malformed(url, "expected a CBOR map")
    bo = payload.get("byte_order")
    shape = payload.get("shape")
    count = payload.get("count")
    if payload.get("shape_as_bytes") is not None:
        shape = np.frombuffer(payload["shape_as_bytes"],
                              "<u8" if bo == "little" else ">u8").tolist()
    if payload.get("count_as_bytes") is not None:
        count = np.frombuffer(payload["count_as_bytes"],
                              "<i8" if bo == "little" else ">i8").tolist()
    for key in ("bytes", "dtype"):
        if key not in payload:
            raise _malformed(url, f"no {key!r} in response")
    if shape is None:
        raise _malformed(url, "no 'shape' in response")
    return to_partial(payload["bytes"], payload["dtype"], bo, shape, count, req, operation, url,
                      folded, result_order)


def decode_v1(resp: Any, req: ChunkRequest, operation: str, url: str,
              result_order: str = "C") -> Partial:
    """A v1 response (raw bytes + x-activestorage-* headers) -> Partial.

    ``x-activestorage-count`` is a flat JSON list (``[100]``, ``[3,3,2,3]``); older servers sent a
    bare number or a nested list, which are read too."""
    h = resp.headers
    try:
        shape = json.loads(h["x-activestorage-shape"])
        count = json.loads(h["x-activestorage-count"])
        dtype = h["x-activestorage-dtype"]
    except (KeyError, ValueError) as exc:
        raise _malformed(url, f"missing or invalid x-activestorage header: {exc}") from exc
    bo = h.get("x-activestorage-byte-order", "little" if np.little_endian else "big")
    if isinstance(count, list) and count and isinstance(count[0], list):
        count = np.asarray(count).reshape(-1).tolist()
    return to_partial(resp.content, dtype, bo, shape, count, req, operation, url,
                      result_order=result_order)


def _decode_cbor(resp: Any, url: str) -> Any:
    import cbor2

    ctype = resp.headers.get("content-type", "")
    if "cbor" not in ctype:
        raise _malformed(url, f"content-type {ctype!r}, expected application/cbor",
                         resp.content[:200])
    try:
        return cbor2.loads(resp.content)
    except Exception as exc:  # noqa: BLE001 - cbor2 raises several types on junk
        raise _malformed(url, f"undecodable CBOR: {exc}") from exc


# ------------------------------------------------------------------------------ backend

class ServerBackend(Backend):
    """Reduce chunks on a Reductionist-compatible server (ours adds batching).

    ``url``: the server (default ``ACTIVESTORAGE_URL``). ``username``/``password``: Basic auth
    (default: the S3 access key and secret from ``storage_options``/AWS env vars, which the server
    uses upstream). ``storage_options``: s3fs-style, for the S3 endpoint of ``s3://`` URLs
    (``s3_endpoint`` overrides it when the server reaches S3 at another address). ``api_version``:
    2 (CBOR) or 1. ``batch``: True/False, or None to detect via ``GET /capabilities``.
    ``max_threads``: pool size and concurrent requests in ``reduce_chunks``. ``timeout``: seconds
    or (connect, read). ``verify``: TLS verification or a CA bundle path (default
    ``ACTIVESTORAGE_CA_BUNDLE``, else True). ``wide_sum``: ask for int64 integer sums.
    ``disable_chunk_cache``: send ``option_disable_chunk_cache`` (PyActiveStorage's option: the
    server should not cache the chunks it reads).
    """

    name = "server"
    batches_per_thread = 1  # one large batch request per thread
    fold_block_bytes = 64 * 2**20  # chunk bytes per folded batch: few, large requests

    def __init__(self, url: str | None = None, *, username: str | None = None,
                 password: str | None = None, storage_options: Mapping[str, Any] | None = None,
                 s3_endpoint_url: str | None = None, api_version: int = 2,
                 batch: bool | None = None, max_threads: int | None = None,
                 max_batch: int | None = None, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
                 timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
                 verify: bool | str | None = None, retries: int = 3, backoff: float = 0.1,
                 wide_sum: bool = True, storage_type: str | None = None,
                 disable_chunk_cache: bool = False,
                 env: Mapping[str, str] | None = None) -> None:
        super().__init__()
        env = os.environ if env is None else env
        url = url or env.get("ACTIVESTORAGE_URL")
        if not url:
            raise ServerError("no reduction server URL: pass active_storage_url= or set "
                              "ACTIVESTORAGE_URL", status=None, url=None)
        if api_version not in (1, 2):
            raise UnsupportedError(f"api_version must be 1 or 2, not {api_version!r}")
        self.url = url.rstrip("/")
        self.api_version = api_version
        self.max_threads = int(max_threads or env.get("ACTIVESTORAGE_THREADS") or 8)
        #: Active's thread count when the caller gives none (I/O bound: more than the cores)
        self.default_threads = self.max_threads
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.wide_sum = wide_sum
        self.storage_type = storage_type
        self.disable_chunk_cache = disable_chunk_cache
        self._env = env
        self.max_batch_bytes = max_batch_bytes
        self._batch_pref = batch if api_version == 2 else False
        self._max_batch = max_batch
        self._caps: dict[str, Any] | None = None
        self._caps_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._storage_options = storage_options
        self._local: Backend | None = None  # reduces what the server cannot (see .serves)
        opts = resolve_s3_options(storage_options, env)
        self.s3_endpoint_url = (s3_endpoint_url or s3_endpoint(opts)).rstrip("/")
        # Basic auth per store kind: the S3 key/secret go only with S3 requests (the server
        # passes HTTP-store credentials on to that host, which must never see an AWS secret).
        explicit = (username, password or "") if username is not None else None
        http_user = (storage_options or {}).get("username")
        self._auth: dict[str, tuple[str, str] | None] = {
            "s3": explicit or s3_credentials(opts),
            "http": explicit or ((str(http_user), str((storage_options or {}).get("password")
                                                      or "")) if http_user else None)}
        if verify is None:
            verify = env.get("ACTIVESTORAGE_CA_BUNDLE") or True
        # requests run on the caller's threads and on this backend's own pool: a connection each
        self.session = make_session(verify=verify, pool_size=2 * self.max_threads,
                                    retries=retries, backoff=backoff)

    def __repr__(self) -> str:  # never show credentials
        return f"ServerBackend({self.url!r}, api_version={self.api_version})"

    # --------------------------------------------------------------- capabilities
    def capabilities(self) -> dict[str, Any]:
        """The server's ``GET /capabilities`` answer (``{}`` for servers without it): fetched once
        per server URL for the whole process and reused for ``CAPABILITIES_TTL`` seconds, then
        kept by this backend for its lifetime (its batching must not change mid-call)."""
        with self._caps_lock:
            if self._caps is None:
                self._caps = cached_capabilities(self.url, self._fetch_capabilities,
                                                 env=self._env)
            return self._caps

    def _fetch_capabilities(self) -> dict[str, Any]:
        import requests

        url = f"{self.url}/capabilities"
        try:
            resp = self.session.get(url, timeout=self.timeout, verify=self.session.verify)
        except requests.RequestException as exc:
            raise ServerError(f"cannot reach reduction server {url}: {_root_cause(exc)}",
                              url=url) from exc
        self._account(bytes_received=len(resp.content), requests=1)
        if resp.status_code != 200:
            log.info("%s answered %s: no batching", url, resp.status_code)
            return {}
        try:
            caps = resp.json()
        except ValueError:
            return {}
        return caps if isinstance(caps, dict) else {}

    @property
    def batching(self) -> bool:
        """Whether ``reduce_chunks`` sends batches (detected once when ``batch=None``)."""
        if self._batch_pref is not None:
            return self._batch_pref
        return bool(self.capabilities().get("batch"))

    @property
    def max_batch(self) -> int:
        if self._max_batch:
            return self._max_batch
        n = self.capabilities().get("max_batch") if self._batch_pref is not False else None
        return int(n) if isinstance(n, int) and n > 0 else 1024

    def _result_order(self, req: ChunkRequest, operation: str) -> str:
        """The layout of this request's result bytes: the request's order (the spec), except
        from older versions of our own server, which sent C order (their capabilities lack
        ``result_order``). Asked only when it matters: order F, a result of 2+ dimensions."""
        if req.order != "F" or len(result_shapes(req, operation)[0]) < 2:
            return "C"
        caps = self.capabilities()
        if caps.get("name") == "activestorage" and caps.get("result_order") != "request":
            return "C"
        return "F"

    # ------------------------------------------------------- the moments extension
    def _extension(self) -> Mapping[str, Any] | None:
        """What the server's capabilities say of our moments extension (None: it lacks it)."""
        if self.api_version != 2:
            return None
        ext = (self.capabilities().get("extensions") or {}).get("moments")
        return ext if isinstance(ext, Mapping) else None

    def serves(self, operation: str, requests: Sequence[ChunkRequest] = ()) -> bool:
        """Whether the server computes ``operation`` (for all of ``requests``): every
        Reductionist operation, and our extension's (``moments``, ``minmax``, weights) where
        ``GET /capabilities`` lists them (v2 only)."""
        return not any(self._in_client(operation, requests or (None,)))

    def _in_client(self, operation: str,
                   requests: Sequence[ChunkRequest | None]) -> list[bool]:
        """Which of ``requests`` this process reduces itself: all of them when the server
        lacks ``operation``; a weighted one whose form of weights the server does not take, or
        whose weights would not fit in half the server's body limit (float64 bytes)."""
        if operation not in wire_extension.OPERATIONS:
            return [False] * len(requests)
        ext = self._extension()
        if ext is None or operation not in (ext.get("operations") or ()):
            return [True] * len(requests)
        forms = ext.get("weights") or ()
        limit = ext.get("max_body_bytes")
        budget = (limit if isinstance(limit, int) and limit > 0 else DEFAULT_MAX_BODY) // 2
        out = []
        for r in requests:
            w = getattr(r, "weights", None)
            out.append(w is not None and (
                ("axes" if isinstance(w, Mapping) else "values") not in forms
                or weights_nbytes(w) > budget))
        return out

    def _client_side(self, operation: str, nchunks: int) -> Backend:
        """The in-process backend (fetch, over the same stores) that reduces ``operation`` here
        because the server cannot: its work counts in this backend's stats, with the chunks in
        ``client_chunks``; the first time for a server, one log line says so."""
        with self._pool_lock:
            if self._local is None:
                from .fetch import FetchBackend

                local = FetchBackend(self._storage_options, max_threads=self.max_threads,
                                     retries=self.retries, env=self._env)
                # one account: bytes and requests of the fallback show in this backend's stats
                local._stats, local._stats_lock = self._stats, self._stats_lock
                self._local = local
        _log_fallback_once(self.url, operation, self.api_version)
        self._account(client_chunks=nchunks)
        return self._local

    # ------------------------------------------------------------------ one chunk
    def _routing(self, req: ChunkRequest) -> dict[str, Any]:
        if req.url is None:
            raise UnsupportedError("chunk request has no url")
        return routing_fields(req.url, self.api_version, self.s3_endpoint_url, self.storage_type)

    def _on_attempt(self, nbytes: int) -> None:
        self._account(bytes_received=nbytes, requests=1)

    def _auth_kind(self, req: ChunkRequest) -> str:
        routing = self._routing(req)
        return "s3" if routing.get("interface_type", "s3") == "s3" else "http"

    def reduce_chunk(self, request: ChunkRequest, operation: str) -> Partial:
        if not self.serves(operation, (request,)):
            return self._client_side(operation, 1).reduce_chunk(request, operation)
        routing = self._routing(request)
        weighted = getattr(request, "weights", None) is not None
        body = request_body(request, operation, routing, wide_sum=self.wide_sum,
                            disable_chunk_cache=self.disable_chunk_cache, binary=weighted)
        url = f"{self.url}/v{self.api_version}/{operation}/"
        if weighted:  # weights as float64 bytes (our server, which reads CBOR bodies)
            import cbor2

            data, ctype = cbor2.dumps(body), "application/cbor"
        else:
            data, ctype = json.dumps(body).encode(), "application/json"
        resp = post_with_retries(
            self.session, url, data=data,
            headers={"content-type": ctype}, timeout=self.timeout,
            retries=self.retries, backoff=self.backoff, on_attempt=self._on_attempt,
            auth=self._auth[self._auth_kind(request)])
        try:
            self._account(bytes_read=request.size or 0)
            raise_for_error(resp, url)
            order = self._result_order(request, operation)
            if self.api_version == 1:
                return decode_v1(resp, request, operation, url, order)
            return decode_v2(_decode_cbor(resp, url), request, operation, url,
                             result_order=order)
        finally:
            resp.close()

    # -------------------------------------------------------------------- batches
    def _split(self, requests: Sequence[ChunkRequest]) -> list[range]:
        n = len(requests)
        total = sum(r.nbytes for r in requests)
        # weights travel in the body: keep each batch's under half the server's body limit
        wbytes = sum(weights_nbytes(getattr(r, "weights", None)) for r in requests)
        ext = self._extension() if wbytes else None
        limit = (ext or {}).get("max_body_bytes")
        body_budget = (limit if isinstance(limit, int) and limit > 0 else DEFAULT_MAX_BODY) // 2
        parts = max(math.ceil(n / self.max_batch), math.ceil(total / self.max_batch_bytes),
                    math.ceil(wbytes / body_budget),
                    min(self.max_threads, n // MIN_SPLIT_BATCH), 1)
        size = math.ceil(n / parts)
        return [range(i, min(i + size, n)) for i in range(0, n, size)]

    def _reduce_batch(self, requests: Sequence[ChunkRequest], operation: str, kind: str,
                      fold: Sequence[int] | None = None) -> list[Partial | None]:
        """One batch POST (all items of one auth kind); a 413 splits it in two. With ``fold``
        ids the server combines results sharing an id (``None`` for the folded-away ones)."""
        import cbor2

        memo: dict[Any, Any] = {}  # the batch's chunks share their missing-data spec
        routes: dict[Any, dict[str, Any]] = {}  # ... and their object

        def routing(r: ChunkRequest) -> dict[str, Any]:
            got = routes.get(r.url)
            if got is None:
                got = routes[r.url] = self._routing(r)
            return got

        items = [request_body(r, operation, routing(r), wide_sum=self.wide_sum,
                              disable_chunk_cache=self.disable_chunk_cache, binary=True,
                              memo=memo)
                 for r in requests]
        body: dict[str, Any] = {"requests": items}
        if fold is not None:
            body["fold"] = list(fold)
        url = f"{self.url}/v2/batch/{operation}"
        resp = post_with_retries(
            self.session, url, data=cbor2.dumps(body),
            headers={"content-type": "application/cbor", "accept": "application/cbor"},
            timeout=self.timeout, retries=self.retries, backoff=self.backoff,
            on_attempt=self._on_attempt, auth=self._auth[kind])
        try:
            if resp.status_code in (404, 405):
                raise _NoBatch()
            if resp.status_code == 413 and len(requests) > 1:
                half = len(requests) // 2
                log.info("%s: batch of %d is too large; splitting", url, len(requests))
                return (self._reduce_batch(requests[:half], operation, kind,
                                           None if fold is None else fold[:half])
                        + self._reduce_batch(requests[half:], operation, kind,
                                             None if fold is None else fold[half:]))
            self._account(bytes_read=sum(r.size or 0 for r in requests))
            raise_for_error(resp, url)
            payload = _decode_cbor(resp, url)
        finally:
            resp.close()
        results = payload.get("results") if isinstance(payload, Mapping) else None
        if not isinstance(results, list) or len(results) != len(requests):
            raise _malformed(url, f"expected {len(requests)} results")
        out: list[Partial | None] = []
        seen: set[int] = set()
        for i, (res, r) in enumerate(zip(results, requests)):
            if res is None and fold is not None and fold[i] in seen:
                out.append(None)  # folded into an earlier item's result
            else:
                out.append(decode_v2(res, r, operation, f"{url} (item {i})", fold is not None,
                                     self._result_order(r, operation)))
            if fold is not None:
                seen.add(fold[i])
        return out

    @property
    def folds(self) -> bool:  # type: ignore[override]
        """Whether batches can ask the server to fold results (ours says so in capabilities)."""
        return self.api_version == 2 and self.batching and bool(self.capabilities().get("fold"))

    def reduce_chunks(self, requests: Sequence[ChunkRequest], operation: str) -> list[Partial]:
        """Reduce many chunks: batched against our server, else one request per chunk; the
        requests (or batches) run concurrently on ``max_threads`` connections."""
        return self._reduce(requests, operation, None)  # type: ignore[return-value]

    def reduce_and_fold(self, requests: Sequence[ChunkRequest], operation: str,
                        slots: Sequence[Hashable]) -> list[Partial | None]:
        if requests and all(self._in_client(operation, requests)):  # folded here, then
            return self._client_side(operation, len(requests)).reduce_and_fold(
                requests, operation, slots)
        if operation == "select" or not self.folds:
            return list(self.reduce_chunks(requests, operation))
        ids: dict[Hashable, int] = {}
        return self._reduce(requests, operation, [ids.setdefault(s, len(ids)) for s in slots])

    def _reduce(self, requests: Sequence[ChunkRequest], operation: str,
                fold: list[int] | None) -> list[Partial | None]:
        if not requests:
            return []
        here = self._in_client(operation, requests)
        if all(here):
            return list(self._client_side(operation, len(requests)).reduce_chunks(
                requests, operation))
        if any(here):  # some chunks' weights cannot go to the server: those are reduced here
            mine = [i for i, h in enumerate(here) if h]
            theirs = [i for i, h in enumerate(here) if not h]
            out: list[Partial | None] = [None] * len(requests)
            local = self._client_side(operation, len(mine)).reduce_chunks(
                [requests[i] for i in mine], operation)
            remote = self._reduce([requests[i] for i in theirs], operation,
                                  None if fold is None else [fold[i] for i in theirs])
            for idx, parts in ((mine, local), (theirs, remote)):
                for i, p in zip(idx, parts):
                    out[i] = p
            return out
        if len(requests) > 1 and self.batching:
            by_kind: dict[str, list[int]] = {}
            for i, r in enumerate(requests):
                by_kind.setdefault(self._auth_kind(r), []).append(i)
            jobs = [(kind, [idx[j] for j in rg]) for kind, idx in by_kind.items()
                    for rg in self._split([requests[i] for i in idx])]
            try:
                results = self._map(lambda job: self._reduce_batch(
                    [requests[i] for i in job[1]], operation, job[0],
                    None if fold is None else [fold[i] for i in job[1]]), jobs)
            except _NoBatch:
                results = None
            if results is not None:
                out: list[Partial | None] = [None] * len(requests)
                for (_, idx), parts in zip(jobs, results):
                    for i, p in zip(idx, parts):
                        out[i] = p
                return out
            log.warning("%s has no batch endpoint; falling back to per-chunk requests", self.url)
            self._batch_pref = False
        return self._map(lambda r: self.reduce_chunk(r, operation), list(requests))

    def _map(self, fn: Any, items: Sequence[Any]) -> list[Any]:
        if len(items) == 1 or self.max_threads <= 1:
            return [fn(x) for x in items]
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_threads, thread_name_prefix="as-server")
            pool = self._pool
        futures = [pool.submit(fn, x) for x in items]
        try:
            return [f.result() for f in futures]
        finally:
            for f in futures:
                f.cancel()

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
            local, self._local = self._local, None
        if pool is not None:
            pool.shutdown(wait=True)
        if local is not None:
            local.close()
        self.session.close()


_FALLBACK_LOGGED: set[tuple[str, int]] = set()
_FALLBACK_LOCK = threading.Lock()


def _log_fallback_once(url: str, operation: str, api_version: int) -> None:
    """One log line per server (and API version) for the whole process: the server lacks our
    moments extension, so its operations run here, on bytes this process fetches."""
    with _FALLBACK_LOCK:
        if (url, api_version) in _FALLBACK_LOGGED:
            return
        _FALLBACK_LOGGED.add((url, api_version))
    why = ("the v1 API has no extension" if api_version != 2
           else "its GET /capabilities does not list our moments extension")
    log.warning("reduction server %s cannot compute %s (%s): computing such reductions (var, "
                "std, range, rms, sum_of_squares, weighted means) in this process from fetched "
                "chunk bytes; Active.stats.chunks_in_client counts them", url, operation, why)


class _NoBatch(Exception):
    """The server answered 404/405 to a batch request."""


# -------------------------------------------------------------- PyActiveStorage entry point

def reduce_chunk(session: Any, server: str, url: str, offset: int, size: int, compression: Any,
                 filters: Any, missing: Any, dtype: Any, shape: Sequence[int], order: str,
                 chunk_selection: Sequence[Any] | None, axis: Any, operation: str | None,
                 storage_type: str | None = None, *, api_version: int = 2,
                 s3_endpoint_url: str | None = None, timeout: Any = DEFAULT_TIMEOUT,
                 retries: int = 3, wide_sum: bool = True,
                 disable_chunk_cache: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Reduce one chunk on ``server`` through ``session``, PyActiveStorage style.

    ``chunk_selection``: a slice (or int) per axis; ``missing``: (fill_value, missing_value,
    valid_min, valid_max); ``compression``/``filters``: numcodecs codecs (or dicts) or None;
    ``operation``: count/min/max/sum/select (``mean`` sends ``sum``; None means ``select``);
    ``storage_type="s3"`` treats an http(s) ``url`` as an S3 path-style object URL.
    Returns ``(values, counts)`` as NumPy arrays in the server's result shape (counts per element
    for ``select``).
    """
    entry = OPERATIONS.get(operation) if operation is not None else OPERATIONS["select"]
    op = entry.partial if entry is not None else operation  # the server refuses unknown ones
    dt = np.dtype(dtype)
    shape = tuple(int(n) for n in shape)
    selection = None
    if chunk_selection is not None:
        selection = []
        for s, n in zip(chunk_selection, shape):
            if not isinstance(s, slice):
                s = slice(int(s), int(s) + 1 if int(s) != -1 else None, 1)
            selection.append(s.indices(n))
        selection = tuple(selection)
    from ..compat import codec_spec, missing_from_tuple  # the peer's argument forms, parsed once

    filt = [f for f in (codec_spec(x) for x in (filters or [])) if f is not None]
    for f in filt:
        if f.get("id") == "shuffle" and not f.get("element_size"):
            f["element_size"] = dt.itemsize
    req = make_request(dt, shape, offset=int(offset), size=None if size is None else int(size),
                       url=url, order=order or "C", selection=selection, axis=axis,
                       compression=codec_spec(compression), filters=tuple(filt),
                       missing=missing_from_tuple(missing))
    kind = url_kind(url)
    if kind == "s3" and s3_endpoint_url is None:
        raise UnsupportedError(f"pass s3_endpoint_url= to reduce {url}")
    routing = routing_fields(url, api_version, s3_endpoint_url, storage_type)
    body = request_body(req, op, routing, wide_sum=wide_sum,
                        disable_chunk_cache=disable_chunk_cache)
    endpoint = f"{server.rstrip('/')}/v{api_version}/{op}/"
    resp = post_with_retries(session, endpoint, data=json.dumps(body).encode(),
                             headers={"content-type": "application/json"}, timeout=timeout,
                             retries=retries)
    try:
        raise_for_error(resp, endpoint)
        if api_version == 1:  # results in the request's order, as the spec says
            part = decode_v1(resp, req, op, endpoint, req.order)
        else:
            part = decode_v2(_decode_cbor(resp, endpoint), req, op, endpoint,
                             result_order=req.order)
    finally:
        resp.close()
    out_shape, _ = result_shapes(req, op)
    return part.values.reshape(out_shape), part.counts.reshape(out_shape)
