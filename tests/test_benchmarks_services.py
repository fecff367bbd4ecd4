"""benchmarks/services.py's shared pieces of the ``--remote`` benchmarks: one timed row and the
remote table (the servers themselves are tested through tests/integration/servers.py)."""

from __future__ import annotations

import numpy as np

from benchmarks import services


def test_timed_row_keeps_the_best_time_and_checks_the_answer() -> None:
    times = iter([0.5, 0.2, 0.3])
    calls = []

    def fn():
        calls.append(1)
        return np.array([1.0, np.nan, 3.0]), {"seconds": next(times), "bytes_received": 7}

    row, values = services.timed_row(3, fn, np.array([1.0, np.nan, 3.0 + 1e-7]), rtol=1e-6)
    assert len(calls) == 3
    assert row == {"seconds": 0.2, "agrees": True, "bytes_received": 7}
    np.testing.assert_array_equal(values, [1.0, np.nan, 3.0])
    row, _ = services.timed_row(1, lambda: (np.array([1.0, 2.0]), {}), np.array([1.0, 2.1]),
                                rtol=1e-3)
    assert row["agrees"] is False and row["seconds"] > 0  # wall time when fn gives none
    row, _ = services.timed_row(0, lambda: (np.array([5.0]), {}), None, rtol=0)
    assert row["agrees"] is True  # no reference: these values are the reference


def test_print_remote_prints_a_row_per_case_and_says_whether_one_disagrees(capsys) -> None:
    rows = {"plain s3 server": {"seconds": 0.25, "agrees": True, "bytes_received": 3100,
                                "ran": "server"},
            "plain s3 fetch": {"seconds": 1.5, "agrees": False, "bytes_received": 20736000,
                               "ran": "fetch"}}
    assert services.print_remote("case", rows, ran=True) is True
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["case", "seconds", "to", "client", "ran", "agrees"]
    assert lines[1].split() == ["plain", "s3", "server", "0.250", "3100", "server", "yes"]
    assert lines[2].split() == ["plain", "s3", "fetch", "1.500", "20736000", "fetch", "NO"]
    assert services.print_remote("S3", {"a": rows["plain s3 server"]}) is False
    assert capsys.readouterr().out.strip().splitlines()[1].split() == ["a", "0.250", "3100",
                                                                      "yes"]
