"""Our v2 API extension on the wire: the ``moments``/``minmax`` results and the ``weights`` field.

Both sides read this module: the server (:mod:`activestorage.server.wire`) to validate requests
and shape answers, our client (:mod:`activestorage.backends.server`) to write requests and check
answers. ``moments`` answers float64 of the reduced shape + ``[4]`` (``sw, mean, m2, sw2`` per
element, see :mod:`activestorage.kernel`), ``minmax`` the data dtype of the reduced shape + ``[2]``
(``min, max``); counts as for ``sum``, one per element of the reduced shape.

A weighted ``moments`` request carries, for its one chunk, the weights the kernel applies to the
chunk's *selected* elements (see :class:`~activestorage.request.ChunkRequest` ``weights``). Three
forms, each an object with exactly one key:

``{"axes": {"1": [w, ...], "2": <bytes>}}``
    separable weights: per weighted axis (a decimal string in JSON; an integer is accepted too,
    negative counting from the end), that axis's weights over the chunk's selected elements, as
    numbers or (CBOR) little-endian float64 bytes; ``null`` leaves the axis unweighted.
``{"values": {"shape": [...], "data": [w, ...] | <bytes>}}``
    N-D weights sent inline (C order, little-endian float64 bytes in CBOR), broadcast against the
    chunk's selected region.
``{"array": {"url": ..., "offset": ..., "size": ..., "dtype": ..., "shape": ..., ...}}``
    N-D weights read by the server from their own byte range: a data description like a v2 body's
    (``interface_type`` defaults to the data's; ``selection`` picks the block; no ``axis`` or
    ``missing``), read with the same allow-list, credentials and limits as the data, its selected
    block broadcast against the chunk's selected region.

Every weight must be finite and >= 0. :func:`parse` validates a body's field (errors name it,
e.g. ``weights.axes.1``) and :func:`encode` writes a request's weights for our client. The server
resolves an ``array`` reference (:func:`resolve_array`) once its bytes are in.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Union

import numpy as np

from .errors import RequestValidationError

__all__ = ["OPERATIONS", "REFERENCE_OPERATIONS", "RESULT_WIDTH", "WeightsRef", "Weights", "parse", "encode",
           "check_values", "resolve_array", "FORMS", "broadcastable"]

#: the extension's operations, with the values per result element (their trailing axis)
RESULT_WIDTH = {"moments": 4, "minmax": 2}
OPERATIONS = tuple(RESULT_WIDTH)
#: the operations the Reductionist API itself defines (v1 serves only these)
REFERENCE_OPERATIONS = ("count", "min", "max", "sum", "select")

#: the forms of the ``weights`` field, as ``GET /capabilities`` lists them
FORMS = ("axes", "values", "array")
#: fields of an ``array`` reference that make no sense for weights
_REFUSED_ARRAY_FIELDS = ("axis", "missing")

_F64_LE = np.dtype("<f8")


class WeightsRef(NamedTuple):
    """An ``array`` reference before its bytes are read: the body describing them (routing and
    numeric fields, ``interface_type`` filled in) for the server to validate and fetch."""

    body: Mapping[str, Any]


#: what a parsed ``weights`` field is: separable per-axis arrays, one N-D array, or a reference
Weights = Union[dict[int, np.ndarray], np.ndarray, WeightsRef]


def selected_shape(shape: tuple[int, ...],
                   selection: tuple[tuple[int, int, int], ...] | None) -> tuple[int, ...]:
    """The shape of a chunk's selected region."""
    if selection is None:
        return tuple(shape)
    return tuple(len(range(a, b, c)) for a, b, c in selection)


def broadcastable(shape: tuple[int, ...], to: tuple[int, ...]) -> bool:
    """Whether an array of ``shape`` broadcasts to exactly ``to`` (NumPy's rules)."""
    if len(shape) > len(to):
        return False
    return all(a == 1 or a == b for a, b in zip(reversed(shape), reversed(to)))


def check_values(w: np.ndarray, field: str) -> None:
    """Refuse a weight that is negative, NaN or infinite (naming the first one)."""
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        i = int(np.flatnonzero(bad.reshape(-1))[0])
        raise RequestValidationError(
            field, f"weights must be finite and >= 0; element {i} is {w.reshape(-1)[i]!r}")


def _numbers(v: Any, field: str, n_max: int) -> np.ndarray:
    """A list of numbers or little-endian float64 bytes as a float64 array (checked)."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        if len(b) % 8:
            raise RequestValidationError(field, f"{len(b)} bytes are not a whole number of "
                                                "float64 values")
        if len(b) // 8 > n_max:
            raise RequestValidationError(field, f"{len(b) // 8} weights exceed the {n_max} "
                                                "expected")
        w = np.frombuffer(b, _F64_LE).astype(np.float64)
    elif isinstance(v, (list, tuple)):
        if len(v) > n_max:
            raise RequestValidationError(field, f"{len(v)} weights exceed the {n_max} expected")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise RequestValidationError(field, "must be a list of numbers (or float64 bytes)")
        try:
            w = np.array(v, dtype=np.float64)
        except OverflowError:
            raise RequestValidationError(field, "a weight is too large for float64") from None
    else:
        raise RequestValidationError(field, "must be a list of numbers or float64 bytes")
    check_values(w, field)
    return w


def _axis(key: Any, ndim: int) -> int:
    field = f"weights.axes.{key}"
    if isinstance(key, str):
        try:
            a = int(key)
        except ValueError:
            raise RequestValidationError(field, "axis keys must be integers") from None
    elif isinstance(key, int) and not isinstance(key, bool):
        a = key
    else:
        raise RequestValidationError("weights.axes", f"axis key {key!r} is not an integer")
    if not -ndim <= a < ndim:
        raise RequestValidationError(field, f"axis {a} is out of range for {ndim} dimensions")
    return a % ndim


def parse(v: Any, operation: str, shape: tuple[int, ...],
          selection: tuple[tuple[int, int, int], ...] | None,
          data_interface: str | None = None) -> Weights | None:
    """The ``weights`` field of a request for ``operation`` over a chunk of ``shape`` with
    ``selection``, validated (:class:`RequestValidationError` naming the field).

    Separable weights come back as ``{axis: float64 array}`` (lengths checked against the
    selection), inline N-D weights as one float64 array (shape broadcastable to the selected
    region), an ``array`` reference as a :class:`WeightsRef` for the server to read."""
    if v is None:
        return None
    if operation != "moments":
        raise RequestValidationError("weights", f"only the moments operation takes weights, "
                                                f"not {operation}")
    if not isinstance(v, Mapping) or len(v) != 1 or next(iter(v)) not in FORMS:
        raise RequestValidationError(
            "weights", "must be an object with exactly one of " + ", ".join(map(repr, FORMS)))
    form, spec = next(iter(v.items()))
    sel = selected_shape(shape, selection)
    if form == "axes":
        if not isinstance(spec, Mapping):
            raise RequestValidationError("weights.axes", 'must be an object {"<axis>": [...]}')
        out: dict[int, np.ndarray] = {}
        for key, ws in spec.items():
            a = _axis(key, len(shape))
            if a in out:
                raise RequestValidationError(f"weights.axes.{key}", f"axis {a} is given twice")
            if ws is None:
                continue
            field = f"weights.axes.{key}"
            w = _numbers(ws, field, sel[a])
            if len(w) != sel[a]:
                raise RequestValidationError(
                    field, f"{len(w)} weights for axis {a}, whose selection has {sel[a]} "
                           "elements in this chunk")
            out[a] = w
        # nothing selected: no element has a weight (validated, then dropped)
        return out if math.prod(sel) else None
    if form == "values":
        if not isinstance(spec, Mapping):
            raise RequestValidationError("weights.values", 'must be an object {"shape", "data"}')
        wshape = spec.get("shape")
        if not isinstance(wshape, (list, tuple)) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in wshape):
            raise RequestValidationError("weights.values.shape",
                                         "must be a list of positive integers")
        wshape = tuple(wshape)
        if not broadcastable(wshape, sel):
            raise RequestValidationError(
                "weights.values.shape", f"{list(wshape)} does not broadcast to the selected "
                                        f"region {list(sel)}")
        n = math.prod(wshape)
        w = _numbers(spec.get("data"), "weights.values.data", n)
        if w.size != n:
            raise RequestValidationError("weights.values.data",
                                         f"{w.size} weights for shape {list(wshape)} ({n})")
        return w.reshape(wshape) if math.prod(sel) else None
    # an array reference: numeric fields checked by the server (with its limits), here the shape
    if not isinstance(spec, Mapping):
        raise RequestValidationError("weights.array", "must be an object describing a byte "
                                                      "range like a v2 body")
    for name in _REFUSED_ARRAY_FIELDS:
        if spec.get(name) is not None:
            raise RequestValidationError(f"weights.array.{name}",
                                         "is not allowed for weights")
    body = dict(spec)
    if body.get("interface_type") is None and data_interface is not None:
        body["interface_type"] = data_interface
    return WeightsRef(body)


def resolve_array(values: np.ndarray, shape: tuple[int, ...],
                  selection: tuple[tuple[int, int, int], ...] | None) -> np.ndarray | None:
    """The selected block of an ``array`` reference, as float64 weights for the data chunk of
    ``shape``/``selection`` (checked: broadcastable, finite, >= 0; None when nothing of the
    data is selected)."""
    sel = selected_shape(shape, selection)
    if not broadcastable(values.shape, sel):
        raise RequestValidationError(
            "weights.array", f"the selected weights of shape {list(values.shape)} do not "
                             f"broadcast to the data's selected region {list(sel)}")
    w = np.asarray(values, dtype=np.float64)
    check_values(w, "weights.array")
    return w if math.prod(sel) else None


def encode(weights: Any, binary: bool) -> dict[str, Any] | None:
    """A request's in-process weights (``{axis: 1-D}`` or an N-D array) as the wire field;
    ``binary``: float64 bytes (CBOR bodies) rather than lists of numbers (JSON)."""
    if weights is None:
        return None

    def data(w: Any) -> Any:
        a = np.ascontiguousarray(np.asarray(w, dtype=np.float64))
        return a.astype(_F64_LE, copy=False).tobytes() if binary else a.reshape(-1).tolist()

    if isinstance(weights, Mapping):
        return {"axes": {str(int(a)): None if w is None else data(w)
                         for a, w in sorted(weights.items())}}
    arr = np.asarray(weights)
    return {"values": {"shape": [int(n) for n in arr.shape] or [1], "data": data(arr)}}
