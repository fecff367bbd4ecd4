"""Progress bars for long reductions, and only for those.

:func:`progress` shows a tqdm bar (``tqdm.auto``: the widget in Jupyter, text in a terminal) when
the work takes more than ``delay`` seconds (1 s by default) *and* someone can see it: stderr is a
terminal or we run in a notebook kernel. ``enabled=True`` forces it, ``enabled=False`` or the
environment variable ``ACTIVESTORAGE_PROGRESS=0`` turns it off. Without tqdm installed the bar is
silently a no-op (forcing it logs a warning): a progress bar never breaks a computation.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Mapping

log = logging.getLogger(__name__)

_OFF = ("0", "false", "no", "off")
_ON = ("1", "true", "yes", "on", "force")


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (where tqdm.auto draws a widget)."""
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython  # type: ignore[import-not-found]
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def wanted(enabled: bool | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Whether a bar should be shown: the argument, else ``ACTIVESTORAGE_PROGRESS``, else
    auto-detection (a terminal on stderr, or a notebook)."""
    if enabled is not None:
        return bool(enabled)
    env = os.environ if env is None else env
    setting = env.get("ACTIVESTORAGE_PROGRESS", "").strip().lower()
    if setting in _OFF:
        return False
    if setting in _ON:
        return True
    return _stderr_is_terminal() or _in_notebook()


class NullProgress:
    """The bar when there is none: every call does nothing."""

    total = 0
    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_total(self, total: int) -> None:
        self.total = total

    def close(self) -> None:
        pass

    def __enter__(self) -> "NullProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Progress(NullProgress):
    """A tqdm bar that appears only after ``delay`` seconds (thread-safe: tqdm locks itself)."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar

    @property
    def total(self) -> int:  # type: ignore[override]
        return int(self._bar.total or 0)

    @property
    def n(self) -> int:  # type: ignore[override]
        return int(self._bar.n)

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def set_total(self, total: int) -> None:
        self._bar.total = total
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


def progress(total: int, desc: str, enabled: bool | None = None, *, delay: float = 1.0,
             file: Any = None, unit: str = "chunk") -> NullProgress:
    """A progress bar over ``total`` units of work: ``.update(n)``, ``.close()``, or ``with``.

    Shown only if :func:`wanted` says so and the work lasts longer than ``delay`` seconds.
    """
    if not wanted(enabled):
        return NullProgress()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if enabled:
            log.warning("progress bars need tqdm (pip install tqdm); continuing without one")
        return NullProgress()
    bar = tqdm(total=total, desc=desc, delay=delay, file=file if file is not None else sys.stderr,
               unit=unit, leave=False, dynamic_ncols=True)
    return Progress(bar)
