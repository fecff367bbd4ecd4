"""The one exception family of activestorage.

Every error the library raises on purpose is an :class:`ActiveStorageError`, so callers can catch
one type; subclasses say what went wrong and carry the context (file, variable, field, status) that
makes the message actionable.
"""

from __future__ import annotations

from typing import Any


class ActiveStorageError(Exception):
    """Base class of every error raised by activestorage."""


class RequestValidationError(ActiveStorageError, ValueError):
    """A chunk-reduction request is malformed; ``field`` names the offending request field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


class UnsupportedError(ActiveStorageError, NotImplementedError):
    """A dtype, codec, filter or layout this library cannot reduce."""


class OperationNotAvailableError(UnsupportedError):
    """An operation the chosen backend cannot compute (e.g. ``var`` on a reduction server
    without the moments extension)."""


class DecodeError(ActiveStorageError):
    """A chunk's bytes could not be decoded: corrupt data, checksum mismatch, wrong size."""


class FormatError(ActiveStorageError, ValueError):
    """A dataset could not be opened or its metadata is not understood.

    Also a ``ValueError``, as PyActiveStorage raises for a missing or unreadable file."""


class MissingDependencyError(ActiveStorageError, ImportError):
    """An optional dependency is not installed; ``extra`` names the activestorage extra that
    brings it (``pip install 'activestorage[EXTRA]'``)."""

    def __init__(self, message: str, *, name: str | None = None, extra: str | None = None) -> None:
        super().__init__(message, name=name)
        self.extra = extra


class InvalidArgumentError(ActiveStorageError, ValueError):
    """An argument of ``Active`` (method, ncvar, interface_type, _version ...) is not valid.

    A ``ValueError`` too, as PyActiveStorage raises for the same mistakes."""


class VariableNotFoundError(ActiveStorageError, KeyError, ValueError):
    """The requested variable is not in the dataset (a ``ValueError`` too, as in PyActiveStorage)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SelectionError(ActiveStorageError, IndexError):
    """An index or selection does not fit the variable's shape."""


class AxisError(SelectionError, ValueError):
    """A reduction axis is out of range or repeated (``ValueError`` as in PyActiveStorage, and
    still an ``IndexError`` like every selection error)."""


class StorageError(ActiveStorageError):
    """Reading from a store failed. ``status`` is the HTTP status to report (e.g. 401, 400, 502, 504)."""

    def __init__(self, message: str, *, status: int = 502, store: str | None = None,
                 causes: list[str] | None = None) -> None:
        self.status = status
        self.store = store
        self.causes = list(causes or [])
        super().__init__(message)


class ObjectChangedError(StorageError):
    """The object no longer matches the ETag/version id its locator was pinned to."""


class ServerError(ActiveStorageError):
    """A reduction server answered with an error; carries its status and decoded error body."""

    def __init__(self, message: str, *, status: int | None = None, url: str | None = None,
                 body: Any = None) -> None:
        self.status = status
        self.url = url
        self.body = body
        super().__init__(message)
