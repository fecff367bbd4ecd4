"""Run kernel tests down both of its paths: with the compiled one-pass reductions, and as an
installation without them (no C compiler at install time) would."""

from __future__ import annotations

import contextlib
from typing import Iterator

import pytest

from activestorage import fused

#: ``@pytest.mark.parametrize("compiled", PATHS)``, then ``with kernel_path(compiled): ...``
PATHS = [pytest.param(True, id="compiled"), pytest.param(False, id="numpy")]


@contextlib.contextmanager
def kernel_path(compiled: bool) -> Iterator[None]:
    """The compiled fast path on (if built) or off for the duration of the block."""
    saved = fused._c
    if not compiled:
        fused._c = None
    try:
        yield
    finally:
        fused._c = saved
