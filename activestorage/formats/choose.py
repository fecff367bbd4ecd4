"""Which variable ``Active(path)`` reduces when no variable is named.

A Zarr store that is itself one array is that array. Otherwise the dataset must hold exactly one
*data variable*: a numeric variable that is not a coordinate variable (named like its first
dimension, as ``lat(lat)``) and that no other variable names in a CF ``bounds``, ``climatology``,
``coordinates``, ``cell_measures`` or ``grid_mapping`` attribute. Anything else is ambiguous, and
the error lists the candidates so the caller can name one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..errors import FormatError, VariableNotFoundError

#: CF attributes whose values name auxiliary variables (not the data a user means to reduce)
CF_REFERENCE_ATTRS = ("bounds", "climatology", "coordinates", "cell_measures", "grid_mapping")


@dataclass(frozen=True)
class Candidate:
    """What the choice needs to know of one variable: its path, dimension names and attributes."""

    name: str
    dimensions: tuple[str, ...] = ()
    attrs: Mapping[str, Any] = field(default_factory=dict)


def _referenced(attrs: Mapping[str, Any]) -> set[str]:
    """Variable names that ``attrs`` point at (``cell_measures: "area: areacello"`` -> areacello)."""
    out: set[str] = set()
    for key in CF_REFERENCE_ATTRS:
        value = attrs.get(key)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str):
            out.update(w for w in value.split() if not w.endswith(":"))
    return out


def data_variables(candidates: Iterable[Candidate]) -> list[str]:
    """Names of the data variables among ``candidates`` (see the module docstring), in order."""
    cands = list(candidates)
    referenced: set[str] = set()
    for c in cands:
        group = c.name.rpartition("/")[0]
        for ref in _referenced(c.attrs):  # relative to the referring variable's group, or absolute
            referenced.add(ref.lstrip("/") if ref.startswith("/") or not group else f"{group}/{ref}")
    out = []
    for c in cands:
        base = c.name.rsplit("/", 1)[-1]
        if c.dimensions and c.dimensions[0] == base:
            continue  # a coordinate variable
        if c.name in referenced:
            continue
        out.append(c.name)
    return out


def choose_variable(candidates: Iterable[Candidate], where: str) -> str:
    """The one data variable of ``where``, or a :class:`VariableNotFoundError` listing candidates."""
    cands = list(candidates)
    data = data_variables(cands)
    if len(data) == 1:
        return data[0]
    if data:
        raise VariableNotFoundError(
            f"{where} has {len(data)} data variables; name the one to reduce, e.g. "
            f"Active(..., {data[0]!r}); data variables: {', '.join(data)}")
    listed = ", ".join(c.name for c in cands) or "none"
    raise VariableNotFoundError(
        f"{where} has no data variable to reduce by default (only coordinates, bounds and the "
        f"like); name one of its variables: {listed}")


# ------------------------------------------------------------------------ per format

def default_variable(dataset: str | Mapping[str, Any],
                     storage_options: Mapping[str, Any] | None = None) -> str:
    """The variable ``Active(dataset)`` reduces: see the module docstring.

    ``dataset`` is a local path, a URL or a parsed manifest. This reads the dataset's metadata once
    more than naming the variable would; it is only called when no variable is named.
    """
    if isinstance(dataset, Mapping):
        return choose_variable(_reference_candidates(dataset, storage_options), "the manifest")
    url = os.fspath(dataset)
    local = "://" not in url or url.startswith("file://")
    path = url.removeprefix("file://")
    if (local and os.path.isdir(path)) or (not local and url.rstrip("/").endswith(".zarr")):
        return _zarr_default(url, storage_options)
    from ..storage import open_url
    from .detect import detect_format

    with open_url(url, storage_options) as f:
        kind = detect_format(f.read(4096), url)
        if kind == "hdf5":
            f.seek(0)
            return choose_variable(_hdf5_candidates(f, url), url)
    if kind == "netcdf3":
        from .netcdf3 import _read

        hdr, _u, _size, _f = _read(url, storage_options)
        return choose_variable(
            [Candidate(v.name, tuple(hdr.dims[d][0] for d in v.dimids), v.attrs)
             for v in hdr.variables if v.nc_type != 2], url)  # NC_CHAR: text, not data
    if kind == "json":
        return choose_variable(_reference_candidates(url, storage_options), url)
    raise FormatError(f"{url} is not a netCDF-3, netCDF-4/HDF5, Zarr or manifest dataset")


def _hdf5_candidates(f: Any, url: str) -> list[Candidate]:
    import h5py

    from .hdf5 import _dimension_names, _read_attrs, list_variables

    try:
        h5 = h5py.File(f, "r")
    except OSError as exc:
        raise FormatError(f"{url}: cannot read the HDF5 metadata ({exc})") from exc
    with h5:
        return [Candidate(n, _dimension_names(h5[n]), _read_attrs(h5[n]))
                for n in list_variables(h5)]


def _zarr_default(url: str, storage_options: Mapping[str, Any] | None) -> str:
    from .zarr import _arrays, _open_node, import_zarr

    zarr = import_zarr()
    url = url.removeprefix("file://").rstrip("/")
    node, *_ = _open_node(url, storage_options)
    if isinstance(node, zarr.Array):
        return url.rsplit("/", 1)[-1]  # open_zarr accepts the store's own name
    cands = []
    for path, arr in sorted(_arrays(node).items()):
        dims = (getattr(arr.metadata, "dimension_names", None)
                or arr.attrs.get("_ARRAY_DIMENSIONS") or ())
        cands.append(Candidate(path, tuple(str(d) for d in dims), dict(arr.attrs)))
    return choose_variable(cands, url)


def _reference_candidates(doc_or_url: str | Mapping[str, Any],
                          storage_options: Mapping[str, Any] | None) -> list[Candidate]:
    from .references import _json_ref, _kerchunk_refs, _kind, load

    doc, where = load(doc_or_url, storage_options)
    if _kind(doc, where) == "manifest":
        return [Candidate(n, tuple(e.get("dimensions") or ()), e.get("attrs") or {})
                for n, e in (doc.get("variables") or {}).items()]
    refs = _kerchunk_refs(doc, where)
    cands = []
    for key in sorted(refs):
        if key.endswith(".zarray"):
            name = key[: -len("/.zarray")] if "/" in key else ""
            attrs = _json_ref(refs.get(f"{name}/.zattrs" if name else ".zattrs", "{}"), key, where)
            cands.append(Candidate(name, tuple(attrs.get("_ARRAY_DIMENSIONS") or ()), attrs))
    return cands
