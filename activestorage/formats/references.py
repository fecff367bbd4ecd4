"""Chunk manifests: save a dataset's chunk index once, open it later with no store requests.

Two formats are read:

* **activestorage manifests** (written by :func:`~activestorage.formats.manifest.write_manifest` /
  ``activestorage manifest``): per
  variable the dtype, byte order, shape, chunk shape, order, codecs, missing-data description,
  packing, attributes and every chunk's locator ``[object, offset, size]``, where ``object`` indexes
  a list of ``{"url", "etag", "version_id"}`` -- so a read can be pinned to the object version the
  manifest was written against (the fetch backend sends ``If-Match``/``VersionId``; our server gets
  ``etag``/``version_id`` in the request body and does the same);
* **kerchunk reference JSON**, version 1 (``{"version": 1, "templates", "gen", "refs"}``) and
  version 0 (the refs at top level): a Zarr v2 store whose chunks are ``[url, offset, length]``.

Several files can be combined along one dimension into one virtual variable (:func:`concatenate`).
Layout of a manifest::

    {"activestorage_manifest": 1, "created": "...", "variables": {"tas": {
        "source": ..., "format": "hdf5", "dtype": "float32", "byte_order": "little", "order": "C",
        "shape": [...], "chunk_shape": [...], "dimensions": [...],
        "compression": {"id": "zlib"} | null, "filters": [...],
        "missing": {"values": [...], "valid_min": x | null, "valid_max": x | null},
        "fill_value": x, "scale_factor": {"dtype", "value"} | null, "add_offset": ... ,
        "attrs": {...}, "objects": [{"url", "etag", "version_id"}, ...],
        "chunks": {"0.0.0": [object, offset, size] (, {"compression", "filters", "no_compression"})}}}}

Floats that JSON cannot hold are written as the strings "NaN", "Infinity", "-Infinity".

**Pinning.** :func:`~activestorage.formats.manifest.write_manifest` records, per S3 object, the ETag (always) and the version id
(when the bucket is versioned), and checks each locator lies inside its object. From then on a
locator's ``etag``/``version_id`` travel in :class:`~activestorage.request.ChunkRequest` and:

* the fetch backend sends ``GetObject(IfMatch='"<etag>"', VersionId=...)`` for S3 and an
  ``If-Match`` header for HTTP; a 412, or a response ETag that differs, raises
  :class:`~activestorage.errors.ObjectChangedError` ("object changed since manifest was written");
* the server backend puts ``"etag"``/``"version_id"`` in the request body (other servers ignore
  unknown fields); our server reads upstream with ``If-Match``/``?versionId=`` and answers 409 with
  the same message.

A locator pinned to a version id alone reads that version even after the object is overwritten.
"""

from __future__ import annotations

import functools
import datetime as _dt
import itertools
import logging
import math
import os
from dataclasses import replace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import (FormatError, ObjectChangedError, StorageError,
                      UnsupportedError, VariableNotFoundError)
from ..request import Missing
from .base import Locator, Variable
from .choose import Candidate
from .chunk_index import ChunkIndex

log = logging.getLogger(__name__)

MANIFEST_KEY = "activestorage_manifest"
MANIFEST_VERSION = 1
#: refuse manifests larger than this (a manifest is read whole into memory).
MAX_MANIFEST_BYTES = int(os.environ.get("ACTIVESTORAGE_MAX_MANIFEST_BYTES", 1 << 30))


# ------------------------------------------------------------------------- JSON values

def _num(v: Any) -> Any:
    """A JSON-able number: numpy scalars unwrapped, non-finite floats as strings."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
    return v


def _unnum(v: Any, dtype: np.dtype, where: str) -> Any:
    """The inverse of :func:`_num` into a scalar of ``dtype``."""
    if v is None:
        return None
    if isinstance(v, str):
        special = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}
        if v not in special or dtype.kind != "f":
            raise FormatError(f"{where}: {v!r} is not a {dtype.name} value")
        v = special[v]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise FormatError(f"{where}: {v!r} is not a number")
    if dtype.kind in "iu" and (isinstance(v, float) or not
                               np.iinfo(dtype).min <= v <= np.iinfo(dtype).max):
        raise FormatError(f"{where}: {v!r} is not a {dtype.name} value")
    if dtype.kind == "f" and math.isfinite(v) and abs(v) > float(np.finfo(dtype).max):
        raise FormatError(f"{where}: {v!r} does not fit {dtype.name}")
    return dtype.type(v)


def _jsonable(v: Any) -> Any:
    """Attribute values as JSON (arrays as lists, bytes as text)."""
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()] if v.ndim else _jsonable(v.item())
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if isinstance(v, (np.generic, float)):
        return _num(v)
    if v is None or isinstance(v, (str, int, bool)):
        return v
    return str(v)


def _typed(v: Any) -> dict[str, Any] | None:
    if v is None:
        return None
    a = np.asarray(v)
    return {"dtype": a.dtype.name, "value": _num(a.reshape(-1)[0])}


def _untyped(v: Any, where: str) -> Any:
    if v is None:
        return None
    if not isinstance(v, Mapping) or "dtype" not in v or "value" not in v:
        raise FormatError(f"{where}: must be {{\"dtype\": ..., \"value\": ...}}")
    try:
        if not isinstance(v["dtype"], str):
            raise TypeError(v["dtype"])
        dt = np.dtype(v["dtype"])
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{where}: unknown dtype {v['dtype']!r}") from exc
    return _unnum(v["value"], dt, where)


def _key(coords: Sequence[int]) -> str:
    return ".".join(str(int(i)) for i in coords)


# ------------------------------------------------------------------------- write

def variable_to_dict(var: Variable) -> dict[str, Any]:
    """One variable's manifest entry."""
    objects: list[dict[str, Any]] = []
    index: dict[tuple[str, str | None, str | None], int] = {}
    chunks: dict[str, list[Any]] = {}
    for coords in sorted(var.chunks):
        loc = var.chunks[coords]
        ident = (loc.url, loc.etag, loc.version_id)
        if ident not in index:
            index[ident] = len(objects)
            obj: dict[str, Any] = {"url": _absolute(loc.url)}
            if loc.etag:
                obj["etag"] = loc.etag
            if loc.version_id:
                obj["version_id"] = loc.version_id
            objects.append(obj)
        entry: list[Any] = [index[ident], int(loc.offset), int(loc.size)]
        over: dict[str, Any] = {}
        if loc.compression is not None:
            over["compression"] = dict(loc.compression)
        if loc.filters is not None:
            over["filters"] = [dict(f) for f in loc.filters]
        if loc.no_compression:
            over["no_compression"] = True
        if over:
            entry.append(over)
        chunks[_key(coords)] = entry
    m = var.missing
    return {
        "source": _absolute(var.source), "format": var.format, "dtype": var.dtype.name,
        "byte_order": var.byte_order, "order": var.order, "shape": list(var.shape),
        "chunk_shape": list(var.chunk_shape), "dimensions": list(var.dimensions),
        "compression": dict(var.compression) if var.compression is not None else None,
        "filters": [dict(f) for f in var.filters],
        "missing": {"values": [_num(x) for x in m.values], "valid_min": _num(m.valid_min),
                    "valid_max": _num(m.valid_max)},
        "fill_value": _num(var.fill_value), "scale_factor": _typed(var.scale_factor),
        "add_offset": _typed(var.add_offset), "attrs": _jsonable(var.attrs),
        "objects": objects, "chunks": chunks,
    }


def _absolute(url: str) -> str:
    """Local paths are recorded absolute, so the manifest works from any directory."""
    path = url.removeprefix("file://")
    if "://" in path or not os.path.exists(path):
        return url
    return os.path.abspath(path)


def manifest_from_variables(variables: Iterable[Variable]) -> dict[str, Any]:
    """A manifest document holding ``variables`` (keyed by their names)."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {MANIFEST_KEY: MANIFEST_VERSION, "created": now,
            "variables": {v.name: variable_to_dict(v) for v in variables}}


def _identity(urls: Iterable[str], storage_options: Mapping[str, Any] | None
              ) -> dict[str, dict[str, Any]]:
    """``{url: {"size", "etag", "version_id"}}`` for each object (one HEAD per S3 object)."""
    from ..stores import local_path, open_store, url_kind

    out: dict[str, dict[str, Any]] = {}
    s3 = None
    try:
        for url in urls:
            kind = url_kind(url)
            if kind == "file":
                try:
                    out[url] = {"size": os.path.getsize(local_path(url))}
                except OSError as exc:
                    raise StorageError(f"{url}: {exc.strerror or exc}", status=404,
                                       store=url) from exc
            elif kind == "s3":
                s3 = s3 or open_store(url, storage_options)
                info = s3.head(url)
                out[url] = {"size": info.size,
                            "etag": info.etag.strip('"') if info.etag else None,
                            "version_id": info.version_id or None}
            else:
                out[url] = {}
    finally:
        if s3 is not None:
            s3.close()
    return out


def _unversioned_buckets(buckets: set[str], storage_options: Mapping[str, Any] | None) -> set[str]:
    """The buckets among ``buckets`` that have never had versioning enabled."""
    if not buckets:
        return set()
    from ..stores.s3 import S3Store

    out = set()
    with S3Store(storage_options) as s3:
        for b in buckets:
            try:
                if not s3.bucket_versioned(b):
                    out.add(b)
            except StorageError as exc:  # unknown: fall back to a HEAD per object
                log.debug("cannot tell whether bucket %s is versioned: %s", b, exc)
    return out


def pin(var: Variable, storage_options: Mapping[str, Any] | None = None, *,
        identities: dict[str, dict[str, Any]] | None = None) -> Variable:
    """Check every locator lies inside its object and pin S3 locators to ETag/version id.

    A locator already pinned must match the object now (else :class:`ObjectChangedError`).
    """
    chunks = var.chunks
    if isinstance(chunks, ChunkIndex):  # no Locator per chunk: exceptions + the shared object
        locators = list(chunks.exceptions.values())
        if len(chunks):  # it stands for the other chunks (offset 0 if one starts the object)
            first = 0 if bool((chunks.offsets == 0).any()) else 1
            locators.append(Locator(chunks.url, first, 0, chunks.etag, chunks.version_id))
    else:
        locators = list(chunks.values())
    urls = sorted({loc.url for loc in locators})
    ids = identities if identities is not None else {}
    missing = [u for u in urls if u not in ids]
    # Zarr chunk objects come from a listing that gave their ETag and size already: in a bucket
    # without versioning a HEAD per object would add nothing.
    listed = {loc.url for loc in locators
              if loc.etag and loc.offset == 0 and loc.url.startswith("s3://")}
    unversioned = _unversioned_buckets({u.split("/")[2] for u in listed}, storage_options)
    for u in [u for u in missing if u in listed and u.split("/")[2] in unversioned]:
        ids[u] = {}
        missing.remove(u)
    ids.update(_identity(missing, storage_options))
    if isinstance(chunks, ChunkIndex):
        var.chunks = _pin_index(var, chunks, ids)
    else:
        var.chunks = {coords: _pin_locator(var, coords, loc, ids) for coords, loc in chunks.items()}
    return var


def _pin_locator(var: Variable, coords: tuple[int, ...], loc: Locator,
                 ids: Mapping[str, Mapping[str, Any]]) -> Locator:
    """``loc`` checked against its object's identity (size, ETag) and pinned to it."""
    ident = ids.get(loc.url, {})
    size = ident.get("size")
    if size is not None and loc.offset + loc.size > size:
        raise FormatError(f"{var.name} chunk {_key(coords)}: bytes {loc.offset}-"
                          f"{loc.offset + loc.size} lie past the end of {loc.url} ({size} bytes)")
    etag, vid = ident.get("etag"), ident.get("version_id")
    if loc.etag and etag and loc.etag != etag:
        raise ObjectChangedError(f"object changed since it was opened: {loc.url}", status=409,
                                 store=loc.url)
    return Locator(loc.url, loc.offset, loc.size, etag=loc.etag or etag,
                   version_id=loc.version_id or vid, compression=loc.compression,
                   filters=loc.filters, no_compression=loc.no_compression)


def _pin_index(var: Variable, index: ChunkIndex,
               ids: Mapping[str, Mapping[str, Any]]) -> ChunkIndex:
    """:func:`pin` for a compact index: the shared object is checked once, with the furthest chunk
    end from the arrays; exceptions one by one. The result shares the arrays."""
    shared = [c for c, loc in index.exceptions.items() if loc.url != index.url]
    written = index.offsets >= 0
    if shared:  # exceptions in other objects are checked on their own
        written = written.copy()
        for c in shared:
            written[c] = False
    ends = np.where(written, index.offsets + index.sizes.astype(np.int64), -1)
    if ends.size and ends.max() >= 0:
        far = np.unravel_index(int(ends.argmax()), ends.shape)
        coords = tuple(int(i) for i in far)
        _pin_locator(var, coords, Locator(index.url, int(index.offsets[coords]),
                                          int(index.sizes[coords]), index.etag,
                                          index.version_id), ids)
    ident = ids.get(index.url, {})
    etag, vid = ident.get("etag"), ident.get("version_id")
    if index.etag and etag and index.etag != etag:
        raise ObjectChangedError(f"object changed since it was opened: {index.url}", status=409,
                                 store=index.url)
    exceptions = {c: _pin_locator(var, c, loc, ids) for c, loc in index.exceptions.items()}
    return ChunkIndex(index.url, index.offsets, index.sizes, index.etag or etag,
                      index.version_id or vid, exceptions)


def save_manifest(doc: Mapping[str, Any], path: str,
                  storage_options: Mapping[str, Any] | None = None) -> None:
    """Write a manifest document as JSON to a local path or an ``s3://`` URL."""
    import json

    text = json.dumps(doc, separators=(",", ":"), allow_nan=False)
    if "://" in path and not path.startswith("file://"):
        from ..stores.s3 import S3Store
        from ..stores.urls import url_kind

        if url_kind(path) != "s3":
            raise StorageError(f"{path}: manifests are written to local paths and s3:// only",
                               status=400, store=path)
        with S3Store(storage_options) as s3:
            s3.write_object(path, text.encode())
        return
    tmp = path.removeprefix("file://") + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path.removeprefix("file://"))


# ------------------------------------------------------------------------- concatenate

def concatenate(variables: Sequence[Variable], dim: str | int) -> Variable:
    """Join variables from several files along dimension ``dim`` (a name or an axis) into one.

    Every part but the last must fill whole chunks along ``dim`` so the chunk grid stays regular;
    dtype, byte order, order, chunk shape, the other axes' lengths, missing data, fill value and
    packing must agree. Codecs may differ: they become per-chunk overrides.
    """
    if not variables:
        raise FormatError("nothing to concatenate")
    first = variables[0]
    if isinstance(dim, str):
        if dim not in first.dimensions:
            raise FormatError(f"{first.source}: {first.name} has no dimension {dim!r} "
                              f"(dimensions: {', '.join(first.dimensions) or 'none'})")
        axis = first.dimensions.index(dim)
    else:
        axis = int(dim)
    if not 0 <= axis < first.ndim:
        raise FormatError(f"{first.name}: cannot concatenate along axis {dim} of a "
                          f"{first.ndim}-d variable")
    variables = _align_contiguous(variables, axis)
    first = variables[0]
    step = first.chunk_shape[axis]
    chunks: dict[tuple[int, ...], Locator] = {}
    length = 0
    for i, v in enumerate(variables):
        where = f"{v.source}: {v.name}"
        for what in ("dtype", "byte_order", "order", "chunk_shape", "missing", "scale_factor",
                     "add_offset"):
            a, b = getattr(v, what), getattr(first, what)
            if not _same(a, b):
                raise FormatError(f"{where}: {what} {a!r} differs from {b!r} in {first.source}; "
                                  "cannot concatenate")
        if v.ndim != first.ndim or any(n != m for k, (n, m) in enumerate(zip(v.shape, first.shape))
                                      if k != axis):
            raise FormatError(f"{where}: shape {v.shape} does not match {first.shape} off axis "
                              f"{axis}; cannot concatenate")
        if not _same(v.fill_value, first.fill_value) and len(v.chunks) < v.nchunks:
            raise FormatError(f"{where}: fill value {v.fill_value!r} differs from "
                              f"{first.fill_value!r} and some chunks are unwritten")
        if i < len(variables) - 1 and v.shape[axis] % step:
            raise FormatError(f"{where}: length {v.shape[axis]} along {dim!r} is not a multiple of "
                              f"the chunk length {step}; cannot concatenate into a regular grid")
        shift = length // step
        for coords, loc in v.chunks.items():
            new = tuple(c + shift if k == axis else c for k, c in enumerate(coords))
            comp = loc.compression if loc.compression is not None else v.compression
            filt = loc.filters if loc.filters is not None else v.filters
            same = _same(comp, first.compression) and _same(tuple(filt), tuple(first.filters))
            if same and not loc.no_compression:
                loc = Locator(loc.url, loc.offset, loc.size, loc.etag, loc.version_id)
            else:
                loc = Locator(loc.url, loc.offset, loc.size, loc.etag, loc.version_id,
                              compression=None if comp is None else dict(comp),
                              filters=tuple(dict(f) for f in filt),
                              no_compression=loc.no_compression or comp is None)
            chunks[new] = loc
        length += v.shape[axis]
    shape = tuple(length if k == axis else n for k, n in enumerate(first.shape))
    return Variable(
        name=first.name, source=first.source, dtype=first.dtype, shape=shape,
        chunk_shape=first.chunk_shape, chunks=chunks, byte_order=first.byte_order,
        order=first.order, compression=first.compression, filters=first.filters,
        missing=first.missing, fill_value=first.fill_value, scale_factor=first.scale_factor,
        add_offset=first.add_offset, attrs=dict(first.attrs), dimensions=first.dimensions,
        format=first.format)


def _contiguous(v: Variable) -> bool:
    """One uncompressed C-order chunk covering the whole variable: any row slab is a byte range."""
    return (v.nchunks == 1 and len(v.chunks) == 1 and tuple(v.chunk_shape) == tuple(v.shape)
            and v.compression is None and not v.filters and v.order == "C"
            and not next(iter(v.chunks.values())).filters
            and next(iter(v.chunks.values())).compression is None)


def _align_contiguous(variables: Sequence[Variable], axis: int) -> list[Variable]:
    """Contiguous parts of different lengths along axis 0 (netCDF-3 fixed variables, unchunked
    netCDF-4) are re-chunked into equal slabs of ``gcd(lengths)`` rows so they concatenate."""
    out = list(variables)
    lengths = [v.shape[0] for v in out if v.ndim]
    if (axis != 0 or len(out) < 2 or not all(v.ndim and _contiguous(v) for v in out)
            or len({v.chunk_shape[0] for v in out}) == 1):
        return out
    rows = math.gcd(*lengths) or 1
    for k, v in enumerate(out):
        loc = next(iter(v.chunks.values()))
        row_bytes = math.prod(v.shape[1:]) * v.dtype.itemsize
        if loc.size != v.shape[0] * row_bytes:
            return list(variables)  # not what it seems: leave it to the checks
        chunks = {(i,) + (0,) * (v.ndim - 1): Locator(
                      loc.url, loc.offset + i * rows * row_bytes, rows * row_bytes, loc.etag,
                      loc.version_id) for i in range(v.shape[0] // rows)}
        out[k] = replace(v, chunk_shape=(rows, *v.shape[1:]), chunks=chunks)
    return out


def _same(a: Any, b: Any) -> bool:
    """Equality of metadata values that treats NaN as equal to NaN (fill and missing values)."""
    def canon(v: Any) -> Any:
        if isinstance(v, Missing):
            return ([_num(x) for x in v.values], _num(v.valid_min), _num(v.valid_max))
        if isinstance(v, np.dtype):
            return v.str
        return _jsonable(v)
    return repr(canon(a)) == repr(canon(b))


# ------------------------------------------------------------------------- read

def load(path_or_dict: str | Mapping[str, Any], storage_options: Mapping[str, Any] | None = None
         ) -> tuple[dict[str, Any], str]:
    """The JSON document and a name for error messages."""
    if isinstance(path_or_dict, Mapping):
        return dict(path_or_dict), "<manifest dict>"
    path = os.fspath(path_or_dict)
    from ..stores.fileobj import open_url

    with open_url(path, storage_options) as f:
        if int(f.size) > MAX_MANIFEST_BYTES:
            raise FormatError(f"{path}: manifest of {f.size} bytes exceeds the "
                              f"{MAX_MANIFEST_BYTES}-byte limit (ACTIVESTORAGE_MAX_MANIFEST_BYTES)")
        raw = f.read()
    import json  # here, not at module level: a fresh process opening netCDF never needs it

    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise FormatError(f"{path}: a manifest must be a JSON object")
    return doc, path


def _kind(doc: Mapping[str, Any], where: str) -> str:
    if MANIFEST_KEY in doc:
        if doc[MANIFEST_KEY] != MANIFEST_VERSION:
            raise UnsupportedError(f"{where}: manifest version {doc[MANIFEST_KEY]!r} is not "
                                   f"supported (this reader knows {MANIFEST_VERSION})")
        return "manifest"
    if "refs" in doc:
        if doc.get("version", 1) != 1:
            raise UnsupportedError(f"{where}: kerchunk reference version {doc.get('version')!r} "
                                   "is not supported (1 is)")
        return "kerchunk"
    if any(k == ".zgroup" or k.endswith("/.zarray") or k == ".zarray" for k in doc):
        return "kerchunk0"
    raise FormatError(f"{where} is neither an activestorage manifest nor kerchunk references")


def _req(d: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(d, Mapping) or key not in d:
        raise FormatError(f"{where}: missing {key!r}")
    return d[key]


def variable_from_dict(entry: Mapping[str, Any], name: str, where: str) -> Variable:
    """Rebuild a :class:`Variable` from its manifest entry, validating every field."""
    w = f"{where}: variable {name!r}"
    try:
        raw_dtype = _req(entry, "dtype", w)
        if not isinstance(raw_dtype, str):
            raise TypeError(raw_dtype)
        dtype = np.dtype(raw_dtype)
    except FormatError:  # a ValueError too: not an unknown dtype but a missing one
        raise
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{w}: unknown dtype {entry.get('dtype')!r}") from exc
    if dtype.kind not in "iuf":
        raise UnsupportedError(f"{w}: dtype {dtype} cannot be reduced")
    shape = _ints(_req(entry, "shape", w), f"{w}: shape", 0)
    chunk_shape = _ints(_req(entry, "chunk_shape", w), f"{w}: chunk_shape", 1)
    if len(shape) != len(chunk_shape):
        raise FormatError(f"{w}: shape and chunk_shape have different lengths")
    byte_order = entry.get("byte_order", "little")
    order = entry.get("order", "C")
    if byte_order not in ("little", "big") or order not in ("C", "F"):
        raise FormatError(f"{w}: byte_order must be little/big and order C/F")
    comp = entry.get("compression")
    filters = entry.get("filters") or []
    _check_codecs(comp, filters, dtype, w)
    m = entry.get("missing") or {}
    if not isinstance(m, Mapping) or not isinstance(m.get("values") or [], list):
        raise FormatError(f"{w}: missing must be {{\"values\": [...], \"valid_min\", "
                          "\"valid_max\"}")
    missing = Missing(
        values=tuple(_unnum(x, dtype, f"{w}: missing.values") for x in (m.get("values") or [])),
        valid_min=_unnum(m.get("valid_min"), dtype, f"{w}: missing.valid_min"),
        valid_max=_unnum(m.get("valid_max"), dtype, f"{w}: missing.valid_max"))
    objects = _req(entry, "objects", w)
    if not isinstance(objects, list):
        raise FormatError(f"{w}: objects must be a list")
    for i, o in enumerate(objects):
        if (not isinstance(o, Mapping) or not isinstance(o.get("url"), str)
                or not all(isinstance(o.get(k), (str, type(None))) for k in ("etag", "version_id"))):
            raise FormatError(f"{w}: objects[{i}] must be {{\"url\": str, \"etag\": str, "
                              "\"version_id\": str}")
    raw_chunks = _req(entry, "chunks", w)
    if not isinstance(raw_chunks, Mapping):
        raise FormatError(f"{w}: chunks must be an object")
    grid = tuple(math.ceil(n / c) for n, c in zip(shape, chunk_shape))
    chunks: dict[tuple[int, ...], Locator] = {}
    for key, e in raw_chunks.items():
        we = f"{w}: chunk {key!r}"
        try:
            coords = tuple(int(p) for p in key.split(".")) if key else ()
        except ValueError as exc:
            raise FormatError(f"{we}: key must be dot-separated chunk indices") from exc
        if len(coords) != len(shape) or any(not 0 <= c < g for c, g in zip(coords, grid)):
            raise FormatError(f"{we}: outside the chunk grid {list(grid)}")
        if (not isinstance(e, list) or len(e) not in (3, 4)
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in e[:3])):
            raise FormatError(f"{we}: must be [object, offset, size] (+ overrides)")
        obj, off, size = e[:3]
        if not 0 <= obj < len(objects) or off < 0 or size < 1:
            raise FormatError(f"{we}: object index, offset or size out of range")
        over = e[3] if len(e) == 4 else {}
        if not isinstance(over, Mapping) or not isinstance(over.get("no_compression", False), bool):
            raise FormatError(f"{we}: overrides must be an object "
                              '{"compression", "filters", "no_compression": bool}')
        if "compression" in over or "filters" in over:
            _check_codecs(over.get("compression"), over.get("filters") or [], dtype, we)
        o = objects[obj]
        chunks[coords] = Locator(
            o["url"], off, size, etag=o.get("etag"), version_id=o.get("version_id"),
            compression=over.get("compression"),
            filters=tuple(over["filters"]) if "filters" in over else None,
            no_compression=bool(over.get("no_compression", False)))
    attrs = entry.get("attrs") or {}
    dims = entry.get("dimensions") or []
    if not isinstance(attrs, Mapping):
        raise FormatError(f"{w}: attrs must be an object")
    if (not isinstance(dims, list) or not all(isinstance(d, str) for d in dims)
            or len(dims) not in (0, len(shape))):
        raise FormatError(f"{w}: dimensions must be a list of {len(shape)} names")
    return Variable(
        name=name, source=str(entry.get("source", where)), dtype=dtype, shape=shape,
        chunk_shape=chunk_shape, chunks=chunks, byte_order=byte_order, order=order,
        compression=comp, filters=tuple(filters), missing=missing,
        fill_value=_unnum(entry.get("fill_value"), dtype, f"{w}: fill_value"),
        scale_factor=_untyped(entry.get("scale_factor"), f"{w}: scale_factor"),
        add_offset=_untyped(entry.get("add_offset"), f"{w}: add_offset"),
        attrs=dict(attrs), dimensions=tuple(dims),
        format=str(entry.get("format", "")))


def _ints(v: Any, where: str, minimum: int) -> tuple[int, ...]:
    if not isinstance(v, list) or len(v) > 32 or not all(
            isinstance(x, int) and not isinstance(x, bool) and minimum <= x <= 2**62 for x in v):
        raise FormatError(f"{where}: must be a list of at most 32 integers >= {minimum}")
    return tuple(v)


def _check_codecs(comp: Any, filters: Any, dtype: np.dtype, where: str) -> None:
    """Codecs must be ones the kernel knows (checked with the wire validator's rules)."""
    from ..errors import RequestValidationError
    from ..request import ChunkRequest

    if not isinstance(filters, list) or not all(isinstance(f, Mapping) for f in filters):
        raise FormatError(f"{where}: filters must be a list of objects")
    body = {"dtype": dtype.name, "shape": [1], "compression": comp,
            "filters": [{k: v for k, v in f.items() if k != "outer"} for f in filters]}
    try:
        ChunkRequest.from_wire(body)
    except RequestValidationError as exc:
        raise UnsupportedError(f"{where}: {exc}") from exc


def open_references(path_or_dict: str | Mapping[str, Any], ncvar: str,
                    storage_options: Mapping[str, Any] | None = None) -> Variable:
    """Open ``ncvar`` from a manifest or kerchunk reference file (path, URL or parsed dict).

    An activestorage manifest makes no request to the data store at all.
    """
    doc, where = load(path_or_dict, storage_options)
    kind = _kind(doc, where)
    if kind == "manifest":
        variables = doc.get("variables")
        if not isinstance(variables, Mapping):
            raise FormatError(f"{where}: 'variables' must be an object")
        if ncvar not in variables:
            raise VariableNotFoundError(f"{where} has no variable {ncvar!r}; variables: "
                                        f"{', '.join(variables) or 'none'}")
        return variable_from_dict(variables[ncvar], ncvar, where)
    return _open_kerchunk(doc, ncvar, where, storage_options)


def list_variables(path_or_dict: str | Mapping[str, Any],
                   storage_options: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """``{name: {"dimensions", "shape", "dtype"}}`` of every variable in a manifest/kerchunk file."""
    doc, where = load(path_or_dict, storage_options)
    if _kind(doc, where) == "manifest":
        return {n: {"dimensions": list(e.get("dimensions") or []), "shape": list(e.get("shape")),
                    "dtype": e.get("dtype")} for n, e in (doc.get("variables") or {}).items()}
    refs = _kerchunk_refs(doc, where)
    out = {}
    for key in sorted(refs):
        if key.endswith(".zarray"):
            name = key[: -len("/.zarray")] if "/" in key else ""
            meta = _json_ref(refs[key], key, where)
            attrs = _json_ref(refs.get(f"{name}/.zattrs" if name else ".zattrs", "{}"), key, where)
            out[name] = {"dimensions": list(attrs.get("_ARRAY_DIMENSIONS") or []),
                         "shape": list(meta.get("shape", [])),
                         "dtype": np.dtype(meta["dtype"]).newbyteorder("=").name
                         if isinstance(meta.get("dtype"), str) else str(meta.get("dtype"))}
    return out


# ------------------------------------------------------------------------- kerchunk

def _kerchunk_refs(doc: Mapping[str, Any], where: str) -> dict[str, Any]:
    if "refs" not in doc:
        return dict(doc)  # version 0
    refs = doc["refs"]
    if not isinstance(refs, Mapping):
        raise FormatError(f"{where}: 'refs' must be an object")
    refs = dict(refs)
    templates = doc.get("templates") or {}
    if templates:
        refs = {k: _template_ref(v, templates) for k, v in refs.items()}
    for i, gen in enumerate(doc.get("gen") or []):
        refs.update(_expand_gen(gen, templates, f"{where}: gen[{i}]"))
    return refs


def _render(text: str, env: Mapping[str, Any], where: str) -> str:
    """Render ``{{ expr }}`` templates with jinja2, as kerchunk (and fsspec) do.

    A sandboxed environment (reference files come from anywhere) with undefined names an error;
    each distinct template text is compiled once (``gen`` renders one per key).
    """
    if "{{" not in text:
        return text
    import jinja2

    try:
        return _template(text).render(**env)
    except jinja2.TemplateSyntaxError as exc:
        raise FormatError(f"{where}: bad template expression in {text!r} ({exc})") from exc
    except (jinja2.UndefinedError, jinja2.exceptions.SecurityError) as exc:
        raise UnsupportedError(f"{where}: template {text!r} is not supported ({exc})") from exc


@functools.lru_cache(maxsize=1024)
def _template(text: str) -> Any:
    return _jinja_env().from_string(text)


@functools.cache
def _jinja_env() -> Any:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)


def _template_ref(v: Any, templates: Mapping[str, Any]) -> Any:
    if isinstance(v, list) and v and isinstance(v[0], str) and "{{" in v[0]:
        return [_render(v[0], templates, "templates")] + v[1:]
    return v


def _expand_gen(gen: Mapping[str, Any], templates: Mapping[str, Any], where: str
                ) -> dict[str, Any]:
    dims = gen.get("dimensions") or {}
    names, ranges = [], []
    for name, spec in dims.items():
        if isinstance(spec, list):
            ranges.append(spec)
        elif isinstance(spec, Mapping):
            ranges.append(range(int(spec.get("start", 0)), int(spec["stop"]),
                                int(spec.get("step", 1))))
        else:
            raise FormatError(f"{where}: dimension {name!r} must be a list or a range object")
        names.append(name)
    out = {}
    for values in itertools.product(*ranges):
        env = {**templates, **dict(zip(names, values))}
        key = _render(_req(gen, "key", where), env, where)
        url = _render(_req(gen, "url", where), env, where)
        if "offset" in gen and "length" in gen:
            out[key] = [url, int(_render(str(gen["offset"]), env, where)),
                        int(_render(str(gen["length"]), env, where))]
        else:
            out[key] = [url]
    return out


def _json_ref(v: Any, key: str, where: str) -> Any:
    import base64
    import json

    if isinstance(v, Mapping):
        return dict(v)
    if isinstance(v, (str, bytes)):
        text = v.decode() if isinstance(v, bytes) else v
        if text.startswith("base64:"):
            text = base64.b64decode(text[7:]).decode()
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise FormatError(f"{where}: {key} is not valid JSON: {exc}") from exc
    raise FormatError(f"{where}: {key} must hold JSON metadata")


def _open_kerchunk(doc: Mapping[str, Any], ncvar: str, where: str,
                   storage_options: Mapping[str, Any] | None) -> Variable:
    from .zarr import variable_from_metadata

    refs = _kerchunk_refs(doc, where)
    name = ncvar.strip("/")
    prefix = f"{name}/" if name else ""
    if prefix + ".zarray" not in refs:
        names = [k[: -len("/.zarray")] for k in refs if k.endswith("/.zarray")]
        raise VariableNotFoundError(f"{where} has no array {ncvar!r}; arrays: "
                                    f"{', '.join(sorted(names)) or 'none'}")
    meta = _json_ref(refs[prefix + ".zarray"], prefix + ".zarray", where)
    attrs = _json_ref(refs.get(prefix + ".zattrs", "{}"), prefix + ".zattrs", where)
    from .zarr import _key_decoder, layout

    decode = _key_decoder(meta, len(layout(meta, f"{where}: {name}")["shape"]))
    whole: dict[str, str] = {}
    objects: dict[str, Locator] = {}
    for k, v in refs.items():
        if not k.startswith(prefix) or decode(k[len(prefix):]) is None:
            continue
        if isinstance(v, (str, bytes)):
            raise UnsupportedError(f"{where}: chunk {k} is inlined in the references; only "
                                   "chunks stored in objects ([url, offset, length]) can be reduced")
        if not isinstance(v, list) or len(v) not in (1, 3) or not isinstance(v[0], str):
            raise FormatError(f"{where}: reference {k} must be [url] or [url, offset, length]")
        if len(v) == 3:
            off, size = v[1], v[2]
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in (off, size)) \
                    or off < 0 or size < 1:
                raise FormatError(f"{where}: reference {k} has a bad offset/length {v[1:]}")
            objects[k[len(prefix):]] = Locator(v[0], off, size)
        else:
            whole[k] = v[0]
            objects[k[len(prefix):]] = Locator(v[0], 0, -1)  # size filled in below

    var = variable_from_metadata(meta, attrs, name, where, objects, fmt="kerchunk")
    if whole:  # [url] references need the objects' sizes
        ids = _identity(sorted(set(whole.values())), storage_options)
        var.chunks = {c: (Locator(loc.url, 0, int(ids[loc.url]["size"]),
                                  etag=ids[loc.url].get("etag"),
                                  version_id=ids[loc.url].get("version_id"))
                          if loc.size < 0 else loc) for c, loc in var.chunks.items()}
    if var.chunks:
        # the data's location, not the reference file's, decides which backend reads it
        var.source = next(iter(var.chunks.values())).url
    return var


# ------------------------------------------------------------------------- CLI


# --------------------------------------------------------------------------- the reader

class ReferencesReader:
    """JSON reference documents: activestorage manifests and kerchunk references (versions 0 and
    1), as a path, a URL or an already parsed dict."""

    name = "json"
    title = "manifest"

    def can_open(self, head: bytes, url: str) -> bool:
        return head.lstrip()[:1] == b"{"

    def open(self, source: str | Mapping[str, Any], ncvar: str,
             storage_options: Mapping[str, Any] | None = None, *, file: Any = None) -> Variable:
        return open_references(source, ncvar, storage_options=storage_options)

    def list_variables(self, source: str | Mapping[str, Any],
                       storage_options: Mapping[str, Any] | None = None, *,
                       file: Any = None) -> list[Candidate]:
        doc, where = load(source, storage_options)
        if _kind(doc, where) == "manifest":
            return [Candidate(n, tuple(e.get("dimensions") or ()), e.get("attrs") or {},
                              dtype=str(e.get("dtype")))
                    for n, e in (doc.get("variables") or {}).items()]
        listed = list_variables(doc)
        refs = _kerchunk_refs(doc, where)
        out = []
        for name, entry in listed.items():
            attrs = _json_ref(refs.get(f"{name}/.zattrs" if name else ".zattrs", "{}"),
                              f"{name}/.zattrs", where)
            out.append(Candidate(name, tuple(entry["dimensions"]), attrs, dtype=entry["dtype"]))
        return out

