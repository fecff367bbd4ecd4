"""The native HDF5 metadata reader builds exactly the Variable (and variable list) h5py's path does.

Oracles: :func:`activestorage.formats.hdf5.open_hdf5` / :func:`~activestorage.formats.hdf5.
list_with_h5py` (the h5py path) field by field, the whole chunk index included, and NumPy over
the data netCDF4-python / h5py read for reductions through ``Active``. Files come from tests/data
and from hypothesis (written with h5py and with netCDF4). The native reader is called directly
(:func:`open_native`), so a file it should cover but falls back on fails the test instead of
passing through h5py.
"""

from __future__ import annotations

import io
import math
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import netCDF4
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from activestorage import Active
from activestorage.errors import ActiveStorageError
from activestorage.formats.chunk_index import pin_locators
from activestorage.formats.hdf5 import Hdf5Reader, list_with_h5py, open_hdf5
from activestorage.formats.hdf5_native import (NativeUnsupported, list_native, native_file,
                                               open_native)
from activestorage.formats.hdf5_structures import lookup3

DATA = Path(__file__).resolve().parents[1] / "data"
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


# --------------------------------------------------------------------------- comparison

def same(a, b) -> bool:
    """Equal values of equal types (NumPy scalars and arrays by dtype, shape and content)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape
                and (a.dtype.kind == "O" and a.tolist() == b.tolist()
                     or np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")))
    if isinstance(a, np.generic):
        return type(a) is type(b) and (a == b or (a != a and b != b))
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def assert_same_variable(got, want) -> None:
    for name in want.__dataclass_fields__:
        g, w = getattr(got, name), getattr(want, name)
        if name == "chunks":
            assert type(g) is type(w), (name, type(g), type(w))
            assert g == w, "chunk index differs"
            if hasattr(w, "exceptions"):
                assert g.exceptions == w.exceptions and g.sizes.dtype == w.sizes.dtype
        elif name == "missing":
            assert same(g.values, w.values) and same(g.valid_min, w.valid_min) \
                and same(g.valid_max, w.valid_max), (g, w)
        else:
            assert same(g, w), (name, g, w)


def assert_same_candidates(got, want) -> None:
    assert [c.name for c in got] == [c.name for c in want]
    for g, w in zip(got, want):
        assert g.dimensions == w.dimensions, (g.name, g.dimensions, w.dimensions)
        assert g.dtype == w.dtype
        assert same(dict(g.attrs), dict(w.attrs)), (g.name, g.attrs, w.attrs)


def datasets(path: Path) -> list[str]:
    names: list[str] = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    return names


def native(path: Path, name: str):
    f = native_file(path=str(path))
    try:
        return open_native(f, str(path), name)
    finally:
        f.close()


#: what the native reader leaves to h5py in files h5py writes with libver="latest": HDF5 2.0's
#: layout message version 5 (filtered chunks)
LEFT_TO_H5PY = ("layout message version 5",)


def check_file(path: Path, allow_fallback: bool = False) -> int:
    """Every dataset and the variable list, native vs h5py; returns how many fell back (only
    for :data:`LEFT_TO_H5PY` structures, and only when ``allow_fallback``)."""
    fallbacks = 0
    for name in datasets(path):
        try:
            want = open_hdf5(str(path), name)
        except ActiveStorageError as exc:  # not reducible: the native reader must not claim it
            with pytest.raises(NativeUnsupported):
                native(path, name)
            assert type(exc) in (type(e) for e in _errors(path, name))
            continue
        try:
            got = native(path, name)
        except NativeUnsupported as exc:
            if not allow_fallback or not str(exc).startswith(LEFT_TO_H5PY):
                raise
            fallbacks += 1
            got = Hdf5Reader().open(str(path), name)  # the fallback gives h5py's answer
        assert_same_variable(got, want)
    with open(path, "rb") as fh:
        want_list = list_with_h5py(fh, str(path))
    f = native_file(path=str(path))
    try:
        got_list = list_native(f, str(path))
    except NativeUnsupported:
        if not allow_fallback:
            raise
        got_list = Hdf5Reader().list_variables(str(path))
    finally:
        f.close()
    assert_same_candidates(got_list, want_list)
    return fallbacks


def _errors(path: Path, name: str) -> list[Exception]:
    """The error the reader (native first, then h5py) raises for ``name``."""
    try:
        Hdf5Reader().open(str(path), name)
    except ActiveStorageError as exc:
        return [exc]
    return []


# --------------------------------------------------------------------------- tests/data

@pytest.mark.parametrize("path", sorted(DATA.glob("*.nc")), ids=lambda p: p.name)
def test_every_test_file_reads_natively_as_h5py_does(path):
    check_file(path)


def test_lookup3_matches_the_reference_values():
    # Bob Jenkins' published driver values for hashlittle
    assert lookup3(b"") == 0xDEADBEEF
    assert lookup3(b"", 0xDEADBEEF) == 0xBD5B7DDE
    assert lookup3(b"Four score and seven years ago") == 0x17770551
    assert lookup3(b"Four score and seven years ago", 1) == 0xCD628161


# --------------------------------------------------------------------------- hypothesis: h5py

DTYPES = ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8"]


@st.composite
def h5py_files(draw, tmp: Path):
    """An HDF5 file written by h5py around one variable ``g/v`` or ``v``, and its data."""
    order = draw(st.sampled_from("<>"))
    dtype = np.dtype(order + draw(st.sampled_from(DTYPES)))
    rank = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=rank, max_size=rank)))
    chunked = rank > 0 and draw(st.integers(0, 3)) > 0
    libver = draw(st.sampled_from(["earliest", "latest"]))
    kw: dict = {}
    if chunked:
        kw["chunks"] = tuple(draw(st.integers(1, n)) for n in shape)
        unlimited = draw(st.integers(0, rank))  # 1: an extensible array, 2+: a v2 B-tree index
        if unlimited:
            kw["maxshape"] = (None,) * unlimited + shape[unlimited:]
        if draw(st.booleans()):
            kw["shuffle"] = True
        if draw(st.booleans()):
            kw["compression"] = "gzip"
        if draw(st.booleans()):
            kw["fletcher32"] = True
    fill = draw(st.none() | st.integers(0, 100))
    if fill is not None:
        kw["fillvalue"] = fill
    if draw(st.booleans()):
        kw["fill_time"] = draw(st.sampled_from(["never", "alloc", "ifset"]))
    nattrs = draw(st.integers(0, 14))
    track = draw(st.booleans())
    nextra = draw(st.integers(0, 12))
    grouped = draw(st.booleans())
    written = draw(st.sampled_from(["all", "some", "none"]))
    skip_filters = chunked and written == "all" and draw(st.booleans())
    path = tmp / f"h5py_{draw(st.integers(0, 10**9))}.h5"
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    data = (rng.integers(0, 100, size=shape)).astype(dtype)
    with h5py.File(path, "w", libver=libver, track_order=track) as f:
        g = f.require_group("g/sub") if grouped else f
        for i in range(nextra):
            g.create_dataset(f"x{i:02d}", data=np.arange(3, dtype="i4"))
        try:
            ds = g.create_dataset("v", shape=shape, dtype=dtype, track_order=track, **kw)
        except (TypeError, ValueError) as exc:  # an option this h5py does not take
            assume(False)
            raise AssertionError from exc
        for i in range(nattrs):
            kind = i % 5
            if kind == 0:
                ds.attrs[f"a{i}"] = np.array(i, dtype=DTYPES[i % len(DTYPES)])
            elif kind == 1:
                ds.attrs[f"a{i}"] = np.arange(i % 4 + 1, dtype=">f8")
            elif kind == 2:
                ds.attrs[f"a{i}"] = np.bytes_(b"text %d" % i)
            elif kind == 3:
                ds.attrs[f"a{i}"] = f"vlen text {i}"
            else:
                ds.attrs[f"a{i}"] = np.array([b"ab", b"cde"])
        if written == "all":
            ds[...] = data
        elif written == "some" and rank:
            ds[:1] = data[:1]
            data = ds[...]
        else:
            data = ds[...]
        if skip_filters and ds.compression or skip_filters and ds.shuffle:
            # one chunk stored raw, every filter skipped (filter mask all ones)
            nfilters = ds.id.get_create_plist().get_nfilters()
            chunk = data[tuple(slice(0, c) for c in ds.chunks)]
            raw = np.zeros(ds.chunks, dtype)
            raw[tuple(slice(0, n) for n in chunk.shape)] = chunk
            ds.id.write_direct_chunk((0,) * rank, raw.tobytes(), filter_mask=(1 << nfilters) - 1)
    return path, ("g/sub/v" if grouped else "v"), data


@given(st.data())
@settings(SETTINGS, max_examples=80)
def test_h5py_files_read_natively_as_h5py_does(tmp_path, data):
    path, name, _values = data.draw(h5py_files(tmp_path))
    layout_v4 = path.read_bytes()[8] >= 3  # libver="latest": superblock v3, layout v4
    check_file(path, allow_fallback=layout_v4)


@given(st.data())
@settings(SETTINGS, max_examples=15)
def test_reductions_of_h5py_files_agree_with_numpy(tmp_path, data):
    path, name, values = data.draw(h5py_files(tmp_path))
    var = Hdf5Reader().open(str(path), name)
    assume(not var.missing.values or not np.isin(values, var.missing.values).any())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = values.astype("f8").sum()
    got = Active(str(path), name).sum[...]
    np.testing.assert_allclose(float(got), want, rtol=1e-6)


# --------------------------------------------------------------------------- hypothesis: netCDF4

@st.composite
def netcdf_files(draw, tmp: Path):
    """A netCDF-4 file (netCDF-C's HDF5 layout: dimension scales, _Netcdf4 attributes)."""
    path = tmp / f"nc_{draw(st.integers(0, 10**9))}.nc"
    dtype = draw(st.sampled_from(["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f4", "f8"]))
    endian = draw(st.sampled_from(["native", "big", "little"]))
    rank = draw(st.integers(0, 3))
    sizes = draw(st.lists(st.integers(1, 6), min_size=rank, max_size=rank))
    unlimited = rank > 0 and draw(st.booleans())
    contiguous = not unlimited and draw(st.booleans())
    zlib = not contiguous and draw(st.booleans())
    shuffle = zlib and draw(st.booleans())
    fletcher32 = not contiguous and draw(st.booleans())
    fill = draw(st.sampled_from(["default", "none", "set"]))
    nattrs = draw(st.integers(0, 12))
    nvars = draw(st.integers(0, 10))
    grouped = draw(st.booleans())
    missing = draw(st.booleans())
    partial = rank > 0 and not contiguous and draw(st.booleans())
    fmt = draw(st.sampled_from(["NETCDF4", "NETCDF4_CLASSIC"]))
    if fmt == "NETCDF4_CLASSIC":
        grouped = False
        dtype = dtype if dtype in ("i1", "i2", "i4", "f4", "f8") else "i4"
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.integers(0, 50, size=sizes).astype(dtype)
    with netCDF4.Dataset(path, "w", format=fmt) as ds:
        g = ds.createGroup("sub") if grouped else ds
        dims = []
        for i, n in enumerate(sizes):
            dname = f"d{i}"
            owner = ds if i == 0 else g  # a group's variable may use the root group's dimension
            owner.createDimension(dname, None if (unlimited and i == 0) else n)
            dims.append(dname)
            if i % 2 == 0:  # a coordinate variable for some dimensions
                owner.createVariable(dname, "f8", (dname,))[:] = np.arange(n, dtype="f8")
        kw: dict = {"endian": endian, "zlib": zlib, "shuffle": shuffle, "fletcher32": fletcher32,
                    "contiguous": contiguous}
        if not contiguous and rank:
            kw["chunksizes"] = [draw(st.integers(1, n)) for n in sizes]
        if fill == "none":
            kw["fill_value"] = False
        elif fill == "set":
            kw["fill_value"] = np.array(99, dtype)
        v = g.createVariable("v", dtype, tuple(dims), **kw)
        for i in range(nattrs):
            if i % 3 == 0:
                v.setncattr(f"att{i}", f"text {i}")
            elif i % 3 == 1:
                v.setncattr(f"att{i}", np.array([i, i + 1], dtype="f4"))
            else:
                v.setncattr(f"att{i}", np.int16(i))
        if missing:
            v.missing_value = np.array(7, dtype)
            v.valid_max = np.array(45, dtype)
        if partial and rank:
            v[:1] = values[:1]
        else:
            v[...] = values
        for i in range(nvars):
            g.createVariable(f"w{i}", "f4", tuple(dims))
    return path, ("sub/v" if grouped else "v")


@given(st.data())
@SETTINGS
def test_netcdf4_files_read_natively_as_h5py_does(tmp_path, data):
    path, _name = data.draw(netcdf_files(tmp_path))
    check_file(path)  # netCDF-C writes what the native reader covers: no fallback allowed


@given(st.data())
@settings(SETTINGS, max_examples=15)
def test_reductions_of_netcdf4_files_agree_with_numpy(tmp_path, data):
    path, name = data.draw(netcdf_files(tmp_path))
    with netCDF4.Dataset(path) as ds:
        want = ds[name][...]
    want = np.ma.masked_invalid(np.ma.asarray(want).astype("f8"))
    active = Active(str(path), name)
    assert active.variable is not None
    got_n = int(active.count[...]) if hasattr(active, "count") else None
    if got_n is not None:
        assert got_n == int(want.count())
    if want.count():
        np.testing.assert_allclose(float(active.sum[...]), float(want.sum()), rtol=1e-9)
        assert float(active.max[...]) == float(want.max())
        assert float(active.min[...]) == float(want.min())


# --------------------------------------------------------------------------- corrupt files

@pytest.fixture(scope="module")
def sample_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("corrupt") / "sample.nc"
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("t", None)
        ds.createDimension("x", 4)
        ds.createVariable("x", "f4", ("x",))[:] = np.arange(4)
        v = ds.createVariable("v", "f4", ("t", "x"), zlib=True, chunksizes=(2, 4))
        for i in range(12):
            v.setncattr(f"a{i}", f"value {i}")
        v[:5] = np.ones((5, 4))
    return path.read_bytes()


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.size = data, 0, len(data)

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos
        return pos

    def read(self, n: int = -1) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out


@given(st.data())
@settings(max_examples=300, deadline=2000, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_corrupt_files_fall_back_and_never_hang(sample_bytes, data):
    buf = bytearray(sample_bytes)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.none() | st.integers(0, len(buf)))
    if cut is not None:
        buf = buf[:cut]
    for name in ("v", "x"):
        try:
            f = native_file(file=_Bytes(bytes(buf)))
            var = open_native(f, "mem", name)
            list_native(f, "mem")
        except NativeUnsupported:
            continue
        if var is not None:  # whatever it read must at least be self-consistent
            assert len(var.chunk_shape) == len(var.shape)
            assert all(loc.offset >= 0 and loc.size >= 0 for loc in var.chunks.values())


def test_the_native_path_never_imports_h5py(tmp_path):
    """A fresh interpreter opens, lists and reduces a benchmark-like file without h5py."""
    path = tmp_path / "bench.nc"
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", 6)
        ds.createDimension("lon", 8)
        ds.createVariable("lat", "f4", ("lat",))[:] = np.arange(6)
        ds.createVariable("lon", "f4", ("lon",))[:] = np.arange(8)
        tas = ds.createVariable("tas", "f4", ("time", "lat", "lon"), chunksizes=(4, 6, 8))
        tas.units = "K"
        tas[:] = np.arange(16 * 48, dtype="f4").reshape(16, 6, 8)
    code = (
        "import sys\n"
        "from activestorage import Active\n"
        f"a = Active({str(path)!r})\n"
        "assert a.variable.name == 'tas', a.variable.name\n"
        "print(float(a.mean[...]))\n"
        "print(sorted(m for m in ('h5py', 'pyfive', 'netCDF4', 'h5netcdf') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split("\n")
    assert float(out[0]) == pytest.approx(np.arange(16 * 48).mean())
    assert out[1] == "[]", f"imported on the native path: {out[1]}"


def test_a_file_the_native_reader_leaves_to_h5py_still_opens(tmp_path, caplog):
    """A user block (superblock not at 0) is left to h5py: same Variable, logged at debug."""
    path = tmp_path / "ub.h5"
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("v", data=np.arange(6.0))
    with pytest.raises(NativeUnsupported):
        native(path, "v")
    with caplog.at_level("DEBUG", logger="activestorage.formats.hdf5"):
        var = Hdf5Reader().open(str(path), "v")
    assert any("read by h5py" in r.getMessage() for r in caplog.records)
    assert_same_variable(var, open_hdf5(str(path), "v"))
    assert math.prod(var.shape) == 6


@pytest.mark.parametrize("gzip", [False, True])
def test_a_paged_fixed_array_index(tmp_path, gzip):
    """libver="latest", no unlimited dimension, more chunks than a fixed array page (1024)."""
    path = tmp_path / "fa.h5"
    with h5py.File(path, "w", libver="latest") as f:
        ds = f.create_dataset("v", shape=(3000, 2), chunks=(1, 2), dtype="i2",
                              compression="gzip" if gzip else None)
        ds[:1500] = np.arange(3000).reshape(1500, 2)  # the later pages stay unwritten
        ds[2999] = [1, 2]
    got = Hdf5Reader().open(str(path), "v")
    want = open_hdf5(str(path), "v")
    assert_same_variable(got, want)
    if not gzip:  # HDF5 2.0 writes filtered chunk indices in a layout message v5 (left to h5py)
        assert_same_variable(native(path, "v"), want)
        assert len(want.chunks) == 1501


@pytest.mark.parametrize("maxshape, chunks", [
    ((7, 5), (3, 2)),            # a fixed array, one page
    ((None, 5), (3, 2)),         # an extensible array
    ((None, 9), (1, 2)),         # ... over a maximum shape larger than the shape
    ((9, 9), (2, 2)),            # a fixed array over a larger maximum shape
    ((None, None), (3, 2)),      # a v2 B-tree of scaled chunk coordinates
    ((None, None, 4), (2, 2, 4)),
    ((7, 5), (7, 5)),            # a single chunk
])
def test_layout_v4_chunk_indices(tmp_path, maxshape, chunks):
    path = tmp_path / "v4.h5"
    shape = tuple(7 if m is None else min(m, 5) if i else m for i, m in enumerate(maxshape))
    with h5py.File(path, "w", libver="latest") as f:
        ds = f.create_dataset("v", shape=shape, chunks=chunks, maxshape=maxshape, dtype=">u2")
        ds[:4] = 3  # a partly written grid
        f.create_dataset("empty", shape=shape, chunks=chunks, maxshape=maxshape, dtype="f8")
    for name in ("v", "empty"):
        got, want = native(path, name), open_hdf5(str(path), name)
        assert_same_variable(got, want)
    assert len(want.chunks) == 0 and len(got.chunks) == 0
    assert float(Active(str(path), "v").sum[...]) == 3 * 4 * math.prod(shape[1:])


def test_a_large_extensible_array_index(tmp_path):
    """Chunks far enough along the unlimited dimension for secondary blocks and paged data
    blocks (data blocks of more than 1024 elements start at chunk 131,056), most pages unset."""
    path = tmp_path / "ea.h5"
    written = [0, 3, 4, 20, 100, 5000, 70_000, 131_056, 133_000, 140_000, 144_999]
    with h5py.File(path, "w", libver="latest") as f:
        ds = f.create_dataset("v", shape=(145_000,), chunks=(1,), maxshape=(None,), dtype="u1")
        for i in written:
            ds[i] = i % 251
    got, want = native(path, "v"), open_hdf5(str(path), "v")
    assert_same_variable(got, want)
    assert sorted(c for (c,) in got.chunks) == written


def test_a_sparse_chunk_grid_is_a_dict_as_on_the_h5py_path(tmp_path):
    path = tmp_path / "sparse.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("v", shape=(200_000,), chunks=(1,), dtype="f4", compression="gzip")
        ds[5] = 1.0
        ds[70_000] = 2.0
    got = native(path, "v")
    assert type(got.chunks) is dict and len(got.chunks) == 2
    assert_same_variable(got, open_hdf5(str(path), "v"))


def test_a_remote_file_object_is_read_natively_and_pinned(tmp_path, monkeypatch):
    """The registry's remote file object: read natively (h5py never asked), chunks pinned."""
    path = tmp_path / "r.nc"
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("x", 10)
        ds.createVariable("v", "i2", ("x",), zlib=True, chunksizes=(3,))[:] = np.arange(10)
    raw = path.read_bytes()
    url = "s3://bucket/r.nc"
    want = open_hdf5(io.BytesIO(raw), "v", url=url)
    want.chunks = pin_locators(want.chunks, '"abc"', "v1")

    class Remote(io.BytesIO):
        etag, version_id, size = '"abc"', "v1", len(raw)

    from activestorage.formats import hdf5

    monkeypatch.setattr(hdf5, "open_hdf5", lambda *a, **k: pytest.fail("h5py path used"))
    got = Hdf5Reader().open(url, "v", file=Remote(raw))
    assert all(loc.etag == '"abc"' and loc.version_id == "v1" and loc.url == url
               for loc in got.chunks.values())
    assert_same_variable(got, want)


def test_text_variables_and_string_attributes(tmp_path):
    """char and string variables are listed by neither path; NC_STRING attributes (vlen strings
    in the global heap), arrays of them and utf-8 text read as h5py reads them."""
    path = tmp_path / "text.nc"
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("x", 3)
        ds.createDimension("n", 4)
        ds.createVariable("label", "S1", ("x", "n"))[:] = netCDF4.stringtochar(
            np.array(["ab", "cd", "ef"], "S4"))
        ds.createVariable("names", str, ("x",))[:] = np.array(["a", "bb", "ccc"], object)
        v = ds.createVariable("v", "f4", ("x",))
        v[:] = [1, 2, 3]
        v.setncattr_string("title", "a vlen string")
        v.setncattr_string("many", ["one", "two", "three"])
        v.setncattr("utf8", "température")
        v.setncattr("empty", "")
    check_file(path)
    assert [c.name for c in Hdf5Reader().list_variables(str(path))] == ["v"]


def test_what_cannot_be_reduced_gives_the_h5py_paths_errors(tmp_path):
    """An unsupported filter (lzf) or dtype (strings, compound): the native reader defers, and the
    reader raises the h5py path's UnsupportedError."""
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("lzf", data=np.arange(10.0), chunks=(5,), compression="lzf")
        f.create_dataset("text", data=np.array([b"ab", b"cd"]))
        f.create_dataset("pairs", data=np.zeros(3, dtype=[("a", "i4"), ("b", "f8")]))
        f.create_dataset("ok", data=np.arange(4, dtype="i2"))
    check_file(path)
    for name in ("lzf", "text", "pairs"):
        with pytest.raises(ActiveStorageError):
            Hdf5Reader().open(str(path), name)


def test_an_enum_variable_is_left_to_h5py(tmp_path):
    """h5py reads an enum as its base integer type; the native reader defers such files (the
    variable and the listing) to it, and the answers are h5py's."""
    path = tmp_path / "enum.nc"
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("x", 2)
        kind = ds.createEnumType("u1", "kind", {"a": 0, "b": 1})
        ds.createVariable("v", "f8", ("x",))[:] = [1.5, 2.5]
        ds.createVariable("e", kind, ("x",))[:] = np.array([0, 1], "u1")
    with pytest.raises(NativeUnsupported):
        native(path, "e")
    with pytest.raises(NativeUnsupported):
        list_native(native_file(path=str(path)), str(path))
    assert_same_variable(native(path, "v"), open_hdf5(str(path), "v"))
    assert_same_variable(Hdf5Reader().open(str(path), "e"), open_hdf5(str(path), "e"))
    with open(path, "rb") as fh:
        assert_same_candidates(Hdf5Reader().list_variables(str(path)),
                               list_with_h5py(fh, str(path)))
    assert float(Active(str(path), "v").sum[...]) == 4.0


def test_h5py_dimension_scales_and_labels(tmp_path):
    """Scales attached with h5py (one in another group: found by walking the file), several
    scales on one axis (the first names it), labels on axes without a scale."""
    path = tmp_path / "scales.h5"
    with h5py.File(path, "w") as f:
        v = f.create_dataset("v", data=np.ones((2, 3, 4), "f4"))
        f["t"] = np.arange(2.0)
        f["t"].make_scale("time")
        f.create_group("grid")["y"] = np.arange(3.0)
        f["grid/y"].make_scale()
        f["t2"] = np.arange(2.0) * 2
        f["t2"].make_scale()
        v.dims[0].attach_scale(f["t"])
        v.dims[0].attach_scale(f["t2"])
        v.dims[1].attach_scale(f["grid/y"])
        v.dims[2].label = "x axis"
        w = f.create_dataset("w", data=np.zeros((3, 2), "i2"))
        w.dims[1].label = "only the second"
    check_file(path)
    assert native(path, "v").dimensions == ("t", "y", "x axis")
    assert native(path, "w").dimensions == ("", "only the second")
