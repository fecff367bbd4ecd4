"""Zarr v2 and v3 arrays (local directories, ``s3://`` and ``http(s)://`` URLs) as :class:`Variable`s.

The ``zarr`` package reads the metadata (groups, consolidated metadata, v2/v3 documents) through
our byte stores (:class:`.zarr_store.ByteStoreZarr`, a zarr ``Store`` over
:mod:`activestorage.stores`: the same options, connections and typed errors as every other read);
we turn its JSON form into a chunk index: each chunk is a whole object (offset 0, size = object
size, found with one listing of the array's prefix; an HTTP store cannot be listed, so each
possible chunk object is probed with a HEAD). Chunks absent from the store are absent from the index and
read as ``fill_value``. A sharded v3 array (``sharding_indexed``) is indexed by reading each shard's
index: an inner chunk is then a byte range inside its shard object.

Codecs map onto the kernel's request model: the bytes->bytes pipeline becomes one ``compression``
plus ``filters`` (shuffle, fletcher32), the v3 ``bytes`` codec gives the byte order and a full
``transpose`` gives Fortran order. Anything else raises :class:`UnsupportedError` naming the codec.

Missing data: CF attributes (``_FillValue``, ``missing_value``, ``valid_min``/``valid_max``/
``valid_range``) as netCDF4-python applies them; a v2 array written by xarray (it has
``_ARRAY_DIMENSIONS``) also masks its ``fill_value``, which is where xarray keeps ``_FillValue``.
No netCDF default fill values apply to Zarr.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import os
import struct
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import (FormatError, MissingDependencyError, StorageError, UnsupportedError,
                      VariableNotFoundError)
from ..request import COMPRESSION_IDS, Missing
from .base import Locator, Variable
from .cf import missing_from_attrs, packing_from_attrs
from .choose import Candidate

log = logging.getLogger(__name__)

#: shard index entry meaning "this inner chunk is empty"
_EMPTY = 2**64 - 1
_FILTERS = ("shuffle", "fletcher32")


# -------------------------------------------------------------------------- codec mapping

def _codec_id(codec: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(id, configuration) of a v2 numcodecs config or a v3 codec document."""
    if "name" in codec:  # v3
        name = str(codec["name"])
        if name.startswith("numcodecs."):
            name = name[len("numcodecs."):]
        return name, dict(codec.get("configuration") or {})
    return str(codec.get("id")), {k: v for k, v in codec.items() if k != "id"}


def map_pipeline(codecs: Sequence[Mapping[str, Any]], itemsize: int, where: str
                 ) -> tuple[dict[str, Any] | None, tuple[dict[str, Any], ...]]:
    """Bytes->bytes codecs in write order -> the kernel's ``(compression, filters)``.

    The kernel undoes one compression and then the filters in reverse, so the pipeline must be
    ``filters..., [compression], [fletcher32]``; a checksum after the compression is "outer".
    """
    compression: dict[str, Any] | None = None
    filters: list[dict[str, Any]] = []
    for codec in codecs:
        cid, conf = _codec_id(codec)
        if cid in COMPRESSION_IDS:
            if compression is not None:
                raise UnsupportedError(f"{where}: two compressors ({compression['id']}, {cid}) in "
                                       "one codec pipeline are not supported")
            compression = {"id": cid}
            if cid == "blosc":
                compression.update({k: conf[k] for k in ("cname",) if k in conf})
        elif cid == "shuffle":
            if compression is not None:
                raise UnsupportedError(f"{where}: shuffle after compression is not supported")
            es = conf.get("elementsize", conf.get("element_size", itemsize))
            filters.append({"id": "shuffle", "element_size": int(es or itemsize)})
        elif cid == "fletcher32":
            filters.append({"id": "fletcher32", "outer": True} if compression is not None
                           else {"id": "fletcher32"})
        else:
            raise UnsupportedError(f"{where}: codec {cid!r} is not supported (supported: "
                                   f"{', '.join(COMPRESSION_IDS + _FILTERS)})")
    return compression, tuple(filters)


def _check_dtype(dtype: np.dtype, where: str) -> None:
    if dtype.kind not in "iuf" or dtype.itemsize > 8:
        raise UnsupportedError(f"{where}: dtype {dtype} cannot be reduced (numeric types only)")


def _fill(value: Any, dtype: np.dtype) -> Any:
    """A JSON fill value (numbers, "NaN", "Infinity", hex strings) as a numpy scalar of ``dtype``."""
    if value is None:
        return None
    if isinstance(value, str):
        special = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}
        if value in special:
            return dtype.type(special[value])
        if value.startswith("0x") and dtype.kind == "f":
            raw = int(value, 16).to_bytes(dtype.itemsize, "big")
            return np.frombuffer(raw, dtype.newbyteorder(">"))[0].astype(dtype)
        raise FormatError(f"fill_value {value!r} is not understood for {dtype}")
    return dtype.type(value)


def _v2_layout(meta: Mapping[str, Any], where: str) -> dict[str, Any]:
    dt = np.dtype(meta["dtype"]) if not isinstance(meta["dtype"], list) else None
    if dt is None:
        raise UnsupportedError(f"{where}: structured dtype {meta['dtype']!r} is not supported")
    _check_dtype(dt, where)
    codecs = list(meta.get("filters") or [])
    if meta.get("compressor"):
        codecs.append(meta["compressor"])
    compression, filters = map_pipeline(codecs, dt.itemsize, where)
    byte_order = {"<": "little", ">": "big"}.get(dt.byteorder, "little" if np.little_endian else "big")
    native = dt.newbyteorder("=")
    return dict(dtype=native, byte_order=byte_order, order=str(meta.get("order", "C")),
                compression=compression, filters=filters,
                chunk_shape=tuple(int(c) for c in meta["chunks"]),
                fill_value=_fill(meta.get("fill_value"), native), shard=None)


def _v3_layout(meta: Mapping[str, Any], where: str) -> dict[str, Any]:
    dt = meta["data_type"]
    if not isinstance(dt, str):
        raise UnsupportedError(f"{where}: data type {dt!r} is not supported")
    try:
        native = np.dtype(dt)
    except TypeError as exc:
        raise UnsupportedError(f"{where}: data type {dt!r} is not supported") from exc
    _check_dtype(native, where)
    grid = meta["chunk_grid"]
    if grid.get("name") != "regular":
        raise UnsupportedError(f"{where}: chunk grid {grid.get('name')!r} is not supported")
    chunk_shape = tuple(int(c) for c in grid["configuration"]["chunk_shape"])
    codecs = list(meta["codecs"])
    shard = None
    if codecs and _codec_id(codecs[0])[0] == "sharding_indexed":
        if len(codecs) > 1:
            raise UnsupportedError(f"{where}: codecs after sharding_indexed are not supported")
        conf = _codec_id(codecs[0])[1]
        shard = {"shape": chunk_shape, "index_codecs": list(conf.get("index_codecs") or []),
                 "index_location": conf.get("index_location", "end")}
        chunk_shape = tuple(int(c) for c in conf["chunk_shape"])
        codecs = list(conf["codecs"])
        if any(_codec_id(c)[0] == "sharding_indexed" for c in codecs):
            raise UnsupportedError(f"{where}: nested sharding is not supported")
    order, byte_order = "C", "little"
    rest: list[Mapping[str, Any]] = []
    seen_bytes = False
    for c in codecs:
        cid, conf = _codec_id(c)
        if not seen_bytes and cid == "transpose":
            perm = list(conf.get("order", []))
            ndim = len(chunk_shape)
            if perm == list(range(ndim)):
                continue
            if perm == list(range(ndim))[::-1] and order == "C":
                order = "F"
                continue
            raise UnsupportedError(f"{where}: transpose codec with order {perm} is not supported "
                                   "(only the full reversal, i.e. Fortran order)")
        if cid == "bytes" and not seen_bytes:
            byte_order = conf.get("endian") or ("little" if np.little_endian else "big")
            seen_bytes = True
            continue
        if not seen_bytes:
            raise UnsupportedError(f"{where}: codec {cid!r} is not supported (array->array "
                                   "codecs other than transpose)")
        rest.append(c)
    if not seen_bytes:
        raise UnsupportedError(f"{where}: no 'bytes' codec in the pipeline")
    compression, filters = map_pipeline(rest, native.itemsize, where)
    return dict(dtype=native, byte_order=byte_order, order=order, compression=compression,
                filters=filters, chunk_shape=chunk_shape,
                fill_value=_fill(meta.get("fill_value"), native), shard=shard)


def layout(meta: Mapping[str, Any], where: str) -> dict[str, Any]:
    """dtype, byte order, order, codecs, chunk shape, fill value and shard description of a Zarr
    array's metadata document (v2 ``.zarray`` or v3 ``zarr.json``)."""
    try:
        lay = _v3_layout(meta, where) if int(meta.get("zarr_format", 2)) == 3 else \
            _v2_layout(meta, where)
        lay["shape"] = tuple(int(n) for n in meta["shape"])
        if len(lay["shape"]) != len(lay["chunk_shape"]) or min(lay["chunk_shape"], default=1) < 1:
            raise ValueError("shape and chunks do not match")
        return lay
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FormatError(f"{where}: zarr array metadata is malformed ({exc!r})") from exc


def _xarray_fill(value: Any, dtype: np.dtype) -> Any:
    """xarray writes a float ``_FillValue`` of a Zarr v3 array as base64 of its little-endian
    bytes (``"AAAAAAAA+H8="`` is NaN); decode that, pass anything else through."""
    if not isinstance(value, str) or dtype.kind != "f":
        return value
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return value
    if len(raw) not in (4, 8):
        return value
    return np.frombuffer(raw, "<f8" if len(raw) == 8 else "<f4")[0]


def missing_from_zarr(attrs: Mapping[str, Any], dtype: np.dtype, fill_value: Any,
                      xarray_v2: bool) -> Missing:
    """CF missing-data attributes as a :class:`Missing`, with netCDF4-python's rules for
    ``_FillValue``, ``missing_value`` and valid ranges but no netCDF default fill values."""

    cf = dict(attrs)
    if "_FillValue" in cf:
        cf["_FillValue"] = _xarray_fill(cf["_FillValue"], dtype)
    elif xarray_v2 and fill_value is not None:
        cf["_FillValue"] = fill_value
    missing, _ = missing_from_attrs(cf, dtype, True)
    # keep only values the attributes declare (drop the netCDF default missing_from_attrs adds)
    declared = set()
    for key in ("_FillValue", "missing_value"):
        for v in np.atleast_1d(np.asarray(cf.get(key, []), dtype=object)):
            try:
                declared.add(repr(dtype.type(v)))
            except (TypeError, ValueError, OverflowError):
                pass
    return Missing(values=tuple(v for v in missing.values if repr(v) in declared),
                   valid_min=missing.valid_min, valid_max=missing.valid_max)


def variable_from_metadata(meta: Mapping[str, Any], attrs: Mapping[str, Any], name: str,
                           source: str, objects: Mapping[str, Locator], *,
                           read_range: Callable[[Locator, int, int], bytes] | None = None,
                           fmt: str | None = None) -> Variable:
    """Build a :class:`Variable` from a Zarr array's metadata and its stored objects.

    ``objects`` maps keys relative to the array (``"0.1"``, ``"c/0/1"``, ``".zattrs"``, ...) to
    locators; keys that are not chunk keys of this array, or lie outside its grid, are ignored, so
    the work is proportional to what is stored, not to the grid. For a sharded array
    ``read_range(shard_locator, start, stop)`` reads bytes of a shard to get its index.
    """
    where = f"{source}: {name}"
    lay = layout(meta, where)
    shape: tuple[int, ...] = lay["shape"]
    v3 = int(meta.get("zarr_format", 2)) == 3
    dtype: np.dtype = lay["dtype"]
    attrs = dict(attrs)
    if v3:
        dims = tuple(meta.get("dimension_names") or ())
        dims = () if any(not isinstance(d, str) for d in dims) else dims
    else:
        dims = tuple(str(d) for d in attrs.get("_ARRAY_DIMENSIONS") or ())
    xarray_v2 = not v3 and "_ARRAY_DIMENSIONS" in attrs
    attrs.pop("_ARRAY_DIMENSIONS", None)
    fill = lay["fill_value"]
    missing = missing_from_zarr(attrs, dtype, fill, xarray_v2)
    if fill is None:
        fill = dtype.type(0)  # zarr reads never-written chunks of a fill_value=null array as 0
    decode = _key_decoder(meta, len(shape))
    chunk_shape: tuple[int, ...] = lay["chunk_shape"]
    grid = _grid(shape, chunk_shape)
    chunks: dict[tuple[int, ...], Locator] = {}
    shard = lay["shard"]
    outer = grid if shard is None else _grid(shape, shard["shape"])
    stored = {}
    for key, loc in objects.items():
        coords = decode(key)
        if coords is not None and all(c < n for c, n in zip(coords, outer)):
            stored[coords] = loc
    if shard is None:
        chunks.update(stored)
    else:
        if read_range is None:
            raise UnsupportedError(f"{where}: sharded arrays need a store to read shard indexes")
        if any(s % c for s, c in zip(shard["shape"], chunk_shape)):
            raise FormatError(f"{where}: shard shape {shard['shape']} is not a multiple of the "
                              f"chunk shape {chunk_shape}")
        per = tuple(s // c for s, c in zip(shard["shape"], chunk_shape))
        for scoords, sloc in sorted(stored.items()):
            index = _read_shard_index(sloc, per, shard, read_range, where)
            for inner in np.ndindex(*per):
                off, nbytes = (int(x) for x in index[inner])
                if off == _EMPTY and nbytes == _EMPTY:
                    continue
                g = tuple(int(s * p + i) for s, p, i in zip(scoords, per, inner))
                if any(x >= n for x, n in zip(g, grid)):
                    continue
                if nbytes < 1 or off + nbytes > sloc.size:
                    raise FormatError(f"{where}: shard {sloc.url} index points past its end "
                                      f"(chunk {g}: bytes {off}-{off + nbytes} of {sloc.size})")
                chunks[g] = Locator(sloc.url, sloc.offset + off, nbytes,
                                    etag=sloc.etag, version_id=sloc.version_id)

    scale, offset = packing_from_attrs(attrs)
    return Variable(
        name=name, source=source, dtype=dtype, shape=shape, chunk_shape=chunk_shape,
        chunks=chunks, byte_order=lay["byte_order"], order=lay["order"],
        compression=lay["compression"], filters=lay["filters"], missing=missing,
        fill_value=fill, scale_factor=scale, add_offset=offset, attrs=attrs, dimensions=dims,
        format=fmt or ("zarr3" if v3 else "zarr2"))


def _grid(shape: Sequence[int], chunks: Sequence[int]) -> tuple[int, ...]:
    return tuple(math.ceil(n / c) if c else 0 for n, c in zip(shape, chunks))


def _key_decoder(meta: Mapping[str, Any], ndim: int) -> Callable[[str], tuple[int, ...] | None]:
    """Chunk key (relative to the array) -> chunk coordinates, or None for other keys."""
    prefix = ""
    if int(meta.get("zarr_format", 2)) == 3:
        enc = meta.get("chunk_key_encoding") or {"name": "default"}
        name = enc.get("name", "default")
        if name not in ("default", "v2"):
            raise UnsupportedError(f"chunk key encoding {name!r} is not supported")
        sep = (enc.get("configuration") or {}).get("separator", "/" if name == "default" else ".")
        if name == "default":
            prefix = "c"
    else:
        sep = meta.get("dimension_separator") or "."
    if sep not in (".", "/"):
        raise FormatError(f"chunk key separator {sep!r} must be '.' or '/'")
    empty = prefix if prefix else "0"

    def decode(key: str) -> tuple[int, ...] | None:
        if ndim == 0:
            return () if key == empty else None
        if prefix:
            if not key.startswith(prefix + sep):
                return None
            key = key[len(prefix) + len(sep):]
        parts = key.split(sep)
        if len(parts) != ndim or not all(p.isdigit() for p in parts):
            return None
        return tuple(int(p) for p in parts)
    return decode


def _read_shard_index(sloc: Locator, per: tuple[int, ...], shard: Mapping[str, Any],
                      read_range: Callable[[Locator, int, int], bytes], where: str) -> np.ndarray:
    """The shard's ``(offset, nbytes)`` table, shape ``(*per, 2)``."""
    endian, crc = "little", False
    for c in shard["index_codecs"]:
        cid, conf = _codec_id(c)
        if cid == "bytes":
            endian = conf.get("endian") or "little"
        elif cid == "crc32c":
            crc = True
        else:
            raise UnsupportedError(f"{where}: shard index codec {cid!r} is not supported")
    n = math.prod(per) * 16 + (4 if crc else 0)
    if n > sloc.size:
        raise FormatError(f"{where}: shard {sloc.url} ({sloc.size} bytes) is too small for its "
                          f"{n}-byte index")
    raw = (read_range(sloc, sloc.size - n, sloc.size) if shard["index_location"] == "end"
           else read_range(sloc, 0, n))
    if len(raw) != n:
        raise FormatError(f"{where}: short read of the shard index of {sloc.url}")
    if crc:
        body, check = raw[:-4], struct.unpack("<I", raw[-4:])[0]
        got = _crc32c(body)
        if got is not None and got != check:
            raise FormatError(f"{where}: shard index of {sloc.url} fails its CRC32C checksum")
        raw = body
    table = np.frombuffer(raw, "<u8" if endian == "little" else ">u8").astype(np.uint64)
    return table.reshape(*per, 2)


def _crc32c(data: bytes) -> int | None:
    try:
        import google_crc32c
    except ImportError:  # the checksum is an extra check; without the library we skip it
        return None
    return int(google_crc32c.value(data))


# ----------------------------------------------------------------------------- stores

def import_zarr() -> Any:
    """The ``zarr`` module, or a :class:`MissingDependencyError` saying which extra installs it."""
    try:
        import zarr
    except ImportError as exc:
        if exc.name not in (None, "zarr"):
            raise  # zarr is there but one of its own dependencies is broken: say that
        raise MissingDependencyError(
            "reading Zarr stores (a directory or a .zarr URL) needs the zarr package: "
            "pip install 'activestorage[zarr]'", name="zarr", extra="zarr") from exc
    return zarr


def _store(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str, str]:
    """(byte store, root URL of the Zarr store in it, its kind) for ``url``."""
    from ..stores import local_path, open_store, url_kind

    kind = url_kind(url)
    if kind == "file":
        from ..stores.local import LocalStore

        # a key zarr looks for and does not find is a 404 (None to zarr), as in a remote store
        return LocalStore(missing_status=404), os.path.abspath(local_path(url)).rstrip("/"), kind
    # the retries s3fs/fsspec had for metadata (3 attempts)
    return open_store(url, storage_options, timeout=HTTP_TIMEOUT, retries=2), url, kind


#: an HTTP store cannot be listed: every possible chunk object is probed with a HEAD request, in
#: parallel, up to this many (write a manifest from a listable copy for bigger arrays).
MAX_HTTP_PROBES = int(os.environ.get("ACTIVESTORAGE_MAX_HTTP_PROBES", 100_000))
HTTP_TIMEOUT = 30.0


def _probe_http(store: Any, array_root: str, keys: list[str], where: str) -> dict[str, Locator]:
    """HEAD each candidate chunk object of an HTTP store; absent ones (404) are skipped."""
    from concurrent.futures import ThreadPoolExecutor

    if len(keys) > MAX_HTTP_PROBES:
        raise UnsupportedError(
            f"{where}: an HTTP Zarr store cannot be listed and this array has {len(keys)} possible "
            f"chunk objects (limit {MAX_HTTP_PROBES}, ACTIVESTORAGE_MAX_HTTP_PROBES); write a "
            "manifest from a listable copy (local or S3) instead")

    def head(key: str) -> tuple[str, Locator | None]:
        url = f"{array_root}/{key}"
        try:
            info = store.head(url)
        except StorageError as exc:
            if exc.status == 404:
                return key, None
            raise
        etag = info.etag
        if etag and etag.startswith("W/"):
            etag = None  # a weak ETag cannot pin byte ranges
        return key, Locator(url, 0, info.size, etag=etag.strip('"') if etag else None)

    with ThreadPoolExecutor(max_workers=16) as pool:
        return {k: loc for k, loc in pool.map(head, keys) if loc is not None}


def _chunk_keys(meta: Mapping[str, Any], grid: Sequence[int]) -> list[str]:
    """Every possible chunk key (relative to the array) of a (shard) grid."""
    if int(meta.get("zarr_format", 2)) == 3:
        enc = meta.get("chunk_key_encoding") or {"name": "default"}
        default = enc.get("name", "default") == "default"
        sep = (enc.get("configuration") or {}).get("separator", "/" if default else ".")
        pre = "c" if default else ""
    else:
        sep, pre, default = meta.get("dimension_separator") or ".", "", False
    keys = []
    for c in np.ndindex(*grid):
        body = sep.join(str(int(i)) for i in c)
        keys.append((pre + sep + body if body else pre) if default else (body or "0"))
    return keys


def _open_node(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, Any, str, str]:
    """(zarr group or array, byte store, root URL, store kind); the caller closes the store.

    The one translation of what opening can raise: the store's own typed errors pass through,
    no metadata is a FormatError, metadata zarr cannot parse a FormatError naming the cause."""
    zarr = import_zarr()
    from .zarr_store import ByteStoreZarr

    store, root, kind = _store(url, storage_options)
    try:
        try:
            node = zarr.open(store=ByteStoreZarr(store, root), mode="r")
        except StorageError:
            raise
        except FileNotFoundError as exc:
            raise FormatError(f"{url} is not a Zarr store (no .zarray/.zgroup/zarr.json)") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise FormatError(f"{url}: Zarr metadata could not be read ({exc})") from exc
        except OSError as exc:
            raise StorageError(f"{url}: {exc}", store=url) from exc
    except BaseException:
        store.close()
        raise
    return node, store, root, kind


def _arrays(node: Any) -> dict[str, Any]:
    """Every array under ``node`` by its path (``""`` for an array store itself)."""
    zarr = import_zarr()

    if isinstance(node, zarr.Array):
        return {"": node}
    return {path: obj for path, obj in node.members(max_depth=None)
            if isinstance(obj, zarr.Array)}


def _members(url: str, storage_options: Mapping[str, Any] | None
             ) -> tuple[Any, list[tuple[str, Any]]]:
    """(the store's root node, its arrays by path, sorted), the store closed afterwards."""
    node, store, _root, kind = _open_node(url, storage_options)
    try:
        return node, sorted(_arrays(node).items())
    except UnsupportedError as exc:
        if kind not in ("http", "https"):
            raise
        raise UnsupportedError(f"{url}: the arrays of a Zarr group over HTTP can only be listed "
                               "from consolidated metadata (zarr.consolidate_metadata); name the "
                               "array instead") from exc
    finally:
        store.close()


def open_zarr(path_or_url: str, ncvar: str, storage_options: Mapping[str, Any] | None = None
              ) -> Variable:
    """Open array ``ncvar`` (a path inside a group, or the store's own name for an array store)."""
    zarr = import_zarr()

    url = os.fspath(path_or_url).rstrip("/")
    if url.startswith("file://"):
        url = url[len("file://"):]
    node, store, root, kind = _open_node(url, storage_options)
    try:
        return _variable(zarr, node, store, root, kind, url, ncvar)
    finally:
        store.close()


def _variable(zarr: Any, node: Any, store: Any, root: str, kind: str, url: str, ncvar: str
              ) -> Variable:
    """:func:`open_zarr`'s work once the store is open: the array, its chunk objects, its index."""
    if isinstance(node, zarr.Array):
        base = url.rsplit("/", 1)[-1]
        if ncvar not in (base, base.removesuffix(".zarr"), "", "/"):
            raise VariableNotFoundError(f"{url} is a single array ({base}), not a group with "
                                        f"{ncvar!r}")
        arr, apath = node, ""
    else:
        try:
            arr = node[ncvar.strip("/")]
        except KeyError:
            arr = None
        if not isinstance(arr, zarr.Array):
            names = ", ".join(sorted(_arrays(node))) or "none"
            raise VariableNotFoundError(f"{url} has no array {ncvar!r}; arrays: {names}")
        apath = ncvar.strip("/")
    array_root = f"{root}/{apath}" if apath else root
    raw_meta = dict(arr.metadata.to_dict())
    attrs = dict(raw_meta.pop("attributes", None) or arr.attrs)  # values as zarr parsed them
    meta = _jsonable(raw_meta)
    if kind in ("http", "https"):  # not listable: probe every possible chunk object
        lay = layout(meta, f"{url}: {ncvar}")
        outer = lay["chunk_shape"] if lay["shard"] is None else lay["shard"]["shape"]
        objects = _probe_http(store, array_root, _chunk_keys(meta, _grid(lay["shape"], outer)),
                              f"{url}: {ncvar}")
    else:
        objects = {}
        for obj_url, info in store.find(array_root).items():
            etag = info.etag
            objects[obj_url[len(array_root) + 1:]] = Locator(
                obj_url, 0, info.size, etag=etag.strip('"') if etag else None,
                version_id=info.version_id)

    def read_range(loc: Locator, start: int, stop: int) -> bytes:
        try:
            return bytes(store.read_range(loc.url, loc.offset + start, loc.offset + stop))
        except StorageError as exc:
            raise StorageError(f"cannot read the shard index of {loc.url}: {exc}",
                               status=exc.status, store=loc.url, causes=exc.causes) from exc

    return variable_from_metadata(meta, attrs, ncvar, url, objects, read_range=read_range)


def _jsonable(meta: Any) -> Any:
    """zarr's ``to_dict`` may hold tuples, numpy scalars and enums; make them plain JSON values."""
    if isinstance(meta, Mapping):
        return {str(k): _jsonable(v) for k, v in meta.items()}
    if isinstance(meta, (list, tuple)):
        return [_jsonable(v) for v in meta]
    if isinstance(meta, np.generic):
        v = meta.item()
        if isinstance(v, float) and not math.isfinite(v):
            return "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
        return v
    if isinstance(meta, float) and not math.isfinite(meta):
        return "NaN" if meta != meta else ("Infinity" if meta > 0 else "-Infinity")
    if hasattr(meta, "value") and not isinstance(meta, (str, int, float, bool)):
        return meta.value  # enums
    if isinstance(meta, np.dtype):
        return meta.str
    return meta


def list_variables(path_or_url: str, storage_options: Mapping[str, Any] | None = None
                   ) -> dict[str, dict[str, Any]]:
    """``{path: {"dimensions", "shape", "dtype"}}`` for every array of a Zarr store."""
    url = os.fspath(path_or_url).rstrip("/")
    _node, arrays = _members(url, storage_options)
    out = {}
    for path, arr in arrays:
        name = path or url.rsplit("/", 1)[-1]
        dims = (getattr(arr.metadata, "dimension_names", None)
                or arr.attrs.get("_ARRAY_DIMENSIONS") or [])
        out[name] = {"dimensions": [str(d) for d in dims], "shape": list(arr.shape),
                     "dtype": np.dtype(str(arr.dtype)).newbyteorder("=").name}
    return out


# --------------------------------------------------------------------------- the reader

#: names of Zarr metadata documents (a path ending in one is a Zarr store's)
ZARR_NAMES = (".zarray", ".zgroup", ".zattrs", ".zmetadata", "zarr.json")


class ZarrReader:
    """Zarr v2/v3 stores: a local directory, or a remote ``*.zarr`` prefix (told by name, since a
    prefix has no bytes of its own); a Zarr metadata document is recognised by its JSON keys."""

    name = "zarr"
    title = "Zarr"

    def can_open(self, head: bytes, url: str) -> bool:
        name = str(url).rstrip("/").rsplit("/", 1)[-1]
        if name in ZARR_NAMES or name.endswith(".zarr"):
            return True
        stripped = head.lstrip()
        if stripped[:1] == b"{":  # a zarr metadata document is JSON: tell it from references
            return b'"zarr_format"' in stripped[:512] and b'"refs"' not in stripped[:512]
        if head or "://" in url and not url.startswith("file://"):
            return False
        return os.path.isdir(url.removeprefix("file://"))

    def open(self, source: str, ncvar: str, storage_options: Mapping[str, Any] | None = None, *,
             file: Any = None) -> Variable:
        return open_zarr(source, ncvar, storage_options=storage_options)

    def list_variables(self, source: str, storage_options: Mapping[str, Any] | None = None, *,
                       file: Any = None) -> list[Candidate]:
        zarr = import_zarr()
        url = os.fspath(source).removeprefix("file://").rstrip("/")
        node, arrays = _members(url, storage_options)
        store_name = url.rsplit("/", 1)[-1]
        out = []
        for path, arr in arrays:
            dims = (getattr(arr.metadata, "dimension_names", None)
                    or arr.attrs.get("_ARRAY_DIMENSIONS") or ())
            out.append(Candidate(path or store_name, tuple(str(d) for d in dims), dict(arr.attrs),
                                 dtype=_dtype_name(arr.dtype),
                                 array_store=isinstance(node, zarr.Array)))
        return out


def _dtype_name(dtype: Any) -> str:
    """A Zarr array's dtype as a native-order NumPy name (as zarr prints it if NumPy cannot)."""
    try:
        return np.dtype(str(dtype)).newbyteorder("=").name
    except TypeError:
        return str(dtype)

