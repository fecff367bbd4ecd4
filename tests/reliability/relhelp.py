"""Shared checks for the reliability suite: what an acceptable answer to a hostile request is.

``check_answer`` is the contract every fuzz test enforces: no 5xx, every rejection a 4xx
``{"error": {"message", "caused_by"}}`` JSON body whose message names the field at fault (or the
object/store for upstream answers), and every 200 a well-formed result -- checked against NumPy
when the request reads one of the known arrays plainly (``oracle``).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping

import cbor2
import numpy as np

#: every name a rejection may point at (request fields, batch items, the body itself, the route).
FIELDS = ("dtype", "byte_order", "offset", "size", "shape", "order", "selection", "axis",
          "compression", "filters", "missing", "url", "interface_type", "source", "bucket",
          "object", "requests", "body", "option_", "etag", "version_id", "operation", "path",
          "fold")
_FIELD_RE = re.compile(r"\b(" + "|".join(FIELDS) + r")")
ERROR_STATUSES = (400, 401, 403, 404, 405, 409, 413, 415)


def error_body(resp: Any) -> dict[str, Any]:
    """The ``error`` object of an error response, asserting the API's error shape."""
    ctype = resp.headers.get("content-type", "")
    assert ctype.startswith("application/json"), (resp.status_code, ctype, resp.content[:300])
    body = resp.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err, dict) and isinstance(err.get("message"), str) and err["message"], body
    assert set(err) <= {"message", "caused_by"}, body
    if "caused_by" in err:
        assert isinstance(err["caused_by"], list) and all(isinstance(c, str)
                                                          for c in err["caused_by"]), body
    return err


def names_field(message: str, *extra: str) -> bool:
    """Does ``message`` point at a request field (or one of ``extra``: host, object name)?"""
    return bool(_FIELD_RE.search(message)) or any(e and e in message for e in extra)


def check_answer(resp: Any, *, context: Any = None, extra_names: tuple[str, ...] = ()) -> None:
    """Assert the fuzzing contract for one response (see module docstring)."""
    st = resp.status_code
    assert st < 500, f"{st} for {str(context)[:600]}: {resp.content[:600]!r}"
    if st >= 400:
        assert st in ERROR_STATUSES, (st, resp.content[:300], str(context)[:300])
        err = error_body(resp)
        if st in (400, 409, 413):
            assert names_field(err["message"], "allow-list", "limit", *extra_names), (
                f"rejection does not name the field: {err['message']!r} for {str(context)[:400]}")
        return
    assert st == 200, (st, resp.content[:200])


def decode_result(resp: Any, api: str, order: str | None = "C") -> tuple[np.ndarray, Any]:
    """(values, count) of a 200 answer of v1 (raw + headers) or v2 (CBOR); the result bytes are
    in the request's ``order``, as the spec says."""
    order = order if order in ("C", "F") else "C"
    if api == "v1":
        h = resp.headers
        dt = np.dtype(h["x-activestorage-dtype"]).newbyteorder(
            "<" if h["x-activestorage-byte-order"] == "little" else ">")
        shape = json.loads(h["x-activestorage-shape"])
        return (np.frombuffer(resp.content, dt).reshape(shape, order=order),
                json.loads(h["x-activestorage-count"]))
    assert resp.headers["content-type"].startswith("application/cbor"), resp.headers
    m = cbor2.loads(resp.content)
    dt = np.dtype(m["dtype"]).newbyteorder("<" if m["byte_order"] == "little" else ">")
    return np.frombuffer(m["bytes"], dt).reshape(m["shape"], order=order), m["count"]


def oracle(body: Mapping[str, Any], op: str, array: np.ndarray) -> np.ndarray | None:
    """NumPy's answer for a plain (uncompressed, no missing) request over all of ``array``'s
    bytes, or None when the body is not such a request (then only the shape of the answer is
    checked)."""
    if any(body.get(k) is not None for k in ("compression", "filters", "missing")):
        return None
    if body.get("dtype") != array.dtype.name or body.get("byte_order", "little") not in (
            None, "little") or body.get("offset") not in (None, 0):
        return None
    shape = body.get("shape") or [array.size]
    if math.prod(shape) != array.size or body.get("size") not in (None, array.nbytes):
        return None
    x = array.reshape(-1).reshape(shape, order=body.get("order") or "C")
    sel = body.get("selection")
    if sel is not None:
        x = x[tuple(slice(a, b, c) for a, b, c in sel)]
    if op == "select":
        return x
    axis = body.get("axis")
    axes = tuple(range(x.ndim)) if axis is None else tuple(
        sorted(a % x.ndim for a in ([axis] if isinstance(axis, int) else axis)))
    if op == "count":
        return np.full([n for i, n in enumerate(x.shape) if i not in axes], 1, np.int64) * \
            math.prod(x.shape[i] for i in axes)
    if x.size == 0 or any(x.shape[i] == 0 for i in axes):
        return None  # min/max of nothing: undefined (count 0 tells)
    return {"sum": np.sum, "min": np.min, "max": np.max}[op](x, axis=axes)


def server_alive(proc: Any) -> None:
    """Fail with the server's log tail if its process died."""
    assert proc.proc.poll() is None, f"server died:\n{proc.log_text()[-3000:]}"
