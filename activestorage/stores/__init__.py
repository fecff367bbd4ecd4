"""Byte stores: the one way the package reads bytes of local files, S3 objects and HTTP resources.

:func:`open_store` picks the store for a URL; :class:`~.base.ByteStore` is the interface.
"""

from __future__ import annotations

from typing import Any, Mapping

from .base import (DEFAULT_MAX_GAP, DEFAULT_MAX_RANGE, ByteStore, RangeGroup, merge_ranges,
                   status_error)
from .urls import local_path, resolve_s3_options, split_s3_url, url_kind

__all__ = ["ByteStore", "RangeGroup", "merge_ranges", "status_error", "open_store", "url_kind",
           "local_path", "split_s3_url", "resolve_s3_options", "DEFAULT_MAX_GAP",
           "DEFAULT_MAX_RANGE"]


def open_store(url: str, storage_options: Mapping[str, Any] | None = None,
               **kwargs: Any) -> ByteStore:
    """The store that reads ``url`` (a local path or ``file://``, ``s3://``, ``http(s)://``),
    configured from s3fs-style ``storage_options``; ``kwargs`` go to its constructor
    (``timeout``, ``retries``, ``verify``, ``pool_size``, ``account``, ``env`` for S3)."""
    kind = url_kind(url)
    if kind == "file":
        from .local import LocalStore

        kwargs.pop("env", None)
        return LocalStore(account=kwargs.get("account"))
    if kind == "s3":
        from .s3 import S3Store

        return S3Store(storage_options, **kwargs)
    from .http import HTTPStore

    kwargs.pop("env", None)
    return HTTPStore(storage_options, **kwargs)
