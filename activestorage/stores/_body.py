"""Response bodies of range GETs (S3 and HTTP alike), read into the caller's buffers.

The measured trick lives here and only here: a body that arrives as sent is read straight from the
``http.client`` response under urllib3's (``_fp``, checked unread through ``_fp_bytes_read`` and
``_decoded_buffer``) into the buffer it ends up in, not through the client's ``read``, which
allocates and copies every piece. ``tests/test_stores.py`` fails if those private attributes change.
A deflated body is handed to the inflater a piece at a time as it arrives
(:class:`~activestorage.kernel.StoredPieces`).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..errors import StorageError
from ..kernel import StoredPieces

if TYPE_CHECKING:
    import http.client

# ``http.client`` (and the ``email`` package under it, ~10 ms) is not imported here: local files
# read through this module too, and a response of it can only exist once an HTTP client loaded it


class _Transient(StorageError):
    """A read that failed part-way (reset, body cut short): worth retrying."""


def _short(url: str, start: int, end: int, got: int) -> _Transient:
    return _Transient(f"short read from {url}: wanted bytes {start}-{end - 1}, got {got} bytes "
                      "(body cut short, or the object was truncated or replaced)", status=502,
                      store=url)


#: ``consume(body)``: does something with a response body while it is open
Consumer = Callable[["_Body"], Any]


#: bodies the HTTP client must hand over itself (decoded, or with no socket reader to reach) are
#: read this many bytes at a time into the buffer they end up in: the client holds each piece
#: about twice (what it read and the copy it returns), so smaller pieces hold less; 256 KiB ones
#: took ~30 % longer over loopback.
BODY_PIECE = 512 * 1024
#: deflated bodies are handed to the inflater this many bytes at a time (inflating, not reading,
#: sets the pace there)
STREAM_PIECE = 256 * 1024


def _socket_reader(raw: Any) -> http.client.HTTPResponse | None:
    """The ``http.client`` response under a urllib3 one (``requests``' ``resp.raw``, botocore's
    ``Body._raw_stream``) when its body arrives as sent (no Content-Encoding to undo) and none
    of it has been read yet; else None."""
    client = sys.modules.get("http.client")  # not loaded: ``raw`` holds none of its responses
    fp = getattr(raw, "_fp", None)
    headers = getattr(raw, "headers", None)
    if client is None or not isinstance(fp, client.HTTPResponse) or headers is None \
            or fp.isclosed():
        return None
    if headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity"):
        return None
    if getattr(raw, "_fp_bytes_read", 1) != 0 or len(getattr(raw, "_decoded_buffer", ())):
        return None
    return fp


def _http_body_error(url: str, timeout: float, exc: BaseException) -> Exception:
    """What a failure reading an HTTP body straight from its socket becomes: a stall is the
    store's timeout (504), anything else a body cut short (read again)."""
    if isinstance(exc, TimeoutError):
        return StorageError(f"reading {url} timed out after {timeout}s", status=504, store=url,
                            causes=[str(exc)])
    return _Transient(f"reading {url}: body cut short: {exc}", status=502, store=url,
                      causes=[f"{type(exc).__name__}: {exc}"])


class _Body:
    """An open response body; ``n`` is the length of the range asked for.

    :meth:`readinto` fills the caller's buffer. Where the body arrives as sent and the HTTP
    client's ``http.client`` response can be reached (:func:`_socket_reader`), it is read
    straight from the socket into that buffer: the client's own ``read`` allocates every piece
    and copies it (twice on Python 3.11), which with 8 threads held megabytes more. ``error``
    turns a failure of such a read into the caller's exception; errors of ``read`` are the
    caller's already.
    """

    def __init__(self, read: Callable[[int], bytes], n: int, raw: Any = None,
                 error: Callable[[BaseException], Exception] | None = None) -> None:
        self.n = n
        self._read = read
        self._raw = raw
        self._fp = _socket_reader(raw) if error is not None else None
        self._error = error

    def readinto(self, mv: memoryview) -> int:
        """Up to ``len(mv)`` bytes into ``mv``; 0 once the body has ended."""
        if self._fp is None:
            piece = self._read(min(len(mv), BODY_PIECE))
            mv[:len(piece)] = piece
            return len(piece)
        import http.client  # loaded already: self._fp is one of its responses

        try:
            return self._fp.readinto(mv)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise self._error(exc) from exc  # type: ignore[misc]

    def finish(self) -> None:
        """Call once the range has been read: one byte more is asked for, so a body cut short
        of a longer declared length is an error, as reading it whole would make it (anything
        past the range is ignored); a body read from its socket to its end gives its
        connection back for reuse, as the client's own reads do."""
        if self._fp is None:
            self._read(1)
            return
        import http.client  # loaded already: fp is one of its responses

        fp = self._fp
        if not fp.isclosed() and not self.readinto(memoryview(bytearray(1))) and fp.length:
            raise self._error(http.client.IncompleteRead(b"", fp.length))  # type: ignore[misc]
        if fp.isclosed():
            release = getattr(self._raw, "release_conn", None)
            if release is not None:
                release()


def _read_body(body: _Body) -> Any:
    """The range's bytes, read into one buffer: a body that ends early gives fewer bytes, never
    more; the body is then checked against its declared length (:meth:`_Body.finish`)."""
    n = body.n
    buf = bytearray(n)
    mv, pos = memoryview(buf), 0
    while pos < n:
        got = body.readinto(mv[pos:])
        if not got:
            return mv[:pos]
        pos += got
    body.finish()
    return buf


class _BodyPieces(StoredPieces):
    """A range body handed to the inflater a piece at a time, as it arrives, each read into the
    same buffer; one that ends early raises ``_Transient`` (the range is read again), as a
    short whole read does."""

    def __init__(self, body: _Body, url: str, start: int) -> None:
        self._body, self._n, self._url, self._start = body, body.n, url, start
        self._buf = memoryview(bytearray(min(STREAM_PIECE, body.n)))
        self._pos = 0
        self._checked = False

    @property
    def nbytes(self) -> int:
        return self._n

    def _next(self) -> memoryview:
        got = self._body.readinto(self._buf[:self._n - self._pos])
        if not got:
            raise _short(self._url, self._start, self._start + self._n, self._pos)
        self._pos += got
        return self._buf[:got]

    def pieces(self) -> Iterator[Any]:
        while self._pos < self._n:
            yield self._next()
        self.finish()

    def finish(self) -> None:
        """Read what the consumer left of the body (nothing, unless its stream ended early)
        and check it against its declared length, as when a body is read whole."""
        if self._checked:
            return
        while self._pos < self._n:
            self._next()
        self._checked = True
        self._body.finish()


def _quote_etag(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'
