"""argparse conventions shared by every ``activestorage`` command (and ``serve``).

Errors are one line on stderr with a pointer to ``--help`` (exit code 2), not argparse's usage block
followed by the message; ``--help`` shows each option's default next to its description.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

#: exit code of a command line that is wrong
EXIT_USAGE = 2


class UsageError(Exception):
    """The command line is wrong (exit code 2)."""


def human_bytes(n: float) -> str:
    """``n`` bytes for people: ``512 B``, ``1.5 KiB``, ... ``2.0 TiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``PROG: error: MESSAGE (see 'PROG --help')``."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already names its default,
    the default is None (nothing set) or the option is an off-by-default flag."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "default" in text.lower() or default is None
                or default is argparse.SUPPRESS or not action.option_strings
                or (isinstance(action, argparse._StoreTrueAction) and default is False)):
            return text
        return f"{text} (default: %(default)s)"
