"""Readers that turn a dataset's metadata into a :class:`~activestorage.formats.base.Variable`.

:func:`open_variable` is the one entry point: it accepts a path, a URL, a manifest (path or dict),
an already open h5py/h5netcdf/netCDF4/pyfive variable, or an open fsspec file (``S3File``, HTTP),
detects the format and calls its reader.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ActiveStorageError, FormatError
from .base import Locator, Variable
from .chunk_index import ChunkIndex, pin_locators

__all__ = ["ChunkIndex", "Locator", "Variable", "open_variable"]

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _from_object(obj: Any, ncvar: str | None) -> Variable | None:
    """Variables handed over already open (h5py, h5netcdf, netCDF4)."""
    mod = type(obj).__module__.split(".")[0]
    if mod == "pyfive":
        from .objects import is_pyfive_dataset, open_pyfive

        if is_pyfive_dataset(obj):
            return open_pyfive(obj)
    if mod == "h5py":
        from .hdf5 import variable_from_dataset

        return variable_from_dataset(obj, obj.file.filename, obj.name.lstrip("/"))
    if mod == "h5netcdf":
        from .hdf5 import variable_from_dataset

        ds = obj._h5ds
        return variable_from_dataset(ds, ds.file.filename, ds.name.lstrip("/"))
    if mod == "netCDF4":
        grp = obj.group()
        path = grp.filepath()
        name = obj.name if grp.path == "/" else f"{grp.path.strip('/')}/{obj.name}"
        return open_variable(path, name)
    return None


def _is_url(s: str) -> bool:
    return "://" in s and not s.startswith("file://")


def open_variable(dataset: Any, ncvar: str | None = None, *,
                  storage_options: dict[str, Any] | None = None) -> Variable:
    """Read the metadata and chunk index of ``ncvar`` in ``dataset``, whatever its format.

    Without ``ncvar``: a Zarr array store's array, or the dataset's only data variable
    (:mod:`.choose`); a :class:`VariableNotFoundError` lists the candidates otherwise.
    """
    if isinstance(dataset, Variable):
        return dataset
    if isinstance(dataset, dict):
        from .references import open_references

        if not ncvar:
            from .choose import default_variable

            ncvar = default_variable(dataset, storage_options)
        return open_references(dataset, ncvar, storage_options=storage_options)
    var = _from_object(dataset, ncvar)
    if var is not None:
        return var
    from .objects import is_fsspec_file, locate

    if is_fsspec_file(dataset):  # an S3File or HTTP file: open it again by its URL
        dataset, storage_options = locate(dataset, storage_options, None)
    if not isinstance(dataset, (str, os.PathLike)):
        raise ActiveStorageError(
            f"cannot open a dataset of type {type(dataset).__name__}; give a path, a URL, a "
            "manifest, an h5py/h5netcdf/netCDF4/pyfive variable or an fsspec file")
    url = os.fspath(dataset)
    if url.startswith("file://"):
        url = url[len("file://"):]
    if not ncvar and (_is_url(url) or os.path.exists(url)):  # Active(path): its one data variable
        from .choose import default_variable

        ncvar = default_variable(url, storage_options)
    if _is_url(url):
        return _open_remote(url, ncvar, storage_options)
    path = Path(url)
    if not path.exists():
        raise FormatError(f"{url}: no such file or directory")
    if path.is_dir():
        from .zarr import open_zarr

        return open_zarr(url, _need(ncvar, url), storage_options=storage_options)
    with open(path, "rb") as f:
        head = f.read(4096)
    kind = _detect(head, url)
    ncvar = _need(ncvar, url)
    if kind == "hdf5":
        from .hdf5 import open_hdf5

        return open_hdf5(url, ncvar)
    if kind == "netcdf3":
        from .netcdf3 import open_netcdf3

        return open_netcdf3(url, ncvar)
    if kind == "json":
        from .references import open_references

        return open_references(url, ncvar, storage_options=storage_options)
    raise FormatError(f"{url} is not a netCDF-3, netCDF-4/HDF5, Zarr or manifest file "
                      f"(it starts with {head[:8]!r})")


def _need(ncvar: str | None, what: str) -> str:
    if not ncvar:
        raise ActiveStorageError(f"name the variable to reduce in {what} (ncvar=...)")
    return ncvar


def _detect(head: bytes, url: str) -> str:
    try:
        from .detect import detect_format
    except ImportError:
        detect_format = None
    if detect_format is not None:
        return detect_format(head, url)
    if head.startswith(b"CDF\x01") or head.startswith(b"CDF\x02") or head.startswith(b"CDF\x05"):
        return "netcdf3"
    for off in (0, 512, 1024, 2048):
        if head[off:off + 8] == _HDF5_MAGIC:
            return "hdf5"
    if head.lstrip()[:1] == b"{":
        return "json"
    return "unknown"


def _open_remote(url: str, ncvar: str | None, storage_options: dict[str, Any] | None) -> Variable:
    from ..storage import open_url

    if url.rstrip("/").endswith((".zarr", ".zarr/")):
        from .zarr import open_zarr

        return open_zarr(url, _need(ncvar, url), storage_options=storage_options)
    ncvar = _need(ncvar, url)
    with open_url(url, storage_options) as f:
        head = f.read(4096)
        f.seek(0)
        kind = _detect(head, url)
        if kind == "hdf5":
            from .hdf5 import open_hdf5

            var = open_hdf5(f, ncvar, url=url)
            etag, version = getattr(f, "etag", None), getattr(f, "version_id", None)
            if etag or version:  # pin every chunk to the object version the index came from
                var.chunks = pin_locators(var.chunks, etag, version)
            stats = getattr(f, "stats", None)
            if stats is not None:
                var.metadata_bytes = stats.bytes_read
                var.metadata_requests = stats.requests
            return var
    if kind == "netcdf3":
        from .netcdf3 import open_netcdf3

        return open_netcdf3(url, ncvar, storage_options=storage_options)
    if kind == "json":
        from .references import open_references

        return open_references(url, ncvar, storage_options=storage_options)
    raise FormatError(f"{url} is not a netCDF-3, netCDF-4/HDF5, Zarr or manifest object")
