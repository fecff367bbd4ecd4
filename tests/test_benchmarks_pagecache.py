"""benchmarks.pagecache: files are read back into the page cache and kept there for a run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import pagecache  # noqa: E402

linux = pytest.mark.skipif(pagecache._libc is None, reason="mincore/mlock through libc: Linux only")


def _file(tmp_path: Path, size: int = 4 << 20) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(size))
    return path


@linux
def test_recache_drops_the_file_then_reads_it_back(tmp_path, monkeypatch):
    path = _file(tmp_path)
    reads = []
    real = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, bufs, off: reads.append(off) or real(fd, bufs, off))
    advice = []
    real_advise = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise",
                        lambda fd, o, n, a: advice.append(a) or real_advise(fd, o, n, a))
    assert pagecache.recache(path, piece=1 << 20)
    assert advice == [os.POSIX_FADV_DONTNEED]
    assert reads == [0, 1 << 20, 2 << 20, 3 << 20, 4 << 20]  # front to back, then end of file


@linux
def test_pinned_files_are_wholly_resident_until_released(tmp_path):
    path = _file(tmp_path)
    with pagecache.Pinned([path]) as pinned:
        if pinned.why:
            pytest.skip(f"this account may not lock memory: {pinned.why}")
        assert pinned.pinned == [path]
        assert pagecache.resident(path) == 1.0
        fd = os.open(path, os.O_RDONLY)
        try:  # dropping a locked file from the cache leaves it there
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        assert pagecache.resident(path) == 1.0
    assert not pinned._maps


@linux
def test_resident_sees_a_dropped_file(tmp_path):
    path = _file(tmp_path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    share = pagecache.resident(path)
    if share == 1.0:
        pytest.skip(f"{tmp_path} keeps dropped pages (tmpfs: the cache is the only copy)")
    assert 0.0 <= share < 0.5


def test_pinning_nothing_is_a_no_op():
    with pagecache.Pinned([]) as pinned:
        assert pinned.pinned == [] and not pinned._maps
