"""argparse conventions shared by every ``activestorage`` command (and ``serve``).

Errors are one line on stderr with a pointer to ``--help`` (exit code 2), not argparse's usage block
followed by the message; ``--help`` shows each option's default next to its description.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

#: exit code of a command line that is wrong
EXIT_USAGE = 2


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
