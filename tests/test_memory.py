"""activestorage.memory: free memory goes back to the OS after axis reductions, not after others."""

from __future__ import annotations

import ctypes.util
import sys

import numpy as np
import pytest

from activestorage import Active, memory

from helpers import write_nc

GLIBC = sys.platform.startswith("linux") and "musl" not in (ctypes.util.find_library("c") or "")


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's; elsewhere release is a no-op")
def test_release_free_memory_trims_on_glibc():
    assert memory.release_free_memory() is True


def test_release_is_a_no_op_without_malloc_trim(monkeypatch):
    monkeypatch.setattr(memory, "_TRIM", None)
    assert memory.release_free_memory() is False


@pytest.fixture
def releases(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(memory, "RELEASE_MIN_BYTES", 12 * 30 * 40)  # the axis-0 result below
    return calls


def test_axis_reductions_with_large_results_release(tmp_path, releases):
    data = np.arange(20 * 30 * 40, dtype="f4").reshape(20, 30, 40)
    write_nc(tmp_path / "a.nc", data, chunks=(4, 30, 40))
    with Active(tmp_path / "a.nc", "v") as a:
        np.testing.assert_allclose(a.mean(axis=0)[...], data.mean(axis=0), rtol=1e-6)
        assert len(releases) == 1
        a.mean[...]  # a full reduction's partials are single numbers: nothing churned
        a.mean(axis=0)[:, :2]  # a small result
        a[...]  # a selection's memory is the caller's result
        assert len(releases) == 1
