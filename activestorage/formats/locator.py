"""Where one stored chunk's bytes are: the :class:`Locator` every chunk index maps coordinates to.

Its own module so that :mod:`.chunk_index` and :mod:`.base` both build on it without importing
each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["Locator"]


@dataclass(frozen=True, slots=True)
class Locator:
    """Where one stored chunk's bytes are: ``size`` bytes at ``offset`` of the object ``url``.

    ``url`` is a local path or an ``s3://``/``https://`` URL. ``etag``/``version_id`` pin the object
    (a read of a changed object must fail). ``compression``/``filters`` override the variable's
    codecs for this one chunk (HDF5 may skip optional filters per chunk); ``None`` means "as the
    variable".
    """

    url: str
    offset: int
    size: int
    etag: str | None = None
    version_id: str | None = None
    compression: Mapping[str, Any] | None = None
    filters: tuple[Mapping[str, Any], ...] | None = None
    no_compression: bool = False
