"""Readers that turn a dataset's metadata into a :class:`~activestorage.formats.base.Variable`.

:func:`open_variable` is the one entry point: it accepts a path, a URL, a manifest (path or dict),
an already open h5py/h5netcdf/netCDF4/pyfive variable, or an open fsspec file (``S3File``, HTTP),
and hands paths and URLs to the reader :mod:`.registry` detects for them.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ActiveStorageError, FormatError
from .base import Locator, Variable
from .chunk_index import ChunkIndex

__all__ = ["ChunkIndex", "Locator", "Variable", "open_variable"]


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

    Paths and URLs go to the reader :mod:`.registry` finds for them. Without ``ncvar``: a Zarr
    array store's array, or the dataset's only data variable (:mod:`.choose`); a
    :class:`VariableNotFoundError` lists the candidates otherwise.
    """
    if isinstance(dataset, Variable):
        return dataset
    if isinstance(dataset, dict):
        from .registry import ReferencesReader, default_variable

        if not ncvar:
            ncvar = default_variable(dataset, storage_options)
        return ReferencesReader().open(dataset, ncvar, storage_options)
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
    remote = "://" in url
    if not remote and not os.path.exists(url):
        raise FormatError(f"{url}: no such file or directory")
    from .registry import default_variable, open_path

    if not ncvar:  # Active(path): its one data variable
        ncvar = default_variable(url, storage_options)
    return open_path(url, ncvar, storage_options)
