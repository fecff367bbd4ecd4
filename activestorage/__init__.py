"""activestorage: reductions over chunked scientific arrays where the data lives."""

from .errors import (ActiveStorageError, AxisError, DecodeError, FormatError,
                     InvalidArgumentError, MissingDependencyError, ObjectChangedError,
                     OperationNotAvailableError, RequestValidationError, SelectionError, ServerError, StorageError,
                     UnsupportedError, VariableNotFoundError)

__version__ = "0.1.0"

__all__ = [
    "Active", "ActiveStorageError", "AxisError", "DecodeError", "FormatError",
    "InvalidArgumentError", "MissingDependencyError", "ObjectChangedError",
    "OperationNotAvailableError", "RequestValidationError", "SelectionError", "ServerError", "StorageError",
    "UnsupportedError", "VariableNotFoundError", "__version__",
]


def __getattr__(name: str):  # lazy: importing the server must not import h5py and friends
    if name == "Active":
        from .active import Active

        return Active
    raise AttributeError(name)
