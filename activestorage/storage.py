"""S3 helpers the server backend reads (credentials, endpoint) and PyActiveStorage's chunk
functions (``activestorage.storage.reduce_chunk`` ...), over this package's stores and kernel.

:func:`open_url` (a dataset URL as a seekable, block-cached file for metadata reads) lives in
:mod:`activestorage.stores.fileobj` and is re-exported here under its old name.

S3 settings follow s3fs (``key``, ``secret``, ``token``, ``anon``, ``endpoint_url``,
``client_kwargs={"endpoint_url": ..., "region_name": ...}``) with the AWS environment variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION``/``AWS_DEFAULT_REGION``) as defaults, resolved explicitly by
:func:`resolve_s3_options` so the fetch and server backends agree on endpoint and credentials.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from .stores.fileobj import (DEFAULT_BLOCK_SIZE, DEFAULT_MAX_BLOCKS, CountingFile,  # noqa: F401
                             StorageStats, open_url)
from .stores.urls import local_path, resolve_s3_options, split_s3_url, url_kind  # noqa: F401

log = logging.getLogger(__name__)

DEFAULT_AWS_ENDPOINT = "https://s3.amazonaws.com"


def s3_credentials(options: Mapping[str, Any]) -> tuple[str, str] | None:
    """(access key, secret) for resolved options; botocore's chain (profiles, config files) when
    none were given; None for anonymous access."""
    if options.get("anon"):
        return None
    if options.get("key") and options.get("secret"):
        return str(options["key"]), str(options["secret"])
    try:
        import botocore.session

        creds = botocore.session.Session(profile=options.get("profile")).get_credentials()
    except Exception as exc:  # noqa: BLE001 - a broken profile must not crash, just be anonymous
        log.debug("no AWS credentials from botocore: %s", exc)
        return None
    if creds is None or not creds.access_key:
        return None
    return creds.access_key, creds.secret_key


def s3_endpoint(options: Mapping[str, Any]) -> str:
    """The S3 endpoint URL for resolved options (AWS's regional endpoint when none is set)."""
    if options.get("endpoint_url"):
        return str(options["endpoint_url"]).rstrip("/")
    region = (options.get("client_kwargs") or {}).get("region_name")
    return f"https://s3.{region}.amazonaws.com" if region else DEFAULT_AWS_ENDPOINT


# ------------------------------------------------------- PyActiveStorage's chunk functions

def read_block(open_file: Any, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of an open file, leaving its position as it was."""
    place = open_file.tell()
    try:
        open_file.seek(offset)
        return open_file.read(size)
    finally:
        open_file.seek(place)


def filter_pipeline(chunk: Any, compression: Any, filters: Any) -> Any:
    """Undo numcodecs ``compression`` then ``filters`` (in reverse write order) on ``chunk``."""
    if compression is not None:
        chunk = compression.decode(chunk)
    for f in reversed(list(filters or [])):
        chunk = f.decode(chunk)
    return chunk


def mask_missing(data: Any, missing: Any) -> Any:
    """``data`` masked by PyActiveStorage's ``(fill_value, missing_value, valid_min,
    valid_max)`` tuple, with the kernel's missing-data rules."""
    from .compat import mask_missing as _mask

    return _mask(data, missing)


def _read_chunk_bytes(rfile: Any, offset: int, size: int) -> bytes:
    """A chunk's stored bytes from a local path, an http(s)/s3 URL or a pyfive dataset."""
    from .formats.objects import is_pyfive_dataset, locate

    options = None
    if is_pyfive_dataset(rfile):
        from .formats.objects import _pyfive_location

        rfile, options = _pyfive_location(rfile)
    else:
        rfile, options = locate(rfile, None, None)
    with open_url(os.fspath(rfile), options) as f:
        return read_block(f, int(offset), int(size))


def reduce_chunk(rfile: Any, offset: int, size: int, compression: Any, filters: Any,
                 missing: Any, dtype: Any, shape: Any, order: str, chunk_selection: Any,
                 axis: Any, method: Any = None,
                 option_disable_chunk_cache: bool = False) -> tuple[Any, Any]:
    """Read, decode, select, mask and reduce one chunk here (PyActiveStorage's signature).

    ``rfile``: a local path, an http(s)/s3 URL or a pyfive dataset; ``method``: a NumPy
    function (``np.ma.min`` ...) or its name, None for plain data. Returns ``(values, counts)``
    with the reduced axes kept as length 1, or ``(masked data, None)``.
    ``option_disable_chunk_cache`` is accepted for the peer's signature (nothing is cached here).
    """
    from .compat import chunk_request, reduce_bytes

    raw = _read_chunk_bytes(rfile, offset, size)
    req = chunk_request(0, len(raw), compression, filters, missing, dtype, shape, order,
                        chunk_selection, axis, method=method)
    return reduce_bytes(raw, req, method)


def reduce_opens3_chunk(fh: Any, offset: int, size: int, compression: Any, filters: Any,
                        missing: Any, dtype: Any, shape: Any, order: str, chunk_selection: Any,
                        axis: Any, method: Any = None) -> tuple[Any, Any]:
    """:func:`reduce_chunk` for a chunk read from an already open file object ``fh``."""
    from .compat import chunk_request, reduce_bytes

    fh.seek(int(offset))
    raw = fh.read(int(size))
    req = chunk_request(0, len(raw), compression, filters, missing, dtype, shape, order,
                        chunk_selection, axis, method=method)
    return reduce_bytes(raw, req, method)
