"""PyActiveStorage's ``activestorage.hdf2numcodec``: an HDF5 filter pipeline as numcodecs codecs.

``decode_filters`` takes pyfive's ``filter_pipeline`` (dicts with ``filter_id`` and
``client_data``) and returns ``(compressor or None, [filters])`` in write order. Beyond the
peer's deflate and shuffle it maps the codecs this package's kernel undoes too (bzip2, zstd,
blosc, fletcher32); any other filter is an :class:`~activestorage.errors.UnsupportedError`
(a ``NotImplementedError``, as the peer raises).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from .errors import UnsupportedError

RESERVED_FILTER = 0
GZIP_DEFLATE_FILTER = 1
SHUFFLE_FILTER = 2
FLETCH32_FILTER = 3
SZIP_FILTER = 4
NBIT_FILTER = 5
SCALEOFFSET_FILTER = 6
BZIP2_FILTER = 307
BLOSC_FILTER = 32001
ZSTD_FILTER = 32015


def decode_filters(filter_pipeline: Iterable[Mapping[str, Any]], itemsize: int,
                   name: str) -> tuple[Any, list[Any]]:
    """``(compressor, filters)`` as numcodecs codecs for ``filter_pipeline`` of variable
    ``name`` with ``itemsize``-byte elements."""
    import numcodecs

    compressors: list[Any] = []
    filters: list[Any] = []
    for f in filter_pipeline or ():
        fid = int(f["filter_id"])
        data = list(f.get("client_data") or ())
        if fid == GZIP_DEFLATE_FILTER:
            compressors.append(numcodecs.Zlib(level=int(data[0]) if data else 1))
        elif fid == SHUFFLE_FILTER:
            filters.append(numcodecs.Shuffle(elementsize=itemsize))
        elif fid == FLETCH32_FILTER:
            filters.append(numcodecs.Fletcher32())
        elif fid == BZIP2_FILTER:
            compressors.append(numcodecs.BZ2(level=int(data[0]) if data else 9))
        elif fid == ZSTD_FILTER:
            compressors.append(numcodecs.Zstd(level=int(data[0]) if data else 0))
        elif fid == BLOSC_FILTER:
            compressors.append(numcodecs.Blosc())
        else:
            raise UnsupportedError(f"{name}: HDF5 filter {fid} is not supported; supported are "
                                   "deflate, shuffle, fletcher32, bzip2, zstd and blosc")
    if len(compressors) > 1:
        raise UnsupportedError(f"{name}: more than one compressor in the filter pipeline")
    return (compressors[0] if compressors else None), filters
