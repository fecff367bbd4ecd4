"""Backends: where a chunk's bytes come from and where the kernel runs."""

from .base import Backend, BackendStats

__all__ = ["Backend", "BackendStats"]
