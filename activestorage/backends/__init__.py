"""Backends: where a chunk's bytes come from and where the kernel runs."""

from .base import Backend, BackendStats
from .factory import make_backend

__all__ = ["Backend", "BackendStats", "make_backend"]
