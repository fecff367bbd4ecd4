"""Helpers behind PyActiveStorage's public module paths (``activestorage.reductionist``,
``activestorage.storage``'s chunk functions, ``activestorage.active``'s loaders, ...).

They keep its argument conventions -- numcodecs codecs, a ``(fill_value, missing_value,
valid_min, valid_max)`` tuple, ``method`` as a NumPy function or a name -- and run on this
package's kernel and server client, so the numbers are the ones ``Active`` computes.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import InvalidArgumentError, UnsupportedError
from .operations import OPERATIONS
from .kernel import reduce_chunk as _kernel_reduce
from .request import Missing, make_request

log = logging.getLogger(__name__)

#: NumPy functions PyActiveStorage passes as ``method``, by their ``__name__`` (its one-number
#: partials only: a peer could not combine moments/minmax partials)
_METHOD_NAMES = {"amin": "min", "amax": "max",
                 **{name: op.partial for name, op in OPERATIONS.items()
                    if op.method and not OPERATIONS[op.partial].fields}}


def method_name(method: Any) -> str | None:
    """``np.ma.min`` / ``np.max`` / ``"min"`` ... -> the kernel operation (None: plain data).

    A mean is computed from its sum and count, so ``"mean"`` becomes ``"sum"``, as in the peer.
    """
    if method is None:
        return None
    name = method if isinstance(method, str) else getattr(method, "__name__", None)
    op = _METHOD_NAMES.get(str(name))
    if op is None:
        raise InvalidArgumentError(f"unknown method {method!r}; use min, max, sum or mean")
    return op


def missing_from_tuple(missing: Any) -> Missing | None:
    """PyActiveStorage's ``(fill_value, missing_value, valid_min, valid_max)`` as a Missing."""
    if missing is None or isinstance(missing, Missing):
        return missing
    fill_value, missing_value, valid_min, valid_max = missing
    values: list[Any] = []
    for v in (fill_value, missing_value):
        if v is not None:
            values.extend(np.atleast_1d(np.asarray(v)).tolist())
    m = Missing(values=tuple(values), valid_min=valid_min, valid_max=valid_max)
    return None if m.is_empty() else m


def mask_missing(data: Any, missing: Any) -> np.ma.MaskedArray:
    """``data`` masked where the missing-data tuple (or :class:`Missing`) says, with the same
    rules the kernel applies to every chunk."""
    from .kernel import missing_mask

    arr = np.ma.asarray(data)
    m = missing_from_tuple(missing)
    if m is None:
        return arr
    mask = missing_mask(np.ma.getdata(arr), m)
    if mask is None:
        return arr
    return np.ma.MaskedArray(np.ma.getdata(arr), mask=np.ma.getmaskarray(arr) | mask)


def codec_spec(codec: Any) -> dict[str, Any] | None:
    """A numcodecs codec (or a dict, or an id) as a compression/filter request dict."""
    if codec is None:
        return None
    if isinstance(codec, Mapping):
        return dict(codec)
    if isinstance(codec, str):
        return {"id": codec}
    cid = getattr(codec, "codec_id", None)
    if cid is None:
        raise UnsupportedError(f"cannot decode with codec {codec!r}")
    if cid == "shuffle":
        return {"id": "shuffle", "element_size": int(getattr(codec, "elementsize", 0) or 0)}
    return {"id": cid}


def chunk_request(offset: int, size: int, compression: Any, filters: Any, missing: Any,
                  dtype: Any, shape: Sequence[int], order: str,
                  chunk_selection: Sequence[Any] | None, axis: Any, url: str | None = None,
                  method: Any = "reduce") -> Any:
    """A ChunkRequest from PyActiveStorage's per-chunk arguments (``axis`` None: all axes;
    no axis at all for plain data, ``method`` None)."""
    dt = np.dtype(dtype)
    shape = tuple(int(n) for n in shape)
    selection = None
    if chunk_selection is not None:
        selection = []
        for s, n in zip(chunk_selection, shape):
            if not isinstance(s, slice):
                i = int(s) % n
                s = slice(i, i + 1, 1)
            selection.append(s.indices(n))
        selection = tuple(selection)
    filt = [f for f in (codec_spec(x) for x in (filters or [])) if f is not None]
    for f in filt:
        if f.get("id") == "shuffle" and not f.get("element_size"):
            f["element_size"] = dt.itemsize
    if method is None:
        axis = None
    elif axis is None:
        axis = tuple(range(len(shape)))
    return make_request(dt, shape, offset=int(offset), size=None if size is None else int(size),
                        url=url, order=order or "C", selection=selection, axis=axis,
                        compression=codec_spec(compression), filters=tuple(filt),
                        missing=missing_from_tuple(missing))


def reduce_bytes(raw: Any, req: Any, method: Any) -> tuple[np.ma.MaskedArray, Any]:
    """Reduce one chunk's stored bytes; ``(values, counts)`` with keepdims shapes, or
    ``(selected data, None)`` when ``method`` is None -- PyActiveStorage's return convention."""
    op = method_name(method)
    part = _kernel_reduce(raw, req, op or "select")
    sel_shape = tuple(len(range(*s)) for s in req.selection) if req.selection else req.shape
    if op is None:
        values = np.asarray(part.values).reshape(sel_shape)
        return np.ma.MaskedArray(values, mask=np.asarray(part.counts).reshape(sel_shape) == 0), None
    axes = set(req.axis or ())
    shape = tuple(1 if i in axes else n for i, n in enumerate(sel_shape))
    counts = np.asarray(part.counts).reshape(shape)
    values = np.ma.MaskedArray(np.asarray(part.values).reshape(shape), mask=counts == 0)
    return values, counts


# ---------------------------------------------------------------- dataset loaders

def _pyfive() -> Any:
    try:
        import pyfive
    except ImportError as exc:  # pragma: no cover - pyfive is a dependency
        raise UnsupportedError("these PyActiveStorage helpers need pyfive (pip install "
                               "pyfive)") from exc
    return pyfive


def load_from_s3(uri: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """A pyfive ``File`` of an S3 object (``s3://bucket/key`` or ``bucket/key``).

    ``storage_options``: s3fs options; None means the AWS environment variables (PyActiveStorage
    used its config module's MinIO defaults instead).
    """
    from .storage import resolve_s3_options, s3_filesystem

    fs = s3_filesystem(resolve_s3_options(storage_options))
    return _pyfive().File(fs.open(uri.split("://", 1)[-1], "rb"))


def load_from_https(uri: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """A pyfive ``File`` of an http(s) URL (``username``/``password`` in ``storage_options``
    for Basic auth)."""
    import fsspec

    from .storage import http_options

    fs = fsspec.filesystem("http", skip_instance_cache=True,
                           **http_options(storage_options, 30.0))
    return _pyfive().File(fs.open(uri, "rb"))


def _one(x: Any) -> Any:
    """A one-element attribute array as its element (netCDF attributes are arrays)."""
    if x is None or np.isscalar(x):
        return x
    arr = np.asarray(x)
    return arr.reshape(-1)[0] if arr.size == 1 else x


def get_missing_attributes(ds: Any) -> tuple[Any, Any, Any, Any]:
    """``(_FillValue, missing_value, valid_min, valid_max)`` from a variable's attributes.

    ``valid_range`` fills ``valid_min``/``valid_max``; giving it together with either of them is
    contradictory and raises :class:`~activestorage.errors.InvalidArgumentError` (a ValueError).
    """
    attrs = ds.attrs
    fill = _one(attrs.get("_FillValue"))
    missing_value = _one(attrs.get("missing_value"))
    vmin, vmax = _one(attrs.get("valid_min")), _one(attrs.get("valid_max"))
    vrange = attrs.get("valid_range")
    if vrange is not None:
        if vmin is not None or vmax is not None:
            raise InvalidArgumentError(f"valid_range {vrange!r} given together with valid_min "
                                       f"{vmin!r} / valid_max {vmax!r}")
        vmin, vmax = np.asarray(vrange).reshape(-1)[:2]
    return fill, missing_value, vmin, vmax


def get_endpoint_url(storage_options: Mapping[str, Any] | None) -> str | None:
    """The S3 endpoint in ``storage_options`` (``endpoint_url`` or
    ``client_kwargs["endpoint_url"]``), or None."""
    so = storage_options or {}
    return so.get("endpoint_url") or (so.get("client_kwargs") or {}).get("endpoint_url")


def env_default(name: str, default: Any) -> Any:
    """``$name`` if set (and non-empty), else ``default``."""
    return os.environ.get(name) or default
