"""Readers that turn a dataset's metadata into :class:`~activestorage.formats.base.Variable`s."""

from .base import Locator, Variable

__all__ = ["Locator", "Variable"]
