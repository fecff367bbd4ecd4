"""Datasets handed over as objects by PyActiveStorage and cf-python users.

* a pyfive ``Dataset`` (cf-python's default read path): its metadata and chunk index are already in
  memory, so :func:`variable_from_pyfive` reads them through pyfive's public API (``shape``,
  ``dtype``, ``attrs``, ``id.filter_pipeline``, ``id.get_num_chunks``/``id.get_chunk_info``)
  instead of opening the file again;
* an fsspec file object (``s3fs.core.S3File``, an HTTP file): only where it lives matters;
* a scheme-less ``bucket/key`` with S3 ``storage_options`` (cf-python 3.20), or a path with
  PyActiveStorage's ``interface_type``.

:func:`locate` turns any of them into the object URL and the storage options (credentials,
endpoint) the backends need: they come from the object itself when the caller passed none.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import numpy as np

from ..errors import InvalidArgumentError, UnsupportedError
from .base import Locator, Variable
from .cf import missing_from_attrs, packing_from_attrs

log = logging.getLogger(__name__)

#: PyActiveStorage's ``interface_type`` values
INTERFACE_TYPES = ("s3", "https")


def is_pyfive_dataset(obj: Any) -> bool:
    """Whether ``obj`` is a pyfive ``Dataset`` (checked by module, so pyfive stays optional)."""
    return type(obj).__module__.split(".")[0] == "pyfive" and hasattr(obj, "id") \
        and hasattr(obj.id, "get_num_chunks")


def is_fsspec_file(obj: Any) -> bool:
    """Whether ``obj`` is an open fsspec file (``S3File``, ``HTTPFile``, ...)."""
    return hasattr(obj, "fs") and hasattr(obj, "path") and hasattr(obj, "read") \
        and hasattr(obj.fs, "protocol")


def _s3_endpoint(storage_options: Mapping[str, Any] | None) -> str | None:
    so = storage_options or {}
    return so.get("endpoint_url") or (so.get("client_kwargs") or {}).get("endpoint_url")


def _fsspec_location(f: Any) -> tuple[str, dict[str, Any]]:
    """(URL, the filesystem's own storage options) of an open fsspec file."""
    fs = f.fs
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    opts = dict(getattr(fs, "storage_options", None) or {})
    if protocol in ("s3", "s3a"):
        return f"s3://{str(f.path).split('://', 1)[-1]}", opts
    url = getattr(f, "url", None) or str(f.path)
    if protocol in ("http", "https") or "://" in url:
        return url, {k: v for k, v in opts.items() if k in ("headers", "client_kwargs")}
    if protocol in ("file", "local"):
        return str(f.path), {}
    raise UnsupportedError(f"cannot reduce a file on the fsspec filesystem {protocol!r}; "
                           "give a local path, an s3:// or an http(s):// URL")


def _pyfive_handle(ds: Any) -> Any:
    """The file object a pyfive dataset reads from, unwrapped from pyfive's own buffering."""
    fh = getattr(ds.file, "_fh", None)
    for _ in range(4):  # MetadataBufferingWrapper (.fh) and HDF5OffsetWrapper (._fh)
        if fh is None or is_fsspec_file(fh):
            break
        fh = getattr(fh, "fh", None) or getattr(fh, "_fh", None)
    return fh


def _pyfive_location(ds: Any) -> tuple[str, dict[str, Any]]:
    if getattr(ds.id, "posix", False):
        name = getattr(ds.file, "filename", None)
        return os.fspath(name if isinstance(name, (str, os.PathLike)) and name != "None"
                         else ds.id._filename), {}
    fh = _pyfive_handle(ds)
    if fh is not None and is_fsspec_file(fh):
        return _fsspec_location(fh)
    name = getattr(ds.file, "filename", None)
    if isinstance(name, str) and "://" in name:
        return name, {}
    raise UnsupportedError(f"cannot tell where the pyfive dataset {ds.name!r} is stored (an "
                           "in-memory file?); open it from a path or an fsspec file")


def _merge(derived: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The caller's options win; the object's fill the gaps (e.g. the S3 key and endpoint)."""
    if not derived and given is None:
        return None
    out = dict(derived)
    out.update(given or {})
    if "client_kwargs" in derived and given and "client_kwargs" in given:
        out["client_kwargs"] = {**derived["client_kwargs"], **given["client_kwargs"]}
    return out


def _check_interface(url: str, interface_type: str | None) -> None:
    if interface_type is None:
        return
    scheme = url.split("://", 1)[0].lower() if "://" in url else "file"
    ok = {"s3": ("s3", "s3a", "http", "https"), "https": ("http", "https")}[interface_type]
    if scheme not in ok:
        raise InvalidArgumentError(
            f"interface_type={interface_type!r} does not match the dataset {url}: it is "
            f"{'a local file' if scheme == 'file' else 'a ' + scheme + ':// URL'}; drop "
            "interface_type (the store follows from the URL) or give a matching URL")


def locate(dataset: Any, storage_options: Mapping[str, Any] | None,
           interface_type: str | None) -> tuple[Any, dict[str, Any] | None]:
    """``(dataset, storage_options)`` with objects and scheme-less S3 keys turned into URLs.

    pyfive datasets are returned as they are (their reader needs the object) with the options of
    the file they came from; everything else that is not a path or URL is returned unchanged.
    With ``interface_type="s3"`` an ``http(s)://endpoint/bucket/key`` URL becomes
    ``s3://bucket/key`` on that endpoint, as PyActiveStorage reads it.
    Raises :class:`~activestorage.errors.InvalidArgumentError` when ``interface_type`` is not one
    of PyActiveStorage's or contradicts the dataset's URL.
    """
    if interface_type is not None and interface_type not in INTERFACE_TYPES:
        raise InvalidArgumentError(f"interface_type must be 's3', 'https' or None; got "
                                   f"{interface_type!r}")
    so = dict(storage_options) if storage_options is not None else None
    if is_pyfive_dataset(dataset):
        url, derived = _pyfive_location(dataset)
        _check_interface(url, interface_type)
        return dataset, _merge(derived, so)
    if is_fsspec_file(dataset):
        url, derived = _fsspec_location(dataset)
        _check_interface(url, interface_type)
        return url, _merge(derived, so)
    if not isinstance(dataset, (str, os.PathLike)):
        return dataset, so
    url = os.fspath(dataset)
    if "://" not in url and not url.startswith("/") and (
            interface_type == "s3" or (interface_type is None and _s3_endpoint(so)
                                       and not os.path.exists(url))):
        # cf-python 3.20 and PyActiveStorage: "bucket/key" relative to the S3 endpoint
        return f"s3://{url.lstrip('/')}", so
    _check_interface(url, interface_type)
    if interface_type == "s3" and url.lower().startswith(("http://", "https://")):
        # PyActiveStorage style: endpoint/bucket/key of an S3 store -> s3://bucket/key
        endpoint = _s3_endpoint(so)
        if endpoint and url.startswith(endpoint.rstrip("/") + "/"):
            path = url[len(endpoint.rstrip("/")) + 1:]
        else:
            scheme, rest = url.split("://", 1)
            host, _, path = rest.partition("/")
            endpoint = f"{scheme}://{host}"
            so = {**(so or {}), "endpoint_url": endpoint}
            if "client_kwargs" in so:  # a copy: the caller's dict stays as it was
                so["client_kwargs"] = {k: v for k, v in so["client_kwargs"].items()
                                       if k != "endpoint_url"}
        return f"s3://{path.lstrip('/')}", so
    return dataset, so


# ------------------------------------------------------------------------------- pyfive

_H5Z_NAMES = {1: "zlib", 2: "shuffle", 3: "fletcher32", 307: "bz2", 32001: "blosc", 32015: "zstd"}


def _pipeline(ds: Any, itemsize: int, where: str) -> list[tuple[int, dict[str, Any]]]:
    """pyfive's filter pipeline as the HDF5 reader's (filter id, request dict) list."""
    from .hdf5 import _FILTER_NAMES

    out = []
    for f in ds.id.filter_pipeline or ():
        code = int(f["filter_id"])
        name = _H5Z_NAMES.get(code)
        if name is None:
            label = _FILTER_NAMES.get(code, f"HDF5 filter {code}")
            raise UnsupportedError(f"{where}: the {label} filter is not supported; supported are "
                                   "deflate/zlib, shuffle, fletcher32, bzip2, blosc and zstd")
        spec: dict[str, Any] = {"id": name}
        if name == "shuffle":
            spec["element_size"] = itemsize
        out.append((code, spec))
    return out


def variable_from_pyfive(ds: Any, url: str) -> Variable:
    """A :class:`Variable` from a pyfive ``Dataset``, its locators pointing into ``url``."""
    from .hdf5 import _HIDDEN_ATTRS, _chunk_index, _codecs, stored_dtype

    name = str(ds.name).lstrip("/")
    where = f"{url}: variable {name!r}"
    byte_order, native = stored_dtype(ds.dtype, where)
    shape = tuple(int(n) for n in ds.shape)
    attrs = {}
    for k, v in dict(ds.attrs).items():
        if k in _HIDDEN_ATTRS:
            continue
        attrs[k] = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
    missing, fill = missing_from_attrs(attrs, native)
    fill_value = fill if "_FillValue" in attrs or ds.fillvalue is None else native.type(ds.fillvalue)
    scale, offset = packing_from_attrs(attrs)
    layout = getattr(ds.id, "layout_class", 2)
    chunks: Any = {}
    if layout == 2:
        chunk_shape = tuple(int(n) for n in ds.chunks)
        pipeline = _pipeline(ds, native.itemsize, where)
        compression, filters = _codecs(pipeline, 0, where)
        chunks = _chunk_index(ds.id, url, shape, chunk_shape, pipeline, where)
    elif layout == 1:
        chunk_shape = shape
        compression, filters = None, ()
        off = getattr(ds.id, "data_offset", None)
        if off is not None and off != 0xFFFFFFFFFFFFFFFF:  # HDF5's "undefined address"
            size = int(np.prod(shape, dtype=np.int64)) * native.itemsize
            chunks = {tuple(0 for _ in shape): Locator(url, int(off), size)}
    else:
        raise UnsupportedError(f"{where} uses the HDF5 compact layout, whose bytes cannot be read "
                               "by offset; only chunked and contiguous are supported")
    dims: tuple[str, ...] = ()
    try:
        dims = tuple(d.label for d in ds.dims) if all(d.label for d in ds.dims) else ()
    except Exception:  # noqa: BLE001 - dimension names are decoration
        pass
    return Variable(
        name=name, source=url, dtype=native, shape=shape, chunk_shape=chunk_shape, chunks=chunks,
        byte_order=byte_order, order="C", compression=compression, filters=filters,
        missing=missing, fill_value=fill_value, scale_factor=scale, add_offset=offset,
        attrs=attrs, dimensions=dims, format="hdf5")


def open_pyfive(ds: Any) -> Variable:
    """The Variable of a pyfive dataset, wherever its file is (local, S3, HTTP)."""
    url, _ = _pyfive_location(ds)
    return variable_from_pyfive(ds, url)
