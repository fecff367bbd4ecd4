"""PyActiveStorage's ``activestorage.reductionist`` module path: one chunk to a reduction server.

``reduce_chunk`` takes the peer's arguments (numcodecs codecs, a missing-data 4-tuple, the full
object URL with ``interface_type`` "s3" or "https") and goes through this package's server client
(:func:`activestorage.backends.server.reduce_chunk`): the same wire format, retries and errors.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .backends.server import DEFAULT_TIMEOUT, make_session
from .backends.server import reduce_chunk as _server_reduce_chunk
from .errors import ServerError

__all__ = ["ReductionistError", "get_session", "reduce_chunk"]


class ReductionistError(ServerError):
    """A reduction server refused or failed a request (``status_code`` and the server's error)."""

    def __init__(self, status_code: int | None, error: Any, *, url: str | None = None) -> None:
        self.status_code = status_code
        super().__init__(f"Reductionist error: HTTP {status_code}: {error}", status=status_code,
                         url=url, body=error)


def get_session(username: str | None, password: str | None, cacert: str | None) -> Any:
    """A ``requests.Session`` for the server: Basic auth when both are given; TLS verified
    against ``cacert`` when given (PyActiveStorage turned verification off otherwise; this
    keeps the system's CA store instead)."""
    s = make_session(verify=cacert or True)
    if username is not None or password is not None:
        s.auth = (username or "", password or "")
    return s


def reduce_chunk(session: Any, server: str, url: str, offset: int, size: int, compression: Any,
                 filters: Any, missing: Any, dtype: Any, shape: Sequence[int], order: str,
                 chunk_selection: Sequence[Any] | None, axis: Any, operation: str | None,
                 interface_type: str | None = None, option_disable_chunk_cache: bool = False,
                 *, timeout: Any = DEFAULT_TIMEOUT) -> tuple[np.ma.MaskedArray, np.ndarray]:
    """Reduce one chunk on ``server``; ``(result masked where its count is 0, counts)``.

    ``url`` is the object's full URL (S3 path style for ``interface_type`` "s3", the default);
    ``operation`` min/max/sum/count, ``mean`` (the sum is returned) or None (plain data).
    Raises :class:`ReductionistError` when the server answers with an error.
    """
    try:
        values, counts = _server_reduce_chunk(
            session, server, url, offset, size, compression, filters, missing, dtype, shape,
            order, chunk_selection, axis, operation, interface_type or "s3",
            timeout=timeout, disable_chunk_cache=option_disable_chunk_cache)
    except ReductionistError:
        raise
    except ServerError as exc:
        raise ReductionistError(exc.status, exc.body if exc.body is not None else str(exc),
                                url=exc.url) from exc
    return np.ma.masked_where(np.asarray(counts) == 0, values), counts
