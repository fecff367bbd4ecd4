"""The POSIX backend: reads from a memory map or with preadv agree, memory stays bounded, and a
file truncated under the map is an error, never a crash."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import netCDF4
import numpy as np
import pytest

from activestorage import Active, ActiveStorageError
from activestorage.stores import local
from activestorage.backends.posix import PosixBackend

LINUX = sys.platform.startswith("linux")


def write(path: Path, data: np.ndarray, chunks: list[int]) -> str:
    with netCDF4.Dataset(path, "w") as ds:
        for i, n in enumerate(data.shape):
            ds.createDimension(f"d{i}", n)
        v = ds.createVariable("v", data.dtype, [f"d{i}" for i in range(data.ndim)],
                              chunksizes=chunks, fill_value=np.float32(-999))
        v[...] = data
    return str(path)


def mapped_kb(path: str) -> int:
    """Resident pages of this process's mappings of ``path`` (Linux)."""
    total, current = 0, None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        parts = line.split()
        if parts and "-" in parts[0] and len(parts) >= 5 and ":" in parts[3]:
            current = parts[5] if len(parts) > 5 else None
        elif parts and parts[0] == "Rss:" and current == path:
            total += int(parts[1])
    return total


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    rng = np.random.default_rng(5)
    data = rng.normal(280, 10, (64, 256, 512)).astype(np.float32)  # 32 MiB, 2 MiB chunks
    data[3, :10] = -999
    path = write(tmp_path_factory.mktemp("posix") / "big.nc", data, [4, 256, 512])
    return path, np.ma.masked_equal(data, np.float32(-999))


@pytest.mark.parametrize("use_mmap", [None, True, False])
def test_every_read_mode_gives_the_same_answers(big, use_mmap):
    path, x = big
    with Active(path, "v", backend=PosixBackend(use_mmap=use_mmap)) as a:
        np.testing.assert_allclose(a.mean[...], x.astype(np.float64).mean(), rtol=1e-6)
        np.testing.assert_allclose(a.sum[3:9, 5:200, 7:301],
                                   x[3:9, 5:200, 7:301].astype(np.float64).sum(), rtol=1e-6)
        np.testing.assert_allclose(a.mean(axis=0)[:, :3, :4],
                                   x[:, :3, :4].astype(np.float64).mean(axis=0), rtol=1e-5)
        assert a.count[...] == x.count()
        np.testing.assert_array_equal(a[2:4, 0, :5], x[2:4, 0, :5])


@pytest.mark.skipif(not LINUX, reason="mapped pages are read from Linux's /proc/self/smaps")
@pytest.mark.parametrize("use_mmap", [None, True])
def test_mapped_pages_are_dropped_after_each_read(tmp_path, use_mmap):
    """After reductions on several threads, none of the file stays mapped: not the chunks'
    pages, nor the pages around a boundary page faulted back in after a neighbour dropped it
    (a whole large folio: the file is read into the page cache sequentially, as readahead
    does, so that the cache holds it in large folios where the kernel supports them)."""
    data = np.random.default_rng(6).normal(280, 10, (48, 1023, 301)).astype(np.float32)
    path = write(tmp_path / "many.nc", data, [1, 1023, 301])  # 1.2 MB chunks, read one by one
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        while os.read(fd, 8 << 20):
            pass
    finally:
        os.close(fd)
    with Active(path, "v", backend=PosixBackend(use_mmap=use_mmap), max_threads=4) as a:
        for _ in range(6):
            a.mean[...]
            a.max(axis=0)[...]
            a.sum[:, 3:100, 5:120]
        left = mapped_kb(str(Path(path).resolve()))
    assert left <= 64, f"{left} kB of the file still mapped"


def test_a_kernel_without_populate_falls_back_to_reads(big, monkeypatch):
    """An advice the kernel rejects (as Linux < 5.14 rejects MADV_POPULATE_READ) means preadv."""
    path, x = big
    monkeypatch.setattr(local, "_POPULATE_READ", 12345)  # EINVAL
    backend = PosixBackend(use_mmap=None)
    with Active(path, "v", backend=backend) as a:
        np.testing.assert_allclose(a.mean[...], x.astype(np.float64).mean(), rtol=1e-6)
        assert not backend._mapping()
        np.testing.assert_allclose(a.mean[...], x.astype(np.float64).mean(), rtol=1e-6)
    backend.close()


@pytest.mark.skipif(not LINUX, reason="populating a mapping (and its EFAULT) is Linux's")
def test_file_truncated_under_the_map_is_an_error_not_a_crash(tmp_path):
    """A child process (a SIGBUS would kill it, not pytest) opens, truncates, reduces."""
    data = np.arange(16 * 64 * 64, dtype=np.float32).reshape(16, 64, 64)
    path = write(tmp_path / "t.nc", data, [4, 64, 64])
    script = textwrap.dedent(f"""
        import os, sys
        from activestorage import Active, ActiveStorageError
        from activestorage.backends.posix import PosixBackend
        a = Active({path!r}, "v", backend=PosixBackend(use_mmap=None))
        a.mean[0:4]  # maps the file
        os.truncate({path!r}, os.path.getsize({path!r}) // 2)
        try:
            a.mean[...]
        except ActiveStorageError as exc:
            print("error:", exc)
            sys.exit(0)
        print("no error")
        sys.exit(1)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, (run.returncode, run.stdout, run.stderr[-2000:])
    assert "short read" in run.stdout


def test_missing_file_is_a_storage_error(tmp_path):
    with pytest.raises(ActiveStorageError, match="cannot open"):
        PosixBackend().read(str(tmp_path / "nope.nc"), 0, 10)


@pytest.fixture(scope="module")
def deflated(tmp_path_factory):
    rng = np.random.default_rng(8)
    data = np.round(rng.normal(280, 10, (24, 128, 256)), 2).astype(np.float32)
    data[5, :7] = -999
    path = tmp_path_factory.mktemp("posix") / "z.nc"
    with netCDF4.Dataset(path, "w") as ds:
        for i, n in enumerate(data.shape):
            ds.createDimension(f"d{i}", n)
        v = ds.createVariable("v", data.dtype, ("d0", "d1", "d2"), chunksizes=[4, 128, 256],
                              zlib=True, complevel=1, shuffle=True, fill_value=np.float32(-999))
        v[...] = data
    return str(path), np.ma.masked_equal(data, np.float32(-999))


@pytest.mark.parametrize("piece", [1000, 4096, local.STREAM_PIECE])
def test_deflated_chunks_are_read_a_piece_at_a_time(deflated, piece, monkeypatch):
    """Deflated chunks inflate from pieces read into one small per-thread buffer (any piece
    size gives the oracle's answers), and no buffer the size of a stored chunk is kept."""
    path, x = deflated
    monkeypatch.setattr(local, "STREAM_PIECE", piece)
    backend = PosixBackend()
    with Active(path, "v", backend=backend, max_threads=1) as a:
        np.testing.assert_allclose(a.mean[...], x.astype(np.float64).mean(), rtol=1e-6)
        np.testing.assert_allclose(a.max(axis=0)[:, 3:9, 5:70], x[:, 3:9, 5:70].max(axis=0))
        assert a.count[2:7, 1:100] == x[2:7, 1:100].count()
        np.testing.assert_array_equal(a[4:6, 0, :9], x[4:6, 0, :9])
        stored = max(loc.size for loc in a.variable.chunks.values())
    assert len(backend._local.piece) == max(piece, local.STREAM_PIECE) < stored
    assert getattr(backend._local, "read", None) is None  # only the select read whole chunks
    backend.close()


def test_deflated_chunk_of_a_truncated_file_is_a_short_read(deflated, tmp_path):
    path, _ = deflated
    cut = tmp_path / "cut.nc"
    cut.write_bytes(Path(path).read_bytes())
    with Active(str(cut), "v") as a:
        a.variable  # the chunk index is read before the file is cut
        os.truncate(cut, os.path.getsize(cut) - 5000)
        with pytest.raises(ActiveStorageError, match="short read"):
            a.sum[...]
