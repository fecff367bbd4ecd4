"""The one registry of format readers: which reader opens a dataset, by its first bytes and name.

Every reader is a class with the same three methods (see :class:`FormatReader`) and is listed once,
in :data:`READERS`; plug-ins add theirs through the ``activestorage.formats`` entry-point group
(like xarray's backends). :func:`open_path`, :func:`list_variables` and :func:`default_variable`
(used by :func:`~activestorage.formats.open_variable`, the CLI's ``info`` and ``manifest``, and
manifests) all dispatch through :func:`probe`, so a format is detected in one place.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Any, Iterator, Mapping, Protocol, runtime_checkable

from ..errors import FormatError
from .base import Variable
from .choose import Candidate, choose_variable
from .hdf5 import Hdf5Reader
from .netcdf3 import Netcdf3Reader
from .references import ReferencesReader
from .zarr import ZarrReader

__all__ = [
    "HEAD_BYTES",
    "READERS",
    "FormatReader",
    "default_variable",
    "detect_format",
    "list_variables",
    "open_path",
    "probe",
    "readers",
]

log = logging.getLogger(__name__)

#: how many leading bytes :meth:`FormatReader.can_open` is shown
HEAD_BYTES = 4096

#: the entry-point group plug-in readers register under (``name = "module:ReaderClass"``)
ENTRY_POINT_GROUP = "activestorage.formats"


@runtime_checkable
class FormatReader(Protocol):
    """What a format reader provides; ``name`` is what :func:`detect_format` reports for it.

    ``source`` is a local path or a URL. ``file``, when given, is that dataset's bytes already
    open for reading (positioned at 0) by :func:`probe`, so a reader that can use a file object
    need not open the dataset again; it is None for directory stores (Zarr).
    """

    name: str
    #: how error messages name the format ("netCDF-4/HDF5")
    title: str

    def can_open(self, head: bytes, url: str) -> bool:
        """Whether this reader reads the dataset at ``url`` whose first bytes are ``head``
        (empty for a directory store, or a remote store probed by name only)."""

    def open(self, source: str, ncvar: str, storage_options: Mapping[str, Any] | None = None, *,
             file: Any = None) -> Variable:
        """The :class:`Variable` ``ncvar`` of the dataset."""

    def list_variables(self, source: str, storage_options: Mapping[str, Any] | None = None, *,
                       file: Any = None) -> list[Candidate]:
        """Every variable of the dataset, in its order, with its dimensions, attributes and dtype
        (``"char"`` for text, which cannot be reduced)."""


#: the built-in readers, in the order they are asked (magic numbers first, then names, then JSON)
READERS: tuple[FormatReader, ...] = (Netcdf3Reader(), Hdf5Reader(), ZarrReader(), ReferencesReader())


def entry_points(group: str) -> Any:
    """The installed entry points of ``group``. ``importlib.metadata`` is imported here, not at
    module level: importing it and scanning every installed distribution's metadata cost a fresh
    process 20-40 ms (60-80 ms on a loaded machine) of its first ``Active(...)``, and is needed
    only when no built-in reader knows the dataset (see :func:`_find`)."""
    from importlib.metadata import entry_points as installed

    return installed(group=group)


@functools.cache
def readers() -> tuple[FormatReader, ...]:
    """The built-in readers followed by those plug-ins register (read once per process)."""
    extra = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            reader = ep.load()()
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not break the built-ins
            log.warning("format plug-in %s (%s) failed to load: %s", ep.name, ep.value, exc)
            continue
        if not isinstance(reader, FormatReader):
            log.warning("format plug-in %s (%s) is not a FormatReader; ignored", ep.name, ep.value)
            continue
        extra.append(reader)
    return READERS + tuple(extra)


def detect_format(head: bytes, url: str) -> str:
    """The name of the reader for the dataset at ``url`` starting with ``head``, or
    ``"unknown"``: ``"netcdf3"``, ``"hdf5"``, ``"zarr"`` or ``"json"`` (a manifest or kerchunk
    references) for the built-in ones."""
    reader = _find(bytes(head or b""), os.fspath(url))
    return reader.name if reader is not None else "unknown"


def _find(head: bytes, url: str) -> FormatReader | None:
    # the built-in readers first, so plug-ins are looked up only for a dataset none of them reads
    # (they come after the built-ins in readers() anyway)
    for reader in READERS:
        if reader.can_open(head, url):
            return reader
    for reader in readers()[len(READERS):]:
        if reader.can_open(head, url):
            return reader
    return None


def _is_store(url: str) -> bool:
    """A directory (local) or ``*.zarr`` (remote) store: detected by name, its bytes not read."""
    if "://" in url and not url.startswith("file://"):
        return url.rstrip("/").endswith(".zarr")
    return os.path.isdir(url.removeprefix("file://"))


def _not_recognised(url: str, head: bytes, what: str) -> FormatError:
    titles = [r.title for r in readers()]
    names = ", ".join(titles[:-1]) + " or " + titles[-1] if len(titles) > 1 else titles[0]
    starts = f" (it starts with {head[:8]!r})" if what == "file" else ""
    return FormatError(f"{url} is not a {names} {what}{starts}")


@contextlib.contextmanager
def probe(url: str, storage_options: Mapping[str, Any] | None = None
          ) -> Iterator[tuple[FormatReader, Any]]:
    """Find the reader of ``url``: yields ``(reader, file)``, ``file`` open at offset 0 (None for
    a store directory) and closed on exit. Raises :class:`FormatError` for an unknown format."""
    from ..stores.fileobj import open_url

    if _is_store(url):
        reader = _find(b"", url)
        if reader is None:
            raise _not_recognised(url, b"", "dataset")
        yield reader, None
        return
    local = "://" not in url or url.startswith("file://")
    with open_url(url, storage_options) as f:
        head = f.read(HEAD_BYTES)
        f.seek(0)
        reader = _find(head, url)
        if reader is None:
            raise _not_recognised(url, head, "file" if local else "object")
        yield reader, f


def open_path(url: str, ncvar: str | None, storage_options: Mapping[str, Any] | None = None
              ) -> Variable:
    """Open ``ncvar`` of the dataset at path or URL ``url``, whatever its format."""
    with probe(url, storage_options) as (reader, f):
        if not ncvar:
            from ..errors import ActiveStorageError

            raise ActiveStorageError(f"name the variable to reduce in {url} (ncvar=...)")
        return reader.open(url, ncvar, storage_options, file=f)


def list_variables(url: str, storage_options: Mapping[str, Any] | None = None) -> list[Candidate]:
    """Every variable of the dataset at ``url`` (see :meth:`FormatReader.list_variables`)."""
    with probe(url, storage_options) as (reader, f):
        return reader.list_variables(url, storage_options, file=f)


def default_variable(dataset: str | Mapping[str, Any],
                     storage_options: Mapping[str, Any] | None = None) -> str:
    """The variable ``Active(dataset)`` reduces when none is named (see :mod:`.choose`).

    ``dataset`` is a local path, a URL or a parsed manifest. This reads the dataset's metadata once
    more than naming the variable would; it is only called when no variable is named.
    """
    if isinstance(dataset, Mapping):
        cands = ReferencesReader().list_variables(dataset, storage_options)
        return choose_variable([c for c in cands if c.dtype != "char"], "the manifest")
    url = os.fspath(dataset)
    with probe(url, storage_options) as (reader, f):
        cands = reader.list_variables(url, storage_options, file=f)
    if reader.name == "zarr" and len(cands) == 1 and cands[0].array_store:
        return cands[0].name  # an array store: open_zarr accepts the store's own name
    return choose_variable([c for c in cands if c.dtype != "char"],
                           url.removeprefix("file://").rstrip("/") if reader.name == "zarr" else url)
