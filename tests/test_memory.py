"""activestorage.memory: free memory goes back to the OS after axis reductions, not after others."""

from __future__ import annotations

import ctypes.util
import subprocess
import textwrap
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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_reuse_freed_memory_stops_page_faulting_fresh_buffers():
    """After reuse_freed_memory(), megabyte buffers allocated and freed over and over, several at
    once, reuse the same pages instead of faulting fresh ones in each time (the server's
    upstream bodies)."""
    script = textwrap.dedent("""
        import resource, sys
        from activestorage.memory import reuse_freed_memory

        def faults():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(20):  # several bodies in flight at once, then all freed
                held = [bytearray(4 << 20) for _ in range(8)]
                del held
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

        default = faults()
        ok = reuse_freed_memory()
        faults()  # the first round after the change fills the heap once
        print(ok, default, faults())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()
    ok, default, tuned = out[0] == "True", int(out[1]), int(out[2])
    if not ok:
        pytest.skip("this C library has no mallopt (not glibc)")
    assert default > 20 * 4 * 1024  # freed blocks went back to the OS and faulted in again
    assert tuned < default / 10, (default, tuned)
