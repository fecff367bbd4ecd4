"""Write manifests: read variables of any format (through the registry) into one JSON document.

A manifest records each variable's metadata and chunk index (see :mod:`.references` for the
document and how it is read back) so later opens make no request to the data store.
"""

from __future__ import annotations

import glob as _glob
import os
from typing import Any, Mapping, Sequence

from ..errors import FormatError
from . import open_variable
from .base import Variable
from .references import concatenate, manifest_from_variables, pin, save_manifest
from .registry import list_variables

__all__ = ["write_manifest"]


def _expand(dataset: str | Sequence[str], storage_options: Mapping[str, Any] | None) -> list[str]:
    """A dataset argument as a list of files: a glob pattern is expanded (sorted)."""
    items = [dataset] if isinstance(dataset, (str, os.PathLike)) else list(dataset)
    out: list[str] = []
    for item in map(os.fspath, items):
        if not any(ch in item for ch in "*?["):
            out.append(item)
            continue
        if "://" in item and not item.startswith("file://"):
            matches = _glob_s3(item, storage_options)
        else:
            matches = sorted(_glob.glob(item.removeprefix("file://")))
        if not matches:
            raise FormatError(f"{item}: no files match")
        out.extend(matches)
    return out


def _glob_s3(pattern: str, storage_options: Mapping[str, Any] | None) -> list[str]:
    """The ``s3://`` objects matching ``pattern``, sorted: one listing of the prefix before the
    first wildcard, matched as fsspec/s3fs globs do (``*`` within a name, ``**`` across ``/``)."""
    import re

    from fsspec.utils import glob_translate

    from ..stores import url_kind
    from ..stores.s3 import S3Store

    if url_kind(pattern) != "s3":
        raise FormatError(f"{pattern}: glob patterns work for local paths and s3:// only")
    path = pattern.split("://", 1)[1]
    wild = min(path.find(ch) for ch in "*?[" if ch in path)
    base = path[:wild].rpartition("/")[0]
    rx = re.compile(glob_translate(path))
    with S3Store(storage_options) as s3:
        found = s3.find("s3://" + base)
    return sorted(u for u in found if rx.match(u[len("s3://"):]))


def _list_any(url: str, storage_options: Mapping[str, Any] | None) -> list[str]:
    """Names of the reducible variables of any dataset we can open (text variables left out)."""
    return [c.name for c in list_variables(url, storage_options) if c.dtype != "char"]


def write_manifest(dataset: str | Sequence[str], variables: Sequence[str] | None = None,
                   path_or_none: str | None = None, *,
                   storage_options: Mapping[str, Any] | None = None,
                   concat_dim: str | None = None, pin_objects: bool = True) -> dict[str, Any]:
    """Read ``variables`` (default: all) of ``dataset`` and return (and write, given a path) a
    manifest.

    ``dataset`` is a path or URL of any supported format, a glob pattern or a list of them; several
    files are combined along ``concat_dim`` (default: each variable's first dimension), and a
    variable without that dimension is taken from the first file. ``pin_objects`` records each S3
    object's ETag and version id and checks every locator lies inside its object.
    """
    files = _expand(dataset, storage_options)
    names = list(variables) if variables else _list_any(files[0], storage_options)
    out: list[Variable] = []
    ids: dict[str, dict[str, Any]] = {}
    for name in names:
        first = open_variable(files[0], name, storage_options=dict(storage_options or {}))
        dim = concat_dim or (first.dimensions[0] if first.dimensions else None)
        if len(files) > 1 and dim is not None and dim in first.dimensions:
            parts = [first] + [open_variable(f, name, storage_options=dict(storage_options or {}))
                               for f in files[1:]]
            var = concatenate(parts, dim)
        else:
            var = first
        if pin_objects:
            var = pin(var, storage_options, identities=ids)
        out.append(var)
    doc = manifest_from_variables(out)
    if path_or_none is not None:
        save_manifest(doc, path_or_none, storage_options)
    return doc
