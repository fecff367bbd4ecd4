"""Suite-wide rules.

Under ``CI=true`` a skipped test is a failure unless its reason is about the platform (something
no install step can add, such as Linux-only kernel interfaces). A test that skips because a test
dependency is missing or broken, because data are absent, or because a tool that ``scripts/test``
installs is not there would otherwise hide a feature: CI must say so loudly.

Helper functions shared by test modules are in ``tests/helpers.py`` (on ``sys.path`` from here).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

#: shared helpers live in tests/helpers.py: importable as ``helpers`` from every test directory
_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

CI = os.environ.get("CI") == "true"

#: words in a skip reason that make it acceptable under CI=true: the platform, not the set-up
PLATFORM_SKIP_WORDS = ("Linux", "glibc", "may not lock memory", "tmpfs",
                       "run together with")


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    if not CI or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if any(word in reason for word in PLATFORM_SKIP_WORDS):
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI=true, which counts as a failure: {reason}\n"
                       "(install what the test needs in scripts/test, or fix the test)")
